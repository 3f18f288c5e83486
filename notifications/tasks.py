"""Celery tasks of notifications: thin wrappers around ``notifications.services``."""

from __future__ import annotations

from celery import shared_task

from notifications.services import deliveries_sweep, delivery_attempt


@shared_task(name="notifications.deliver", ignore_result=True)
def deliver(delivery_id: int) -> str | None:
    """The first attempt of a delivery, right after the event committed."""
    return delivery_attempt(delivery_id=delivery_id)


@shared_task(name="notifications.sweep_deliveries", ignore_result=True, send_events=False)
def sweep_deliveries() -> int:
    """Retry due deliveries (driven by Celery beat)."""
    return deliveries_sweep()
