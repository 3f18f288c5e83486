"""Notifications listen to the engine and the launches; neither knows about them. A failure
here is logged and never reaches the run or launch that sent the signal."""

from __future__ import annotations

import logging

from django.dispatch import receiver

from launches.signals import launch_finished
from notifications.services import launch_notify, scenario_health_update
from runs.signals import run_finished

logger = logging.getLogger(__name__)


@receiver(run_finished, dispatch_uid="notifications.scenario_health")
def follow_scenario_health(sender, *, run_id: int, **kwargs) -> None:
    try:
        scenario_health_update(run_id=run_id)
    except Exception:
        logger.exception("scenario health after run %s not updated", run_id)


@receiver(launch_finished, dispatch_uid="notifications.launch_finished")
def announce_launch(sender, *, launch_id: int, **kwargs) -> None:
    try:
        launch_notify(launch_id=launch_id)
    except Exception:
        logger.exception("finish of launch %s not announced", launch_id)
