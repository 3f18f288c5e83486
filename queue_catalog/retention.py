"""Retention: delete finished runs (with their step results) and finished queue records older
than a cut, in small batches.

Each batch is a keyset page of at most ``batch_size`` ids, deleted in its own transaction: a
batch holds its row locks for milliseconds, never the tables, and an interrupted purge keeps
what it deleted so far. A run that a queue record still references (a start of the record, or
its current run) is kept while that record is kept; a finished record older than the cut goes
first, with its starts, and then its runs go with the other old runs. Runs and records that are
not finished are never deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.db.models.functions import Coalesce

from queue_catalog.models import QueueRecord, QueueRun
from queue_catalog.states import TERMINAL_STATUSES as RECORD_TERMINAL
from runs.models import StepResult, TestRun
from runs.states import TERMINAL_STATUSES as RUN_TERMINAL

DEFAULT_BATCH_SIZE = 500
_AGE = re.compile(r"^\s*(\d+)\s*([dhm]?)\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "": "days"}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or a bare number of days, as a timedelta; ValueError if not."""
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age such as 30d, 12h or 90m")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class PurgeCounts:
    """What a purge deleted, or would delete (``dry_run``)."""

    records: int
    runs: int
    steps: int


def _old_records(cut: datetime) -> QuerySet[QueueRecord]:
    return QueueRecord.objects.filter(status__in=RECORD_TERMINAL, finished_at__lt=cut)


def _old_runs(cut: datetime) -> QuerySet[TestRun]:
    return TestRun.objects.alias(ended=Coalesce("finished_at", "queued_at")).filter(
        status__in=RUN_TERMINAL, ended__lt=cut
    )


def _unreferenced(runs: QuerySet[TestRun], kept_records: QuerySet[QueueRecord]) -> QuerySet:
    """``runs`` that no record of ``kept_records`` references."""
    started_by_kept = QueueRun.objects.filter(run=OuterRef("pk"), record__in=kept_records)
    current_of_kept = kept_records.filter(current_run=OuterRef("pk"))
    return runs.exclude(Exists(started_by_kept)).exclude(Exists(current_of_kept))


def _batches(queryset: QuerySet, batch_size: int):
    """Keyset pages of ids of ``queryset``, each read when the one before has been handled."""
    last = 0
    while ids := list(
        queryset.filter(id__gt=last).order_by("id").values_list("id", flat=True)[:batch_size]
    ):
        yield ids
        last = ids[-1]


def runs_purge(
    *, older_than: timedelta, batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False
) -> PurgeCounts:
    """Delete what finished before ``now - older_than``; see the module docstring."""
    from django.utils import timezone

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cut = timezone.now() - older_than
    if dry_run:
        kept = QueueRecord.objects.exclude(id__in=_old_records(cut).values("id"))
        runs = _unreferenced(_old_runs(cut), kept)
        return PurgeCounts(
            records=_old_records(cut).count(),
            runs=runs.count(),
            steps=StepResult.objects.filter(run__in=runs.values("id")).count(),
        )
    records = runs = steps = 0
    for ids in _batches(_old_records(cut), batch_size):
        with transaction.atomic():
            QueueRun.objects.filter(record_id__in=ids).delete()
            records += (
                QueueRecord.objects.filter(id__in=ids).delete()[1].get(QueueRecord._meta.label, 0)
            )
    for ids in _batches(_unreferenced(_old_runs(cut), QueueRecord.objects.all()), batch_size):
        with transaction.atomic():
            steps += StepResult.objects.filter(run_id__in=ids).delete()[0]
            runs += TestRun.objects.filter(id__in=ids).delete()[1].get(TestRun._meta.label, 0)
    return PurgeCounts(records=records, runs=runs, steps=steps)
