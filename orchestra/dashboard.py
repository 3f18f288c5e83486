"""What the admin dashboard shows: a few aggregate queries, each served by an index."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Min, Q
from django.utils import timezone

from queue_catalog.models import QueueRecord
from queue_catalog.states import ACTIVE_STATUSES, RecordStatus
from runs.models import DeadLetter, DeadLetterStatus, TestRun
from runs.states import RunStatus

LANES_SHOWN = 20


def dashboard_summary() -> dict[str, Any]:
    """Runs per status in the last hour, the busiest lanes, the oldest waiting record, and the
    dead letters waiting for attention."""
    now = timezone.now()
    counts = dict(
        TestRun.objects.filter(queued_at__gte=now - timedelta(hours=1))
        .values_list("status")
        .annotate(count=Count("id"))
    )
    lanes = list(
        QueueRecord.objects.filter(status__in=ACTIVE_STATUSES)
        .values("scenario_id", "scenario__name")
        .annotate(
            waiting=Count("id", filter=Q(status=RecordStatus.SCHEDULED)),
            running=Count("id", filter=Q(status=RecordStatus.RUNNING)),
            oldest_waiting=Min("created_at", filter=Q(status=RecordStatus.SCHEDULED)),
        )
        .order_by("-waiting", "scenario__name")[:LANES_SHOWN]
    )
    oldest = (
        QueueRecord.objects.filter(status=RecordStatus.SCHEDULED)
        .select_related("scenario")
        .order_by("id")
        .first()
    )
    return {
        "runs_last_hour": [
            {"status": status, "label": status.label, "count": counts.get(status.value, 0)}
            for status in RunStatus
        ],
        "lanes": lanes,
        "oldest_waiting": oldest,
        "dead_letters_waiting": DeadLetter.objects.filter(status=DeadLetterStatus.WAITING).count(),
    }
