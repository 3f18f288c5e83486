"""Launches listen to the run engine here: each finished run may finish its launch.

Connected after the queue's receiver (``launches`` comes after ``queue_catalog`` in
INSTALLED_APPS), so a queue record has been settled by the time its run's news arrives here.
"""

from __future__ import annotations

import logging

from django.dispatch import receiver

from launches.services import LAUNCH_ID_KEY, launch_settle
from runs.signals import run_finished

logger = logging.getLogger(__name__)


@receiver(run_finished, dispatch_uid="launches.settle_launch")
def settle_launch(sender, *, run_id: int, status: str, context: dict, **kwargs) -> None:
    """Finish the run's launch if this was its last unsettled row. A failure here must not
    fail the run's task; the launches sweep settles the launch later."""
    launch_id = (context or {}).get(LAUNCH_ID_KEY)
    if launch_id is None:
        return
    try:
        launch_settle(launch_id=launch_id)
    except Exception:
        logger.exception(
            "could not settle launch %s after run %s; the sweep will", launch_id, run_id
        )
