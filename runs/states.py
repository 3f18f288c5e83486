"""The TestRun state machine: statuses, allowed transitions, and the one way to change them.

Every status change is a conditional UPDATE (``... WHERE status IN (allowed sources)``), so two
processes can never both win a transition; the loser sees 0 rows and backs off.

    QUEUED ──claim──> IN_PROGRESS ──> PASSED | FAILED | ERROR
       │                  │  ├──lease lost──> QUEUED (republished by the sweep)
       │                  │  └──parked──> QUEUED + resume_at (republished by the sweep then)
       └──> CANCELLED <───┘
    QUEUED ──> ERROR (gave up: delivered too often)

A run that must wait long for a throttled rate key is **parked** (``park_run``): QUEUED again,
with ``resume_at`` and its ``resume`` state (the step to continue at, the captures so far); the
claim that resumes it keeps its attempt (the steps before were stored under it and are not
executed again). A claim that takes over a running run, or the lease sweep, drops that state:
the next attempt executes the run from the start, as after any lost worker.

A running run is not cancelled by the caller: ``cancel_requested_at`` asks its worker to stop,
and the run becomes CANCELLED when the worker confirms (``finish_run``) or its lease lapses
(the sweep). A lapsed lease sends a run back to QUEUED only if it may execute again: not when a
cancel was requested (CANCELLED) or its attempt's ``deadline_at`` passed (ERROR, time limit).

The raw SQL statements below are the hot path of a worker; each one's status condition is
generated from ``ALLOWED_SOURCES`` (``_status_condition``), so the rules are written once, and
``RAW_SQL_TRANSITIONS`` lists them for the test that pins them to the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from django.db import connection, models
from django.utils.translation import gettext_lazy as _

from orchestra.prepared import PreparedStatement
from orchestra.transitions import IllegalTransition, conditional_transition, sources_sql


class RunStatus(models.TextChoices):
    QUEUED = "QUEUED", _("Queued")
    IN_PROGRESS = "IN_PROGRESS", _("In progress")
    PASSED = "PASSED", _("Passed")
    FAILED = "FAILED", _("Failed")
    ERROR = "ERROR", _("Error")
    CANCELLED = "CANCELLED", _("Cancelled")


TERMINAL_STATUSES = frozenset(
    {RunStatus.PASSED, RunStatus.FAILED, RunStatus.ERROR, RunStatus.CANCELLED}
)

# target status -> the statuses it may be entered from
ALLOWED_SOURCES: dict[str, frozenset[str]] = {
    RunStatus.IN_PROGRESS: frozenset({RunStatus.QUEUED, RunStatus.IN_PROGRESS}),
    RunStatus.QUEUED: frozenset({RunStatus.IN_PROGRESS}),
    RunStatus.PASSED: frozenset({RunStatus.IN_PROGRESS}),
    RunStatus.FAILED: frozenset({RunStatus.IN_PROGRESS}),
    RunStatus.ERROR: frozenset({RunStatus.QUEUED, RunStatus.IN_PROGRESS}),
    RunStatus.CANCELLED: frozenset({RunStatus.QUEUED, RunStatus.IN_PROGRESS}),
}


def transition_run(
    run_id: int,
    *,
    to: str,
    sources: set[str] | frozenset[str] | None = None,
    **conditions_and_fields,
) -> bool:
    """Move run ``run_id`` to ``to`` if it is in one of ``sources`` (see
    :func:`orchestra.transitions.conditional_transition`); False if another process got there first.
    """
    from runs.models import TestRun

    return conditional_transition(
        TestRun, ALLOWED_SOURCES, run_id, to=to, sources=sources, **conditions_and_fields
    )


def _status_condition(to: str, source: str | None = None) -> str:
    """``status IN (...)`` of the transition to ``to``: every source ALLOWED_SOURCES allows, or
    only ``source``, which must be one of them (checked when the module loads)."""
    table = ALLOWED_SOURCES
    if source is not None:
        if source not in ALLOWED_SOURCES.get(to, ()):
            raise IllegalTransition(f"{source} -> {to} is not allowed")
        table = {to: frozenset({source})}
    return sources_sql(table, to)


# A worker's claim: owner (``worker``) and ``attempt``. Renewing the lease, storing a step and
# finishing the run are all IN_PROGRESS -> ... transitions of the claim's holder only.
_HELD = f"""{_status_condition(RunStatus.IN_PROGRESS, RunStatus.IN_PROGRESS)}
   AND worker = %(worker)s AND attempt = %(attempt)s"""


class LeaseState(StrEnum):
    HELD = "held"
    CANCEL_REQUESTED = "cancel requested"
    LOST = "lost"


@dataclass(frozen=True)
class Claim:
    """A run this worker now owns, with what it needs to execute it.

    ``budget_seconds`` is what is left of this attempt's time budget (on the database clock);
    ``out_of_time`` says an earlier attempt used it all up (a hard time limit killed it), and
    ``cancel_requested`` that a cancel waits for a confirmation: neither may execute.
    """

    run_id: int
    attempt: int
    definition: dict[str, Any]
    context: dict[str, Any]
    budget_seconds: float = 0.0
    out_of_time: bool = False
    cancel_requested: bool = False
    #: Where a parked run continues (``park_run``), None for a run executed from the start.
    resume: dict[str, Any] | None = None
    #: Seconds the run already waited on rate keys.
    throttle_seconds: float = 0.0


# Claimable: QUEUED; or IN_PROGRESS when its lease lapsed, its owner is known to be dead
# (takeover_from), or its claim is held by an earlier try of this very message (a Celery retry
# is published only after that try ended: see runs.leases). An attempt whose deadline passed
# keeps it, so the claim reports it out of time instead of granting a fresh budget.
_CLAIM = PreparedStatement(
    "orchestra_claim_run",
    f"""
