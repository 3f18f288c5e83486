"""The QueueRecord state machine: statuses, allowed transitions, and the one way to change them.

    SCHEDULED ──start──> RUNNING ──passed──> DONE
        ^                   │ └──failed, attempts left──> SCHEDULED (re-run after backoff)
        │                   └────failed, none left─────> ERROR ──retry──> SCHEDULED
        └── CANCELLED <── (SCHEDULED | RUNNING)

At most one record per scenario is RUNNING: a partial unique index enforces it, so even two
dispatchers racing cannot both start a lane. Every change is a conditional UPDATE; the raw
statements below take their status conditions from ``ALLOWED_SOURCES`` through
:func:`orchestra.transitions.sources_sql`, like the ORM path does.

A RUNNING record may carry ``cancel_requested_at``: its run was asked to stop, and the record
keeps its lane (stays RUNNING) until that run has really ended; then it becomes CANCELLED.
"""

from __future__ import annotations

from functools import cache

from django.db import connection, models
from django.utils.translation import gettext_lazy as _

from orchestra.prepared import PreparedStatement
from orchestra.transitions import IllegalTransition, conditional_transition, sources_sql


class RecordStatus(models.TextChoices):
    SCHEDULED = "SCHEDULED", _("Scheduled")
    RUNNING = "RUNNING", _("Running")
    DONE = "DONE", _("Done")
    ERROR = "ERROR", _("Error")
    CANCELLED = "CANCELLED", _("Cancelled")


TERMINAL_STATUSES = frozenset({RecordStatus.DONE, RecordStatus.ERROR, RecordStatus.CANCELLED})

# target status -> the statuses it may be entered from
ALLOWED_SOURCES: dict[str, frozenset[str]] = {
    RecordStatus.RUNNING: frozenset({RecordStatus.SCHEDULED}),
    RecordStatus.SCHEDULED: frozenset({RecordStatus.RUNNING, RecordStatus.ERROR}),
    RecordStatus.DONE: frozenset({RecordStatus.RUNNING}),
    RecordStatus.ERROR: frozenset({RecordStatus.RUNNING}),
    RecordStatus.CANCELLED: frozenset({RecordStatus.SCHEDULED, RecordStatus.RUNNING}),
}

# A record is active (in its lane) exactly as long as a cancel can still end it.
ACTIVE_STATUSES = ALLOWED_SOURCES[RecordStatus.CANCELLED]


def active_sql(column: str) -> str:
    """``column IN (...)`` of the active statuses, for raw SQL."""
    return sources_sql(ALLOWED_SOURCES, RecordStatus.CANCELLED, column=column)


def startable_sql(column: str) -> str:
    """``column IN (...)`` of the statuses a record may start from, for raw SQL."""
    return sources_sql(ALLOWED_SOURCES, RecordStatus.RUNNING, column=column)


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


# The lane lock is PostgreSQL's advisory lock on the single 64-bit key ``scenario_id``. The key
# is the id itself (a bigint, positive), so two lanes never share a lock whatever the id, and
# the single-key form is a key space of its own: PostgreSQL never confuses it with a lock
# taken on two 32-bit keys, the form every other advisory lock of orchestra uses with its own
# namespace (``orchestra.api.idempotency``). Taken only through the functions below.
_LANE_LOCK = "pg_advisory_xact_lock({}::bigint)"


