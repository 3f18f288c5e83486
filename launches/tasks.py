"""Celery tasks of launches: thin wrappers around ``launches.services``."""

from __future__ import annotations

from celery import shared_task

from launches.schedules import schedule_fire
from launches.services import launches_sweep


@shared_task(name="launches.sweep_launches", ignore_result=True, send_events=False)
def sweep_launches() -> int:
    """Finish launches whose last run's news was lost (driven by Celery beat)."""
    return launches_sweep()


@shared_task(name="launches.fire_schedule", ignore_result=True)
def fire_schedule(schedule_id: int) -> int | None:
    """Start a schedule's launch for this fire, if it is the slot's first (sent by beat)."""
    launch = schedule_fire(schedule_id=schedule_id)
    return launch.id if launch else None