UPDATE runs_testrun
   SET status = 'IN_PROGRESS', worker = %(worker)s,
       attempt = attempt + CASE WHEN status = 'QUEUED' AND resume IS NOT NULL THEN 0 ELSE 1 END,
       resume = CASE WHEN status = 'QUEUED' THEN resume END, resume_at = NULL,
       lease_expires_at = now() + make_interval(secs => %(lease)s),
       started_at = COALESCE(started_at, now()),
       delivery_id = %(delivery_id)s, delivery_retries = %(delivery_retries)s,
       deadline_at = CASE WHEN status = 'IN_PROGRESS' AND deadline_at < now() THEN deadline_at
                          ELSE now() + make_interval(secs => %(budget)s) END
 WHERE id = %(run_id)s
   AND {_status_condition(RunStatus.IN_PROGRESS)}
   AND (status = 'QUEUED'
        OR lease_expires_at < now()
        OR worker = %(takeover_from)s
        OR (delivery_id <> '' AND delivery_id = %(delivery_id)s
            AND delivery_retries < %(delivery_retries)s))
RETURNING attempt, definition, context,
          GREATEST(0, EXTRACT(EPOCH FROM deadline_at - now()))::float8,
          cancel_requested_at IS NOT NULL, resume, throttle_seconds
""",
)


STEP_COLUMNS = (
    "position",
    "name",
    "plugin",
    "is_cleanup",
    "status",
    "started_at",
    "finished_at",
    "duration_ms",
    "request",
    "response",
    "captures",
    "assertions",
    "tries",
    "error",
)
# A step's result travels as one JSON object keyed by StepResult column: one parameter instead
# of fourteen, and the server reads it into a row of the table's own type.
_STEP_INSERT = f"""
INSERT INTO runs_stepresult (run_id, attempt, {", ".join(STEP_COLUMNS)})
SELECT %(run_id)s, %(attempt)s, {", ".join(f"step.{name}" for name in STEP_COLUMNS)}
  FROM jsonb_populate_record(NULL::runs_stepresult, %(step)s::jsonb) AS step
"""
# Stored only while the claim is held, and answering whether it still is (and whether a cancel
# was requested) in the same round trip. FOR SHARE makes a concurrent takeover wait for this
# insert, or this insert see the takeover (READ COMMITTED re-checks the locked row): a stale
# owner's step is refused by the database. A step already stored (the statement completed
# just before a soft time limit interrupted its caller) is not stored twice.
_STORE_STEP = PreparedStatement(
    "orchestra_store_step",
    f"""
WITH held AS (
    SELECT cancel_requested_at IS NOT NULL FROM runs_testrun
     WHERE id = %(run_id)s AND {_HELD}
       FOR SHARE
), stored AS ({_STEP_INSERT}
 WHERE EXISTS (SELECT 1 FROM held)
ON CONFLICT (run_id, attempt, position) DO NOTHING
)
SELECT * FROM held
""",
)

# The final transitions a worker makes: one statement per target status, each generated from
# ALLOWED_SOURCES. The final status and the last step's result in one statement: one round
# trip, one commit, and the step is stored only if this worker still held the claim.
_FINISHED_BY_WORKER = (RunStatus.PASSED, RunStatus.FAILED, RunStatus.ERROR, RunStatus.CANCELLED)
_FINISH = {
    to: PreparedStatement(
        f"orchestra_finish_run_{to.lower()}",
        f"""
