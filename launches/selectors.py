"""Reads of launches: their rows (one per run, or per queue record), outcomes and counts.

A row is one scenario over one payload. Without the queue it is one run; through the queue it
is one queue record, whose runs are its starts, and its outcome is the record's: DONE passed,
ERROR failed as its last run did, CANCELLED. Unsettled rows speak the run's words (QUEUED,
IN_PROGRESS) whichever path they took.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.db.models import Count, Q, QuerySet

from launches.models import Launch
from queue_catalog.models import QueueRecord
from queue_catalog.states import RecordStatus
from runs.models import TestRun
from runs.states import RunStatus

#: Outcomes that make a row "failing": the roll-up points at these rows.
FAILING = (RunStatus.FAILED, RunStatus.ERROR)
ROW_KEY = "launchRow"


def record_outcome(record_status: str, run_status: str | None) -> str:
    """A queue record's row outcome, in the run's words."""
    if record_status == RecordStatus.DONE:
        return RunStatus.PASSED
    if record_status == RecordStatus.CANCELLED:
        return RunStatus.CANCELLED
    if record_status == RecordStatus.ERROR:
        return RunStatus.FAILED if run_status == RunStatus.FAILED else RunStatus.ERROR
    if record_status == RecordStatus.RUNNING:
        return RunStatus.IN_PROGRESS
    return RunStatus.QUEUED


_RECORD_OUTCOME_FILTER = {
    RunStatus.PASSED: Q(status=RecordStatus.DONE),
    RunStatus.CANCELLED: Q(status=RecordStatus.CANCELLED),
    RunStatus.FAILED: Q(status=RecordStatus.ERROR, current_run__status=RunStatus.FAILED),
    RunStatus.ERROR: Q(status=RecordStatus.ERROR)
    & ~Q(current_run__status=RunStatus.FAILED, current_run__isnull=False),
    RunStatus.IN_PROGRESS: Q(status=RecordStatus.RUNNING),
    RunStatus.QUEUED: Q(status=RecordStatus.SCHEDULED),
}


def launch_list() -> QuerySet[Launch]:
    return Launch.objects.select_related("environment").order_by("-id")


def launch_outcomes(launch: Launch) -> Counter[str]:
    """How many rows of the launch have each outcome (one aggregate query)."""
    counts: Counter[str] = Counter()
    if launch.via_queue:
        grouped = (
            QueueRecord.objects.filter(launch_id=launch.id)
            .values_list("status", "current_run__status")
            .annotate(n=Count("id"))
            .order_by()
        )
        for record_status, run_status, n in grouped:
            counts[record_outcome(record_status, run_status)] += n
    else:
        grouped = (
            TestRun.objects.filter(launch_id=launch.id)
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by()
        )
        for status, n in grouped:
            counts[status] += n
    return counts


def launch_rows(launch: Launch, *, outcomes: list[str] | None = None) -> QuerySet:
    """The launch's rows in order (scenario, then row), as runs or as queue records, optionally
    only those with one of ``outcomes``. Turn each into a dict with :func:`row_of`."""
    if launch.via_queue:
        rows = QueueRecord.objects.filter(launch_id=launch.id).select_related(
            "scenario", "current_run"
        )
        if outcomes:
            condition = Q()
            for outcome in outcomes:
                condition |= _RECORD_OUTCOME_FILTER[outcome]
            rows = rows.filter(condition)
    else:
        rows = TestRun.objects.filter(launch_id=launch.id).select_related("scenario")
        if outcomes:
            rows = rows.filter(status__in=outcomes)
    return rows.order_by("scenario__name", "id")


def row_of(item: TestRun | QueueRecord) -> dict[str, Any]:
    """One row: its scenario, row number (data-driven launches), payload, outcome, the run that
    decides it, and for queue rows the record and its start count."""
    if isinstance(item, QueueRecord):
        run = item.current_run
        return {
            "scenario": item.scenario.name,
            "row": item.context.get(ROW_KEY),
            "payload": item.payload,
            "status": record_outcome(item.status, run.status if run else None),
            "run": item.current_run_id,
            "record": item.id,
            "starts": item.start_count,
            "error": (run.error if run else "") if item.status == RecordStatus.ERROR else "",
        }
    return {
        "scenario": item.scenario.name,
        "row": item.context.get(ROW_KEY),
        "payload": item.context.get("payload", {}),
        "status": item.status,
        "run": item.id,
        "record": None,
        "starts": None,
        "error": item.error if item.status != RunStatus.PASSED else "",
    }


def launch_runs(launch: Launch) -> QuerySet[TestRun]:
    """Every run of the launch (through the queue: every start of every record), in order."""
    return (
        TestRun.objects.filter(launch_id=launch.id)
        .select_related("scenario")
        .order_by("scenario__name", "id")
    )


def launch_deciding_runs(launch: Launch) -> list[TestRun]:
    """The run that decides each row: the row's run, or its record's current (last) run."""
    if not launch.via_queue:
        return list(launch_runs(launch))
    run_ids = QueueRecord.objects.filter(launch_id=launch.id, current_run__isnull=False)
    return list(
        TestRun.objects.filter(id__in=run_ids.values("current_run_id"))
        .select_related("scenario")
        .order_by("scenario__name", "id")
    )