@cache
def _start_lane_head_statement() -> tuple[PreparedStatement, dict]:
    """SCHEDULED -> RUNNING for the head of a lane, in one statement: find the head, create its
    run, start the record on it and link the attempt. Nothing happens when the lane is busy
    (its head is RUNNING, cancel requested or not), its head is waiting out a backoff, or the
    scenario is inactive (the lane then waits).

    The run's columns come from ``runs.services.new_run_sql``: the same definition of a new run
    as every other launch, built once per process (the model must be loaded).
    """
    from runs.services import new_run_sql

    run = new_run_sql(
        scenario_id="%(scenario_id)s",
        scenario_version_id="due.current_version_id",
        priority="due.priority",
        definition="due.definition",
        context="due.context || jsonb_build_object('queueRecordId', due.id,"
        " 'queueStartCount', due.start_number, 'payload', due.payload)",
        launch_id="due.launch_id",
    )
    statement = PreparedStatement(
        "orchestra_start_lane_head",
        f"""
WITH head AS (
    SELECT q.id, q.status, q.next_attempt_at, q.start_count + 1 AS start_number, q.payload,
           q.priority, q.context, q.launch_id
      FROM queue_catalog_queuerecord q
     WHERE q.scenario_id = %(scenario_id)s AND {active_sql("q.status")}
     ORDER BY q.lane_position
     LIMIT 1
), due AS (
    SELECT head.*, s.definition, s.current_version_id
      FROM head JOIN runs_scenario s ON s.id = %(scenario_id)s AND s.is_active
     WHERE {startable_sql("head.status")}
       AND (head.next_attempt_at IS NULL OR head.next_attempt_at <= now())
), run AS (
    INSERT INTO runs_testrun ({run.columns})
    SELECT {run.values}
      FROM due
    RETURNING id, priority
), started AS (
    UPDATE queue_catalog_queuerecord r
       SET status = '{RecordStatus.RUNNING}', start_count = due.start_number, started_at = now(),
           process_code = run.id::text, current_run_id = run.id, next_attempt_at = NULL
      FROM due, run
     WHERE r.id = due.id AND {startable_sql("r.status")}
    RETURNING r.id
), attempt AS (
    INSERT INTO queue_catalog_queuerun (record_id, run_id, start_number)
    SELECT due.id, run.id, due.start_number FROM due, run
)
SELECT run.id, run.priority, (SELECT count(*) FROM started) FROM run
""",
    )
    return statement, run.params


def start_lane_head(scenario_id: int) -> tuple[int, str] | None:
    """Start the head of the lane if the lane is idle and its head is due.

    Returns the new run's id and priority (its message is not published yet), or None when
    nothing was started. Call it holding the lane's lock, inside a transaction.
    """
    statement, run_params = _start_lane_head_statement()
    with connection.cursor() as cursor:
        statement.execute(cursor, {"scenario_id": scenario_id, **run_params})
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
    f"""
WITH lane AS (
    SELECT {_LANE_LOCK.format("scenario_id")}
      FROM queue_catalog_queuerecord WHERE id = %(record_id)s
)
UPDATE queue_catalog_queuerecord r SET status = '{RecordStatus.DONE}', finished_at = now()
  FROM lane
 WHERE r.id = %(record_id)s AND {sources_sql(ALLOWED_SOURCES, RecordStatus.DONE, "r.status")}
   AND r.current_run_id = %(run_id)s
RETURNING r.scenario_id
""",
)


def record_done_locking_lane(record_id: int, *, run_id: int) -> int | None:
    """RUNNING -> DONE if ``run_id`` is the record's current run, holding the lane's lock until
    the transaction ends; the record's scenario id, or None when it was not current."""
    with connection.cursor() as cursor:
        _RECORD_DONE.execute(cursor, {"record_id": record_id, "run_id": run_id})
        row = cursor.fetchone()
    return row[0] if row is not None else None


def lock_lane(scenario_id: int) -> None:
    """Take the lane's lock until the current transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_LANE_LOCK.format('%s')}", [scenario_id])


def lock_lane_of_record(record_id: int) -> int | None:
    """Take the lock of the record's lane until the transaction ends; its scenario id, or None
    when the record does not exist."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT scenario_id, {_LANE_LOCK.format('scenario_id')}"
            " FROM queue_catalog_queuerecord WHERE id = %s",
            [record_id],
        )
        row = cursor.fetchone()
    return row[0] if row is not None else None
