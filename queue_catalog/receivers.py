"""The queue listens to the run engine here; the engine does not know the queue exists."""

from __future__ import annotations

import logging

from django.dispatch import receiver

from queue_catalog.services import queue_on_run_finished
from runs.signals import run_finished

logger = logging.getLogger(__name__)


@receiver(run_finished, dispatch_uid="queue_catalog.advance_lane")
def advance_lane(sender, *, run_id: int, status: str, context: dict, **kwargs) -> None:
    """Advance the record of a finished run. A failure here must not fail the run's task (its
    message would be dead-lettered although the run is complete); the sweep settles it later."""
    if "queueRecordId" not in (context or {}):
        return
    try:
        queue_on_run_finished(run_id=run_id, status=status, context=context)
    except Exception:
        logger.exception("could not advance the queue after run %s; the sweep will", run_id)
