"""Celery tasks of launches: thin wrappers around ``launches.services``."""

from __future__ import annotations

from celery import shared_task

from launches.services import launches_sweep


@shared_task(name="launches.sweep_launches", ignore_result=True)
def sweep_launches() -> int:
    """Finish launches whose last run's news was lost (driven by Celery beat)."""
    return launches_sweep()
