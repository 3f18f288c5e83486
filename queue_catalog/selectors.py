"""Reads of the scenario queue."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from queue_catalog.models import QueueRecord, QueueRun


def queue_record_list() -> QuerySet[QueueRecord]:
    return QueueRecord.objects.select_related("scenario").order_by("-id")


def queue_record_with_runs(*, record_id: int) -> QueueRecord:
    """The record with the run of every start, oldest first."""
    return (
        QueueRecord.objects.select_related("scenario")
        .prefetch_related(
            Prefetch(
                "attempts",
                queryset=QueueRun.objects.select_related(
                    "run__scenario", "run__scenario_version"
                ).order_by("start_number"),
            )
        )
        .get(id=record_id)
    )


def lane_summaries() -> list[dict]:
    """Per scenario: record counts by status and the age of the oldest waiting record."""
    from django.db.models import Count, Min, Q
    from django.utils import timezone

    from queue_catalog.states import RecordStatus

    rows = (
        QueueRecord.objects.values("scenario__name")
        .annotate(
            **{status: Count("id", filter=Q(status=status)) for status in RecordStatus.values},
            oldest_waiting=Min("created_at", filter=Q(status=RecordStatus.SCHEDULED)),
        )
        .order_by("scenario__name")
    )
    now = timezone.now()
    return [
        {
            "scenario": row.pop("scenario__name"),
            "oldest_waiting_seconds": (now - row["oldest_waiting"]).total_seconds()
            if row["oldest_waiting"]
            else None,
            **{k: v for k, v in row.items() if k != "oldest_waiting"},
        }
        for row in rows
    ]
