"""The QueueRecord state machine: statuses, allowed transitions, and the one way to change them.

    SCHEDULED ──start──> RUNNING ──passed──> DONE
        ^                   │ └──failed, attempts left──> SCHEDULED (re-run after backoff)
        │                   └────failed, none left─────> ERROR ──retry──> SCHEDULED
        └── CANCELLED <── (SCHEDULED | RUNNING)

At most one record per scenario is RUNNING: a partial unique index enforces it, so even two
dispatchers racing cannot both start a lane. Every change is a conditional UPDATE.
"""

from __future__ import annotations

from django.db import connection, models
from django.utils.translation import gettext_lazy as _

from orchestra.prepared import PreparedStatement
from orchestra.transitions import IllegalTransition, conditional_transition


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


# Namespace of the advisory locks that serialise work on one lane (any constant would do); the
# key within it is the scenario id. Taken only through the functions below.
_LANE_LOCK_NAMESPACE = 7001


def transition_record(
    record_id: int,
    *,
    to: str,
    sources: set[str] | frozenset[str] | None = None,
    **conditions_and_fields,
) -> bool:
    """Move record ``record_id`` to ``to`` if it is in one of ``sources`` (see
    :func:`orchestra.transitions.conditional_transition`); False if another process got there first.
    """
    from queue_catalog.models import QueueRecord

    return conditional_transition(
        QueueRecord, ALLOWED_SOURCES, record_id, to=to, sources=sources, **conditions_and_fields
    )


# SCHEDULED -> RUNNING for the head of a lane, in one statement: find the head, create its run
# (QUEUED, with the scenario's definition and the queue's context, as ``runs.services.run_start``
# creates one), start the record on it and link the attempt. Nothing happens when the lane is
# busy, its head is waiting out a backoff, or the scenario is inactive (the lane then waits).
_START_LANE_HEAD = PreparedStatement(
    "orchestra_start_lane_head",
    """
WITH head AS (
    SELECT q.id, q.status, q.next_attempt_at, q.start_count + 1 AS start_number, q.payload,
           q.priority
      FROM queue_catalog_queuerecord q
     WHERE q.scenario_id = %(scenario_id)s AND q.status IN ('SCHEDULED', 'RUNNING')
     ORDER BY q.lane_position
     LIMIT 1
), due AS (
    SELECT head.*, s.definition
      FROM head JOIN runs_scenario s ON s.id = %(scenario_id)s AND s.is_active
     WHERE head.status = 'SCHEDULED'
       AND (head.next_attempt_at IS NULL OR head.next_attempt_at <= now())
), run AS (
    INSERT INTO runs_testrun
           (scenario_id, status, priority, definition, context, attempt, worker, queued_at, error)
    SELECT %(scenario_id)s, 'QUEUED', due.priority, due.definition,
           jsonb_build_object('queueRecordId', due.id, 'queueStartCount', due.start_number,
                              'payload', due.payload),
           0, '', now(), ''
      FROM due
    RETURNING id, priority
), started AS (
    UPDATE queue_catalog_queuerecord r
       SET status = 'RUNNING', start_count = due.start_number, started_at = now(),
           process_code = run.id::text, current_run_id = run.id, next_attempt_at = NULL
      FROM due, run
     WHERE r.id = due.id AND r.status = 'SCHEDULED'
    RETURNING r.id
), attempt AS (
    INSERT INTO queue_catalog_queuerun (record_id, run_id, start_number)
    SELECT due.id, run.id, due.start_number FROM due, run
)
SELECT run.id, run.priority, (SELECT count(*) FROM started) FROM run
""",
)


def start_lane_head(scenario_id: int) -> tuple[int, str] | None:
    """Start the head of the lane if the lane is idle and its head is due.

    Returns the new run's id and priority (its message is not published yet), or None when
    nothing was started. Call it holding the lane's lock, inside a transaction.
    """
    with connection.cursor() as cursor:
        _START_LANE_HEAD.execute(cursor, {"scenario_id": scenario_id})
        row = cursor.fetchone()
    if row is None:
        return None
    run_id, priority, started = row
    if started != 1:  # impossible under the lane lock; fail loudly rather than orphan the run
        raise IllegalTransition(f"the head of lane {scenario_id} changed while it was locked")
    return run_id, priority


# RUNNING -> DONE for the record's current run, after taking its lane's lock, in one statement.
# The lock is taken before the row is updated, and the UPDATE re-checks its condition against
# whatever a lock holder committed meanwhile (a cancel, say).
_RECORD_DONE = PreparedStatement(
    "orchestra_record_done",
    """
WITH lane AS (
    SELECT pg_advisory_xact_lock(%(namespace)s, scenario_id::integer)
      FROM queue_catalog_queuerecord WHERE id = %(record_id)s
)
UPDATE queue_catalog_queuerecord r SET status = 'DONE', finished_at = now()
  FROM lane
 WHERE r.id = %(record_id)s AND r.status = 'RUNNING' AND r.current_run_id = %(run_id)s
RETURNING r.scenario_id
""",
)


def record_done_locking_lane(record_id: int, *, run_id: int) -> int | None:
    """RUNNING -> DONE if ``run_id`` is the record's current run, holding the lane's lock until
    the transaction ends; the record's scenario id, or None when it was not current."""
    with connection.cursor() as cursor:
        _RECORD_DONE.execute(
            cursor,
            {"namespace": _LANE_LOCK_NAMESPACE, "record_id": record_id, "run_id": run_id},
        )
        row = cursor.fetchone()
    return row[0] if row is not None else None


def lock_lane(scenario_id: int) -> None:
    """Take the lane's lock until the current transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, %s::integer)", [_LANE_LOCK_NAMESPACE, scenario_id]
        )


def lock_lane_of_record(record_id: int) -> int | None:
    """Take the lock of the record's lane until the transaction ends; its scenario id, or None
    when the record does not exist."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT scenario_id, pg_advisory_xact_lock(%s, scenario_id::integer)"
            " FROM queue_catalog_queuerecord WHERE id = %s",
            [_LANE_LOCK_NAMESPACE, record_id],
        )
        row = cursor.fetchone()
    return row[0] if row is not None else None
