"""The QueueRecord state machine: statuses, allowed transitions, and the one way to change them.

    SCHEDULED ──start──> RUNNING ──passed──> DONE
        ^                   │ └──failed, attempts left──> SCHEDULED (re-run after backoff)
        │                   └────failed, none left─────> ERROR ──retry──> SCHEDULED
        └── CANCELLED <── (SCHEDULED | RUNNING)

At most one record per scenario is RUNNING: a partial unique index enforces it, so even two
dispatchers racing cannot both start a lane. Every change is a conditional UPDATE.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class RecordStatus(models.TextChoices):
    SCHEDULED = "SCHEDULED", _("Scheduled")
    RUNNING = "RUNNING", _("Running")
    DONE = "DONE", _("Done")
    ERROR = "ERROR", _("Error")
    CANCELLED = "CANCELLED", _("Cancelled")


ACTIVE_STATUSES = frozenset({RecordStatus.SCHEDULED, RecordStatus.RUNNING})
TERMINAL_STATUSES = frozenset({RecordStatus.DONE, RecordStatus.ERROR, RecordStatus.CANCELLED})

# target status -> the statuses it may be entered from
ALLOWED_SOURCES: dict[str, frozenset[str]] = {
    RecordStatus.RUNNING: frozenset({RecordStatus.SCHEDULED}),
    RecordStatus.SCHEDULED: frozenset({RecordStatus.RUNNING, RecordStatus.ERROR}),
    RecordStatus.DONE: frozenset({RecordStatus.RUNNING}),
    RecordStatus.ERROR: frozenset({RecordStatus.RUNNING}),
    RecordStatus.CANCELLED: frozenset({RecordStatus.SCHEDULED, RecordStatus.RUNNING}),
}


class IllegalTransition(ValueError):
    pass


def transition_record(
    record_id: int, *, to: str, sources: set[str] | frozenset[str] | None = None, **fields
) -> bool:
    """Move record ``record_id`` to ``to`` if it is in one of ``sources``; False if it was not.

    ``sources`` defaults to every status ``to`` may be entered from; a source outside that set
    is a programming error (:class:`IllegalTransition`).
    """
    from queue_catalog.models import QueueRecord

    allowed = ALLOWED_SOURCES.get(to)
    if allowed is None:
        raise IllegalTransition(f"no transition leads to {to}")
    sources = allowed if sources is None else frozenset(sources)
    if not sources <= allowed:
        raise IllegalTransition(f"{sorted(sources - allowed)} -> {to} is not allowed")
    updated = QueueRecord.objects.filter(id=record_id, status__in=sources).update(
        status=to, **fields
    )
    return updated == 1
