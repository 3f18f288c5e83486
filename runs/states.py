"""The TestRun state machine: statuses, allowed transitions, and the one way to change them.

Every status change is a conditional UPDATE (``... WHERE status IN (allowed sources)``), so two
processes can never both win a transition; the loser sees 0 rows and backs off.

    QUEUED ──claim──> IN_PROGRESS ──> PASSED | FAILED | ERROR
       │                  │  └──lease lost──> QUEUED (republished by the sweep)
       └──> CANCELLED <───┘
    QUEUED ──> ERROR (gave up: delivered too often)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, models
from django.utils.translation import gettext_lazy as _

from orchestra.prepared import PreparedStatement
from orchestra.transitions import IllegalTransition, conditional_transition


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


@dataclass(frozen=True)
class Claim:
    """A run this worker now owns, with what it needs to execute it."""

    run_id: int
    attempt: int
    definition: dict[str, Any]
    context: dict[str, Any]


_CLAIM = PreparedStatement(
    "orchestra_claim_run",
    """
UPDATE runs_testrun
   SET status = 'IN_PROGRESS', attempt = attempt + 1, worker = %(worker)s,
       lease_expires_at = now() + make_interval(secs => %(lease)s),
       started_at = COALESCE(started_at, now())
 WHERE id = %(run_id)s
   AND (status = 'QUEUED'
        OR (status = 'IN_PROGRESS'
            AND (lease_expires_at < now() OR worker = %(takeover_from)s)))
RETURNING attempt, definition, context
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
_STORE_STEP = PreparedStatement("orchestra_store_step", _STEP_INSERT)

# The final transition and the last step's result in one statement: one round trip, one
# commit, and the step is stored only if this worker still owned the run.
_FINISH = PreparedStatement(
    "orchestra_finish_run",
    f"""
WITH finished AS (
    UPDATE runs_testrun
       SET status = %(to)s, finished_at = now(), lease_expires_at = NULL, error = %(error)s
     WHERE id = %(run_id)s AND status = 'IN_PROGRESS' AND worker = %(worker)s
       AND attempt = %(attempt)s
    RETURNING id
), step AS ({_STEP_INSERT}
 WHERE %(step)s::jsonb IS NOT NULL AND EXISTS (SELECT 1 FROM finished))
SELECT count(*) FROM finished
""",
)


def _step_json(step: dict[str, Any] | None) -> str | None:
    if step is None:
        return None
    return json.dumps({name: step[name] for name in STEP_COLUMNS}, default=_isoformat)


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def store_step(run_id: int, *, attempt: int, step: dict[str, Any]) -> None:
    """Insert one StepResult row (``step`` maps each StepResult column to its value)."""
    with connection.cursor() as cursor:
        _STORE_STEP.execute(
            cursor, {"run_id": run_id, "attempt": attempt, "step": _step_json(step)}
        )


def finish_run(
    run_id: int,
    *,
    to: str,
    worker: str,
    attempt: int,
    error: str,
    last_step: dict[str, Any] | None = None,
) -> bool:
    """IN_PROGRESS -> ``to`` for the owner ``worker``/``attempt``, storing ``last_step`` with it.

    False when the run is no longer this attempt's (cancelled, or taken over after a lost
    lease): then nothing is written.
    """
    if RunStatus.IN_PROGRESS not in ALLOWED_SOURCES.get(to, ()):
        raise IllegalTransition(f"IN_PROGRESS -> {to} is not allowed")
    params = {
        "run_id": run_id,
        "to": to,
        "worker": worker,
        "attempt": attempt,
        "error": error,
        "step": _step_json(last_step),
    }
    with connection.cursor() as cursor:
        _FINISH.execute(cursor, params)
        return cursor.fetchone()[0] == 1


def claim_run(
    run_id: int, *, worker: str, lease_seconds: float, takeover_from: str = ""
) -> Claim | None:
    """QUEUED (or IN_PROGRESS with a lapsed lease) -> IN_PROGRESS, owned by ``worker``.

    ``takeover_from`` names an owner known to be dead, whose live-looking lease may be taken
    over. One statement, so of two workers holding the same message only one can win.
    """
    with connection.cursor() as cursor:
        _CLAIM.execute(
            cursor,
            {
                "run_id": run_id,
                "worker": worker,
                "lease": lease_seconds,
                "takeover_from": takeover_from or None,
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    attempt, definition, context = row
    return Claim(run_id, attempt, _json(definition), _json(context))


def _json(value: Any) -> Any:
    # Django registers jsonb to come back as text from raw cursors.
    return json.loads(value) if isinstance(value, str) else value


_RENEW_SQL = """
UPDATE runs_testrun SET lease_expires_at = now() + make_interval(secs => %(lease)s)
 WHERE id = %(run_id)s AND status = 'IN_PROGRESS' AND worker = %(worker)s
   AND attempt = %(attempt)s
"""


def renew_lease(run_id: int, *, worker: str, attempt: int, lease_seconds: float) -> bool:
    """Extend the lease of a run this worker still owns; False when it lost it (or cancelled)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _RENEW_SQL,
            {"run_id": run_id, "worker": worker, "attempt": attempt, "lease": lease_seconds},
        )
        return cursor.rowcount == 1
