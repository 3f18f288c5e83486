"""Celery tasks of the scenario queue: thin wrappers around ``queue_catalog.services``."""

from __future__ import annotations

from celery import shared_task

from queue_catalog.services import queue_sweep


@shared_task(name="queue_catalog.sweep_queue", ignore_result=True)
def sweep_queue() -> dict[str, int]:
    """Start due re-runs and repair lost hand-offs (driven by Celery beat)."""
    return queue_sweep()
