"""The Launch state machine: RUNNING until every row is settled, then its roll-up status.

    RUNNING ──every run and queue record settled──> PASSED | FAILED | ERROR | CANCELLED

A launch is finished exactly once, by :func:`finish_launch`: a conditional UPDATE that also
requires, in the same statement, that none of its runs is unfinished and none of its queue
records is still in its lane. Each finished run triggers it after its own commit, so the last
run's trigger sees every other run settled; two runs finishing together may both try, and the
row lock lets exactly one succeed (the other re-checks ``finished_at IS NULL`` and updates
nothing). Only the winner sends ``launch_finished``.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models
from django.db.models import Exists, OuterRef
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from queue_catalog.states import ACTIVE_STATUSES as RECORD_ACTIVE_STATUSES
from runs.states import TERMINAL_STATUSES as RUN_TERMINAL_STATUSES
from runs.states import RunStatus


class LaunchStatus(models.TextChoices):
    RUNNING = "RUNNING", _("Running")
    PASSED = "PASSED", _("Passed")
    FAILED = "FAILED", _("Failed")
    ERROR = "ERROR", _("Error")
    CANCELLED = "CANCELLED", _("Cancelled")


#: Settled row outcomes from best to worst: the roll-up is the worst of its rows. An error (the
#: test could not run) outranks a failure (it ran and found a defect): both fail a CI job, but
#: an error must not be read as "only" a failing check.
ROLLUP_ORDER = (RunStatus.PASSED, RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.ERROR)
UNFINISHED_RUN_STATUSES = frozenset(RunStatus.values) - RUN_TERMINAL_STATUSES


def rollup_status(outcomes: Iterable[str]) -> str:
    """The launch's status from its rows' outcomes: RUNNING while one is unsettled (or there
    are none yet), else the worst of them."""
    worst = -1
    for outcome in outcomes:
        if outcome not in ROLLUP_ORDER:
            return LaunchStatus.RUNNING
        worst = max(worst, ROLLUP_ORDER.index(outcome))
    return LaunchStatus(ROLLUP_ORDER[worst]) if worst >= 0 else LaunchStatus.RUNNING


def finish_launch(launch_id: int, status: str) -> bool:
    """RUNNING -> ``status`` if no run of the launch is unfinished and no queue record of it is
    active, in one statement; False when another process finished it or a row is unsettled."""
    from launches.models import Launch
    from queue_catalog.models import QueueRecord
    from runs.models import TestRun

    unfinished_runs = TestRun.objects.filter(
        launch_id=OuterRef("id"), status__in=UNFINISHED_RUN_STATUSES
    )
    active_records = QueueRecord.objects.filter(
        launch_id=OuterRef("id"), status__in=RECORD_ACTIVE_STATUSES
    )
    updated = (
        Launch.objects.filter(id=launch_id, status=LaunchStatus.RUNNING)
        .exclude(Exists(unfinished_runs))
        .exclude(Exists(active_records))
        .update(status=status, finished_at=Now())
    )
    return updated == 1
