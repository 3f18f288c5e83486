"""Celery tasks of the run engine: thin wrappers around ``runs.executor`` and ``runs.services``."""

from __future__ import annotations

import logging
from typing import NoReturn

from celery import shared_task
from celery.exceptions import Reject
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from kombu.exceptions import OperationalError as BrokerOperationalError

import celeryconfig
from runs.deadletters import dead_letter_note, dead_letters_collect
from runs.executor import DeliveryLimitReached, RunNotFound, run_execute
from runs.leases import Delivery, worker_identity
from runs.services import runs_sweep

logger = logging.getLogger(__name__)

# Housekeeping tasks (the sweeps, dead-letter collection) send no task events (send_events=False):
# a worker started with -E, or told to by Flower, reports only runs, so Flower lists runs.

# Infrastructure hiccups worth another delivery; everything else is a bug or bad input.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, BrokerOperationalError)


@shared_task(
    bind=True,
    name="runs.execute_run",
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=6,
)
def execute_run(self, run_id: int) -> str:
    """Execute run ``run_id``; messages that cannot be processed go to the dead-letter queue."""
    if type(run_id) is not int:
        _dead_letter(self, None, f"malformed run id {run_id!r}")
    # The task id and retry number let a retry of this message, in any process, take over the
    # claim its earlier try held (see runs.leases).
    hard, soft = self.request.timelimit or (None, None)
    delivery = Delivery(
        task_id=self.request.id or "",
        retries=self.request.retries or 0,
        time_limit=hard or celeryconfig.task_time_limit,
        soft_time_limit=soft or hard or celeryconfig.task_soft_time_limit,
    )
    try:
        return run_execute(run_id=run_id, worker=worker_identity(), delivery=delivery).value
    except RunNotFound as exc:
        logger.warning(
            "run %s is not in this worker's database %r: another orchestra deployment may be "
            "publishing to the same queue; give each deployment a RabbitMQ vhost of its own "
            "(CELERY_BROKER_URL)",
            run_id,
            connection.settings_dict["NAME"],
        )
        _dead_letter(self, run_id, str(exc))
    except DeliveryLimitReached as exc:
        _dead_letter(self, run_id, str(exc))


def _dead_letter(task, run_id: int | None, reason: str) -> NoReturn:
    logger.error("dead-lettering task %s (run %s): %s", task.request.id, run_id, reason)
    try:
        dead_letter_note(task_id=task.request.id, task=task.name, run_id=run_id, reason=reason)
    except DatabaseError:
        logger.exception("could not note the dead-letter reason; the broker keeps the message")
    raise Reject(reason, requeue=False)


@shared_task(name="runs.collect_dead_letters", ignore_result=True, send_events=False)
def collect_dead_letters() -> int:
    """Drain the dead-letter queue into the database (driven by Celery beat)."""
    return dead_letters_collect()


@shared_task(name="runs.sweep_runs", ignore_result=True, send_events=False)
def sweep_runs() -> dict[str, int]:
    """Republish runs whose message was lost (driven by Celery beat)."""
    return runs_sweep()