WITH finished AS (
    UPDATE runs_testrun
       SET status = CASE WHEN cancel_requested_at IS NULL THEN '{to}' ELSE 'CANCELLED' END,
           error = CASE WHEN cancel_requested_at IS NULL THEN %(error)s ELSE 'cancelled' END,
           finished_at = now(), lease_expires_at = NULL
     WHERE id = %(run_id)s
       AND {_status_condition(to, RunStatus.IN_PROGRESS)}
       AND worker = %(worker)s AND attempt = %(attempt)s
    RETURNING id, status
), step AS ({_STEP_INSERT}
 WHERE %(step)s::jsonb IS NOT NULL AND EXISTS (SELECT 1 FROM finished))
SELECT (SELECT status FROM finished)
""",
    )
    for to in _FINISHED_BY_WORKER
}


def _step_json(step: dict[str, Any] | None) -> str | None:
    if step is None:
        return None
    return json.dumps({name: step[name] for name in STEP_COLUMNS}, default=_isoformat)


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def store_step(run_id: int, *, worker: str, attempt: int, step: dict[str, Any]) -> LeaseState:
    """Insert one StepResult row (``step`` maps each StepResult column to its value) if
    ``worker``/``attempt`` still holds the run; returns the claim's state (LOST: not stored)."""
    with connection.cursor() as cursor:
        _STORE_STEP.execute(
            cursor,
            {"run_id": run_id, "worker": worker, "attempt": attempt, "step": _step_json(step)},
        )
        return _state_of(cursor.fetchone())


def finish_run(
    run_id: int,
    *,
    to: str,
    worker: str,
    attempt: int,
    error: str,
    last_step: dict[str, Any] | None = None,
) -> str | None:
    """IN_PROGRESS -> ``to`` for the owner ``worker``/``attempt``, storing ``last_step`` with it;
    the status the run now has.

    A run whose cancel was requested becomes CANCELLED whatever ``to`` says: the database, not
    the worker's last look, decides whether the request came before the end. None when the run
    is no longer this attempt's (taken over after a lost lease, or finished by the sweep): then
    nothing is written.
    """
    if to not in _FINISH:
        raise IllegalTransition(f"IN_PROGRESS -> {to} is not a worker's transition")
    params = {
        "run_id": run_id,
        "worker": worker,
        "attempt": attempt,
        "error": error,
        "step": _step_json(last_step),
    }
    with connection.cursor() as cursor:
        _FINISH[to].execute(cursor, params)
        return cursor.fetchone()[0]


# Parking: IN_PROGRESS -> QUEUED for the claim's holder, unless a cancel was requested (then
# the worker finishes the run CANCELLED instead), storing the last step in the same statement.
# ``dispatched_at`` is cleared: the sweep publishes the run once ``resume_at`` has come.
_PARK = PreparedStatement(
    "orchestra_park_run",
    f"""
WITH parked AS (
    UPDATE runs_testrun
       SET status = 'QUEUED', lease_expires_at = NULL, dispatched_at = NULL,
           resume_at = now() + make_interval(secs => %(resume_in)s::float8),
           resume = %(resume)s::jsonb, throttle_seconds = %(throttle_seconds)s::float8
     WHERE id = %(run_id)s
       AND {_status_condition(RunStatus.QUEUED, RunStatus.IN_PROGRESS)}
       AND worker = %(worker)s AND attempt = %(attempt)s AND cancel_requested_at IS NULL
    RETURNING id
), step AS ({_STEP_INSERT}
 WHERE %(step)s::jsonb IS NOT NULL AND EXISTS (SELECT 1 FROM parked))
SELECT EXISTS (SELECT 1 FROM parked)
""",
)


