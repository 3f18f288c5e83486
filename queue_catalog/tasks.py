"""Celery tasks of the scenario queue: thin wrappers around ``queue_catalog.services``."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from queue_catalog.retention import runs_purge
from queue_catalog.services import queue_sweep


@shared_task(name="queue_catalog.sweep_queue", ignore_result=True, send_events=False)
def sweep_queue() -> dict[str, int]:
    """Start due re-runs and repair lost hand-offs (driven by Celery beat)."""
    return queue_sweep()


@shared_task(name="queue_catalog.purge_runs", ignore_result=True, send_events=False)
def purge_runs() -> dict[str, int]:
    """Delete runs and records older than ``ORCHESTRA_RETENTION_DAYS`` (beat; off when 0)."""
    days = settings.ORCHESTRA_RETENTION_DAYS
    if days <= 0:
        return {}
    counts = runs_purge(older_than=timedelta(days=days))
    return {"records": counts.records, "runs": counts.runs, "steps": counts.steps}