def park_run(
    run_id: int,
    *,
    worker: str,
    attempt: int,
    resume_in: float,
    resume: dict[str, Any],
    throttle_seconds: float,
    last_step: dict[str, Any] | None = None,
) -> bool:
    """IN_PROGRESS -> QUEUED until ``resume_in`` seconds from now, for the owner
    ``worker``/``attempt``, keeping ``resume`` for the claim that continues the run; False when
    the run is no longer this attempt's or a cancel was requested (nothing is written)."""
    params = {
        "run_id": run_id,
        "worker": worker,
        "attempt": attempt,
        "resume_in": resume_in,
        "resume": json.dumps(resume, default=_isoformat),
        "throttle_seconds": throttle_seconds,
        "step": _step_json(last_step),
    }
    with connection.cursor() as cursor:
        _PARK.execute(cursor, params)
        return cursor.fetchone()[0]


def claim_run(
    run_id: int,
    *,
    worker: str,
    lease_seconds: float,
    budget_seconds: float,
    takeover_from: str = "",
    delivery_id: str = "",
    delivery_retries: int = 0,
) -> Claim | None:
    """QUEUED (or IN_PROGRESS, see ``_CLAIM``) -> IN_PROGRESS, owned by ``worker``.

    ``takeover_from`` names an owner known to be dead, whose live-looking lease may be taken
    over; ``delivery_id``/``delivery_retries`` identify the message being executed. One
    statement, so of two workers holding the same message only one can win.
    """
    with connection.cursor() as cursor:
        _CLAIM.execute(
            cursor,
            {
                "run_id": run_id,
                "worker": worker,
                "lease": lease_seconds,
                "budget": budget_seconds,
                "takeover_from": takeover_from or None,
                "delivery_id": delivery_id,
                "delivery_retries": delivery_retries,
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    attempt, definition, context, budget, cancel_requested, resume, throttle_seconds = row
    return Claim(
        run_id,
        attempt,
        _json(definition),
        _json(context),
        budget_seconds=budget,
        out_of_time=budget <= 0,
        cancel_requested=cancel_requested,
        resume=_json(resume),
        throttle_seconds=throttle_seconds,
    )


def _json(value: Any) -> Any:
    # Django registers jsonb to come back as text from raw cursors.
    return json.loads(value) if isinstance(value, str) else value


# The lease is extended only while the claim is held, and after a cancel request only for the
# finally grace (``cancel_grace``): a worker that does not confirm in time loses the lease, and
# the sweep cancels the run.
_RENEW = PreparedStatement(
    "orchestra_renew_lease",
    f"""
UPDATE runs_testrun SET lease_expires_at = now() + make_interval(secs => %(lease)s)
 WHERE id = %(run_id)s AND {_HELD}
   AND (cancel_requested_at IS NULL
        OR cancel_requested_at > now() - make_interval(secs => %(cancel_grace)s))
RETURNING cancel_requested_at IS NOT NULL
""",
)
_LEASE_STATE = PreparedStatement(
    "orchestra_lease_state",
    f"""
SELECT cancel_requested_at IS NOT NULL FROM runs_testrun
 WHERE id = %(run_id)s AND {_HELD}
""",
)


def _state_of(row: tuple | None) -> LeaseState:
    if row is None:
        return LeaseState.LOST
    return LeaseState.CANCEL_REQUESTED if row[0] else LeaseState.HELD


def renew_lease(
    run_id: int, *, worker: str, attempt: int, lease_seconds: float, cancel_grace: float
) -> LeaseState:
    """Extend the lease of a run this worker holds; LOST when the claim is gone."""
    params = {
        "run_id": run_id,
        "worker": worker,
        "attempt": attempt,
        "lease": lease_seconds,
        "cancel_grace": cancel_grace,
    }
    with connection.cursor() as cursor:
        _RENEW.execute(cursor, params)
        return _state_of(cursor.fetchone())


def lease_state(run_id: int, *, worker: str, attempt: int) -> LeaseState:
    """Whether ``worker``/``attempt`` still holds the run (read only, for frequent checks)."""
    with connection.cursor() as cursor:
        _LEASE_STATE.execute(cursor, {"run_id": run_id, "worker": worker, "attempt": attempt})
        return _state_of(cursor.fetchone())


# Every raw statement that changes or depends on a run's status: (statement, target status).
RAW_SQL_TRANSITIONS: list[tuple[str, str]] = [
    (_CLAIM.sql, RunStatus.IN_PROGRESS),
    (_STORE_STEP.sql, RunStatus.IN_PROGRESS),
    (_RENEW.sql, RunStatus.IN_PROGRESS),
    (_LEASE_STATE.sql, RunStatus.IN_PROGRESS),
    (_PARK.sql, RunStatus.QUEUED),
    *((statement.sql, to) for to, statement in _FINISH.items()),
]
