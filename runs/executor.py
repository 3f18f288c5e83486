"""Executes a claimed TestRun: steps in order through their plugins, each result committed.

The flow for one delivery of a run's message:

1. claim the run (``states.claim_run``): a duplicate or stale delivery claims nothing and is
   dropped; a run claimed more often than ``ORCHESTRA_MAX_DELIVERY_ATTEMPTS`` is given up, one
   whose previous attempt ran out of time ends ERROR "time limit" without executing;
2. run the main steps, then the ``finally`` steps, holding the lease meanwhile (fenced by the
   claim, see ``runs.leases``); each step's result is committed when the step ends (the last one
   together with the run's final status);
3. write the final status, conditional on still owning the run, and send ``run_finished``.

**Rate keys.** Before each try the step takes a permit for its rate key (``rate_key``, else the
plugin's ``rate_target``) from ``targets.throttle``. A wait up to
``ORCHESTRA_THROTTLE_SLEEP_SECONDS`` sleeps in the step (on ``lease.stop``); a longer one parks
the run (``states.park_run``): its message is acked, no worker slot is held, and the sweep
publishes it again at its ``resume_at``; it continues at the step it stopped on. A run with a
capture that holds secret material (it would be stored raw) or an open resource or listener
(it lives in this process) cannot park: it waits in place, and so do ``finally`` steps and
later tries of a step. A pushback the step does not accept (``accepts_pushback``) blocks the
key for every worker and the request is sent again after the block, within the same try: it
spends neither ``retry.attempts`` nor the queue's ``max_attempts``, only the run's throttle
budget (``ORCHESTRA_MAX_THROTTLE_WAIT``, kept on the run across parks); past it the step ends
ERROR "throttled for N s by <key>". Every throttled wait is stored in the try's entry of the
step's ``tries`` (``"throttled": [{"key", "seconds", "reason"}, ...]``).

A cancel request, a lost claim or a time limit (Celery's soft limit, ``SoftTimeLimitExceeded``)
interrupts the running step through ``StepContext.stop``. After a cancel or a time limit the
``finally`` steps run within ``ORCHESTRA_FINALLY_GRACE_SECONDS`` (and before the hard limit), then
the run ends CANCELLED or ERROR; after a lost claim the worker stops without another write.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.utils import timezone

import celeryconfig
from plugins.base import Assertion, PluginError, PluginResult, ProtocolPlugin, StepContext
from plugins.jsonpaths import JsonPathError
from plugins.registry import UnknownPlugin, get_plugin
from plugins.resources import RunResources
from runs.leases import (
    CANCELLED,
    LOST,
    TIME_LIMIT,
    Delivery,
    Lease,
    finally_grace,
    lease_keeper,
    owner_is_gone,
)
from runs.models import StepResult, StepStatus, TestRun
from runs.policies import DEFAULT_RETRY_INTERVAL, run_status_from_steps, step_retry_delay
from runs.redaction import redact, redacted_in_logs
from runs.secrets import RunSecrets
from runs.signals import run_finished
from runs.states import (
    STEP_COLUMNS,
    Claim,
    LeaseState,
    RunStatus,
    claim_run,
    finish_run,
    lease_state,
    park_run,
    store_step,
)
from runs.storable import storable, storable_text
from runs.templating import TemplateError
from targets.environments import run_environment
from targets.throttle import (
    Permit,
    permit_revoked,
    permit_take,
    pushback_record,
    slot_release,
    slot_take,
    wait_note,
)

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    EXECUTED = "executed"
    DUPLICATE = "duplicate"  # finished already, or running under a live owner
    CANCELLED = "cancelled"  # a cancel requested earlier is confirmed without executing
    LOST = "lost"  # the claim was lost (taken over, or finished by the sweep): nothing written
    PARKED = "parked"  # waiting for a throttled rate key: back to QUEUED until its resume_at


class RunNotFound(LookupError):
    pass


class DeliveryLimitReached(RuntimeError):
    """The run was claimed too often (its workers kept dying); it has been marked ERROR."""


class StepNotStored(RuntimeError):
    """Neither a step's result nor its stand-in could be stored; the run ends ERROR with this."""


class _Park(Exception):
    """The step's rate key makes it wait longer than it may sleep: the run gives its slot back."""

    def __init__(self, resume_in: float, waits: list[dict]) -> None:
        super().__init__(f"parked for {resume_in:.3f} s")
        self.resume_in = resume_in
        self.waits = waits


class _Throttled(Exception):
    """The step cannot send: its throttle budget is spent, or the run was told to stop."""


#: How often a step waiting for a concurrency slot of its rate key looks again.
SLOT_POLL_SECONDS = 0.05


@dataclass
class StepRecord:
    """A step's outcome before it is stored."""

    position: int
    name: str
    plugin: str
    is_cleanup: bool
    status: str
    started_at: Any = None
    finished_at: Any = None
    duration_ms: float | None = None
    request: dict = field(default_factory=dict)
    response: dict = field(default_factory=dict)
    captures: dict = field(default_factory=dict)
    assertions: list = field(default_factory=list)
    tries: list = field(default_factory=list)
    error: str = ""

    def columns(self) -> dict[str, Any]:
        """The StepResult columns of this record."""
        return {name: getattr(self, name) for name in STEP_COLUMNS}

    def stand_in(self, exc: DatabaseError) -> StepRecord:
        """This step as ERROR, with only the database's reason: stored when the record was not."""
        return StepRecord(
            self.position,
            self.name,
            self.plugin,
            self.is_cleanup,
            StepStatus.ERROR,
            started_at=self.started_at,
            finished_at=self.finished_at,
            duration_ms=self.duration_ms,
            error=f"its result could not be stored: {_database_reason(exc)}",
        )


def _database_reason(exc: DatabaseError) -> str:
    """The database's message and its detail, fit to be stored itself."""
    first, *more = str(exc).strip().splitlines() or [""]
    lines = [first, *(line for line in more if line.startswith("DETAIL:"))]
    return storable_text(f"{type(exc).__name__}: {' '.join(lines)}")[:500]


#: Lost connections: another delivery may succeed (``runs.tasks`` retries them).
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)
_UNIQUE_VIOLATION = "23505"


def _store_step(run_id: int, worker: str, attempt: int, step: dict[str, Any]) -> LeaseState:
    """``store_step``, once more on a new connection when the first one was lost.

    A unique violation on that second try means the first was committed and only its answer
    was lost: the step is stored, so this attempt held the run.
    """
    try:
        return store_step(run_id, worker=worker, attempt=attempt, step=step)
    except TRANSIENT_DATABASE_ERRORS:
        logger.warning("run %s: connection lost storing a step; once more", run_id, exc_info=True)
        connection.close()
    try:
        return store_step(run_id, worker=worker, attempt=attempt, step=step)
    except IntegrityError as exc:
        if getattr(exc.__cause__, "pgcode", None) != _UNIQUE_VIOLATION:
            raise
        return LeaseState.HELD


def _finish_run(run_id: int, *, to: str, worker: str, attempt: int, **stored: Any) -> str | None:
    """``finish_run``, once more on a new connection when the first one was lost (whose commit,
    if it happened, the second try recognises by the run's status, owner and attempt)."""
    try:
        return finish_run(run_id, to=to, worker=worker, attempt=attempt, **stored)
    except TRANSIENT_DATABASE_ERRORS:
        logger.warning("run %s: connection lost finishing; once more", run_id, exc_info=True)
        connection.close()
    if finished := finish_run(run_id, to=to, worker=worker, attempt=attempt, **stored):
        return finished
    statuses = (to, RunStatus.CANCELLED)
    committed = TestRun.objects.filter(
        id=run_id, status__in=statuses, worker=worker, attempt=attempt, finished_at__isnull=False
    )
    return committed.values_list("status", flat=True).first()


def run_execute(*, run_id: int, worker: str, delivery: Delivery | None = None) -> Outcome:
    """Claim and execute run ``run_id`` as ``worker``; see the module docstring."""
    delivery = delivery or Delivery()
    claim_as = {
        "worker": worker,
        "lease_seconds": settings.ORCHESTRA_RUN_LEASE_SECONDS,
        "budget_seconds": delivery.budget_seconds,
        "delivery_id": delivery.task_id,
        "delivery_retries": delivery.retries,
    }
    claim = claim_run(run_id, **claim_as)
    if claim is None:
        current = TestRun.objects.filter(id=run_id).values("status", "worker").first()
        if current is None:
            raise RunNotFound(f"run {run_id} does not exist")
        if current["status"] == RunStatus.IN_PROGRESS and owner_is_gone(current["worker"]):
            claim = claim_run(run_id, **claim_as, takeover_from=current["worker"])
        if claim is None:
            logger.info("run %s: dropping duplicate delivery (%s)", run_id, current["status"])
            return Outcome.DUPLICATE

    if claim.attempt > settings.ORCHESTRA_MAX_DELIVERY_ATTEMPTS:
        message = (
            f"gave up after {claim.attempt - 1} deliveries: the worker executing it was lost "
            "each time"
        )
        _finish(run_id, worker, claim.attempt, RunStatus.ERROR, message, claim.context)
        raise DeliveryLimitReached(message)
    # Neither executes again: the attempt before was killed at its time limit, or its cancel
    # waits for a confirmation that its worker can no longer give.
    if claim.out_of_time:
        _finish(
            run_id,
            worker,
            claim.attempt,
            RunStatus.ERROR,
            _time_limit_error(delivery),
            claim.context,
        )
        return Outcome.EXECUTED
    if claim.cancel_requested:
        _finish(run_id, worker, claim.attempt, RunStatus.CANCELLED, CANCELLED, claim.context)
        return Outcome.CANCELLED

    try:
        with lease_keeper.hold(
            run_id, worker, claim.attempt, budget_seconds=claim.budget_seconds
        ) as lease:
            executor = _RunExecution(run_id, worker, claim, lease, delivery)
            with redacted_in_logs(executor.secrets.values):
                try:
                    status, error, last_record = executor.execute()
                except StepNotStored as exc:
                    status, error, last_record = RunStatus.ERROR, str(exc), None
        if executor.parked is not None:
            if _park(executor, last_record):
                return Outcome.PARKED
            # A cancel came first: the run ends CANCELLED, its last step stored.
            status, error = RunStatus.CANCELLED, CANCELLED
        if status is None:
            logger.warning("run %s: attempt %s lost its claim; stopped", run_id, claim.attempt)
            return Outcome.LOST
        finished = _finish(
            run_id, worker, claim.attempt, status, error, claim.context, last_record=last_record
        )
    except SoftTimeLimitExceeded:
        # The limit struck outside the steps (storing the final status): finish honestly; a
        # run finished meanwhile is left alone by the conditional finish.
        finished = _finish(
            run_id,
            worker,
            claim.attempt,
            RunStatus.ERROR,
            _time_limit_error(delivery),
            claim.context,
        )
    return Outcome.EXECUTED if finished else Outcome.LOST


def _park(executor: _RunExecution, last_record: StepRecord | None) -> bool:
    """Park the run (see ``states.park_run``); False when a cancel was requested meanwhile.

    A claim lost meanwhile is left alone: park_run writes nothing then, and neither does the
    finish that follows.
    """
    position, park = executor.parked
    resume = {
        "position": position,
        "captures": executor.captures,
        "waits": park.waits,
    }
    parked = park_run(
        executor.run_id,
        worker=executor.worker,
        attempt=executor.attempt,
        resume_in=park.resume_in,
        resume=resume,
        throttle_seconds=executor.throttle_used,
        last_step=last_record.columns() if last_record is not None else None,
    )
    if parked:
        logger.info(
            "run %s: parked for %.1f s at step %s", executor.run_id, park.resume_in, position
        )
    return parked


def _time_limit_error(delivery: Delivery) -> str:
    return (
        f"time limit: the run did not end within {delivery.budget_seconds:g} s "
        "(CELERY_TASK_SOFT_TIME_LIMIT)"
    )


def _finish(
    run_id: int,
    worker: str,
    attempt: int,
    status: str,
    error: str,
    context: dict,
    *,
    last_record: StepRecord | None = None,
) -> bool:
    """Store the last step and the final status in one statement; False if the run was taken.

    When the database refuses that (a ``DataError``, a constraint...), the run still ends, once:
    ERROR with the database's reason, with the last step's stand-in (or without it, if even that
    is refused); only a database that refuses even the bare status leaves the error to the task.
    A lost connection is written once more (:func:`_finish_run`; see :meth:`_RunExecution._store`).
    """
    error = storable_text(error)[:10000]
    last_step = last_record.columns() if last_record is not None else None
    try:
        finished = _finish_run(
            run_id, to=status, worker=worker, attempt=attempt, error=error, last_step=last_step
        )
    except TRANSIENT_DATABASE_ERRORS:
        raise
    except DatabaseError as exc:
        logger.exception("run %s: the final status could not be stored", run_id)
        status = RunStatus.ERROR
        error = f"the final status could not be stored: {_database_reason(exc)}"
        try:
            stand_in = last_record.stand_in(exc).columns() if last_record is not None else None
            finished = _finish_run(
                run_id, to=status, worker=worker, attempt=attempt, error=error, last_step=stand_in
            )
        except TRANSIENT_DATABASE_ERRORS:
            raise
        except DatabaseError:
            logger.exception("run %s: the last step's stand-in could not be stored", run_id)
            finished = _finish_run(
                run_id, to=status, worker=worker, attempt=attempt, error=error, last_step=None
            )
    if finished:
        transaction.on_commit(
            lambda: run_finished.send(
                sender=TestRun, run_id=run_id, status=finished, context=context
            )
        )
    return finished is not None


class _RunExecution:
    """The steps of one attempt of one run.

    Before each step and each try the claim is verified in the database; the lease's ``stop``
    event (cancel, lost claim, time limit) interrupts the running step. After a cancel or a
    time limit the ``finally`` steps still run, each within the finally grace; after a lost
    claim nothing more is sent or written.
    """

    def __init__(
        self, run_id: int, worker: str, claim: Claim, lease: Lease, delivery: Delivery
    ) -> None:
        self.run_id = run_id
        self.delivery = delivery
        self.worker = worker
        self.attempt = claim.attempt
        self.definition = claim.definition
        self.lease = lease
        context = claim.context
        env = run_environment(context.get("env"))
        credentials = env.credentials(settings.ORCHESTRA_CREDENTIALS)
        self.scope: dict[str, Any] = {
            "payload": context.get("payload", {}),
            "queueRecordId": context.get("queueRecordId"),
            "queueStartCount": context.get("queueStartCount"),
            "run": {"id": run_id, "attempt": claim.attempt},
            "credentials": credentials,
            "env": env.scope(),
        }
        secret_names = claim.definition.get("secrets", [])
        self.secrets = RunSecrets(credentials, secret_names, env_secrets=env.secrets)
        self.resources = RunResources()
        self.statuses: list[str] = []
        self.failures: list[StepRecord] = []
        self.pending: StepRecord | None = None
        #: Where this attempt continues a parked run, and what it parked with.
        self.resume = claim.resume
        self.throttle_used = claim.throttle_seconds
        #: The captures of the steps that passed, kept for a park.
        self.captures: dict[str, Any] = {}
        #: (position, _Park) when the run must park.
        self.parked: tuple[int, _Park] | None = None
        #: Until its first permit, a resumed run may wait in place one sweep interval longer.
        self.released_by_sweep = claim.resume is not None
        # No finally step may outlast the hard time limit: the final status must still be written.
        self.hard_deadline = lease.budget_ends + delivery.after_budget_seconds

    def execute(self) -> tuple[str | None, str, StepRecord | None]:
        """Run every step; return (run status, error text, the last, not yet stored, record).

        The status is None when the claim was lost: the caller writes nothing. The run's
        resources and listeners are closed whatever the ending.
        """
        try:
            return self._execute_steps()
        finally:
            for error in self.resources.close_all():
                logger.warning("run %s: %s", self.run_id, redact(error, self.secrets.values))

    def _execute_steps(self) -> tuple[str | None, str, StepRecord | None]:
        try:
            self._render_variables()
        except TemplateError as exc:
            return RunStatus.ERROR, redact(f"variables: {exc}", self.secrets.values), None

        steps = self.definition["steps"]
        first = self._resumed() if self.resume else 0
        try:
            self._run_main_steps(steps, first)
        except SoftTimeLimitExceeded:
            self.lease.halt(TIME_LIMIT)
        if self.parked is not None:
            return None, "parked", self.pending
        halted = self.lease.reason
        if halted == LOST:
            return None, LOST, None
        cleanup_deadline = self.hard_deadline
        if halted:
            cleanup_deadline = min(self.hard_deadline, time.monotonic() + finally_grace())
        try:
            self._run_cleanup_steps(len(steps), cleanup_deadline)
        except SoftTimeLimitExceeded:
            self.lease.halt(TIME_LIMIT)
        if self.lease.lost:
            return None, LOST, None

        if self.lease.reason == CANCELLED:
            return RunStatus.CANCELLED, CANCELLED, self.pending
        if self.lease.reason == TIME_LIMIT:
            return RunStatus.ERROR, _time_limit_error(self.delivery), self.pending
        status = run_status_from_steps(self.statuses)
        error = "; ".join(f"{r.name}: {r.error}" for r in self.failures if r.error)
        return status, error, self.pending

    def _resumed(self) -> int:
        """Take up a parked run: the captures and outcomes of the steps before the one it
        parked on (stored under this attempt); returns that step's position."""
        position = self.resume["position"]
        captures = self.resume.get("captures", {})
        self.secrets.captured(captures)
        self.scope.update(captures)
        self.captures.update(captures)
        earlier = StepResult.objects.filter(
            run_id=self.run_id, attempt=self.attempt, position__lt=position
        ).order_by("position")
        for name, plugin, status, error in earlier.values_list("name", "plugin", "status", "error"):
            self.statuses.append(status)
            if status in (StepStatus.FAILED, StepStatus.ERROR):
                self.failures.append(StepRecord(0, name, plugin, False, status, error=error))
        return position

    def _may_park(self) -> bool:
        """Whether the run can be given back while it waits: nothing it holds would be lost
        (an open resource or listener) or stored raw (a capture holding secret material)."""
        if not self.resources.is_empty():
            return False
        return redact(self.captures, self.secrets.values) == self.captures

    def _run_main_steps(self, steps: list[dict], first: int = 0) -> None:
        skip_reason = ""
        for position, step in enumerate(steps):
            if position < first:
                continue  # executed before the run parked; its result is stored
            if not skip_reason and not self._still_owned():
                skip_reason = f"skipped: run stopped ({self.lease.reason})"
            if self.lease.lost:
                return
            if skip_reason:
                self._record(self._skipped(position, step, False, skip_reason))
                continue
            try:
                record = self._run_step(position, step, is_cleanup=False)
            except _Park as park:
                if self._still_owned():
                    self.parked = (position, park)
                    return
                if self.lease.lost:
                    return
                record = self._skipped(
                    position, step, False, f"skipped: run stopped ({self.lease.reason})"
                )
            self._record(record)
            if self.lease.reason:
                skip_reason = f"skipped: run stopped ({self.lease.reason})"
            elif record.status != StepStatus.PASSED and not step.get("continue_on_failure"):
                skip_reason = f"skipped: step {step['name']!r} {record.status.lower()}"

    def _run_cleanup_steps(self, first_position: int, deadline: float) -> None:
        self.lease.for_cleanup()
        for offset, step in enumerate(self.definition.get("finally", [])):
            position = first_position + offset
            self._still_owned()
            if self.lease.lost:
                return
            if time.monotonic() >= deadline:
                why = self.lease.reason or TIME_LIMIT
                reason = f"skipped: no time left for finally steps ({why})"
                self._record(self._skipped(position, step, True, reason))
                continue
            self._record(self._run_step(position, step, is_cleanup=True, deadline=deadline))

    def _record(self, record: StepRecord) -> None:
        # Every step is committed when the next one starts; the last is stored with the final
        # status by the caller, saving one commit per run.
        self._store_pending()
        self.pending = record
        self.statuses.append(record.status)
        if record.status in (StepStatus.FAILED, StepStatus.ERROR):
            self.failures.append(record)

    def _store_pending(self) -> None:
        if self.pending is None or self.lease.lost:
            return
        state = self._store(self.pending)
        self.pending = None
        self.lease.note(state)

    def _still_owned(self) -> bool:
        """Verify the claim in the database; False when the run must stop.

        Storing the pending step answers it in the same round trip; with nothing pending
        (before a further try of a step) the claim is read, unless it was made a moment ago.
        """
        if self.pending is not None:
            self._store_pending()
        elif not self.lease.lost and not self.lease.fresh():
            self.lease.note(lease_state(self.run_id, worker=self.worker, attempt=self.attempt))
        return not self.lease.reason

    def _store(self, record: StepRecord) -> LeaseState:
        """Store ``record``, the latest step (``self.statuses[-1]`` is its status), if this
        attempt still holds the run; the claim's state (LOST: not stored).

        A result the database refuses (a ``DataError`` despite :func:`runs.storable.storable`,
        a constraint...) is replaced by its stand-in, ERROR with the database's reason, and the
        run goes on: the step did execute, later steps may rely on it and ``finally`` steps
        still clean up; the run ends ERROR with that reason, once. Only when the stand-in is
        refused too does the run end at once (:class:`StepNotStored`). Never is such an error
        left to the task, which would dead-letter the message while the run stays IN_PROGRESS,
        for the sweep to execute it against the target again once its lease lapsed.

        A lost connection (``OperationalError``, ``InterfaceError``) is different. The write is
        tried once more at once, on a new connection: a dropped connection (a database or pooler
        restart, a failover) costs nothing, and the steps that already ran against the target are
        not run again. When the database stays away, nothing can be written, not even ERROR: the
        error propagates and the task retries the delivery. That is the path of a worker lost
        mid-run, and the next attempt executes the run again, because only the database could
        have remembered how far this one got, and it is the thing that is gone.
        """
        try:
            return _store_step(self.run_id, self.worker, self.attempt, record.columns())
        except TRANSIENT_DATABASE_ERRORS:
            raise
        except DatabaseError as exc:
            logger.exception("run %s: the result of step %r was refused", self.run_id, record.name)
            stand_in = record.stand_in(exc)
        try:
            state = _store_step(self.run_id, self.worker, self.attempt, stand_in.columns())
        except TRANSIENT_DATABASE_ERRORS:
            raise
        except DatabaseError as exc:
            raise StepNotStored(
                f"{record.name}: its result could not be stored: {_database_reason(exc)}"
            ) from exc
        self.statuses[-1] = stand_in.status
        self.failures = [failure for failure in self.failures if failure is not record]
        self.failures.append(stand_in)
        return state

    def _render_variables(self) -> None:
        variables = {}
        for name, value in self.definition.get("variables", {}).items():
            variables[name] = self.secrets.variable(name, value, {**self.scope, **variables})
        self.scope.update(variables)

    def _skipped(self, position: int, step: dict, is_cleanup: bool, reason: str) -> StepRecord:
        return StepRecord(
            position, step["name"], step["plugin"], is_cleanup, StepStatus.SKIPPED, error=reason
        )

    def _run_step(
        self, position: int, step: dict, *, is_cleanup: bool, deadline: float | None = None
    ) -> StepRecord:
        timeout = float(step.get("timeout", settings.ORCHESTRA_DEFAULT_STEP_TIMEOUT))
        cap = math.inf if deadline is None else deadline
        record = StepRecord(position, step["name"], step["plugin"], is_cleanup, StepStatus.ERROR)
        record.started_at = timezone.now()
        started = time.monotonic()
        try:
            if "listen" in step:
                self._listen(step, record, timeout, cap)
            if not record.error:
                self._tries(step, record, timeout, cap)
        except SoftTimeLimitExceeded:
            self.lease.halt(TIME_LIMIT)
            record.status, record.error = StepStatus.ERROR, f"interrupted: {TIME_LIMIT}"
        record.finished_at = timezone.now()
        record.duration_ms = round((time.monotonic() - started) * 1000, 2)
        if record.status == StepStatus.PASSED:
            self.secrets.captured(record.captures)
            self.scope.update(record.captures)
            self.captures.update(record.captures)
        stored = ("request", "response", "captures", "assertions", "tries", "error")
        redacted = redact([getattr(record, name) for name in stored], self.secrets.values)
        for name, value in zip(stored, storable(redacted), strict=True):
            setattr(record, name, value)
        return record

    def _tries(self, step: dict, record: StepRecord, timeout: float, cap: float) -> None:
        """The tries of one step under its ``retry`` policy, each ending by ``cap`` at the latest;
        the claim is verified before every try after the first, a stop ends them at once."""
        retry = step.get("retry", {})
        max_tries = retry.get("attempts", 1)
        interval = retry.get("interval", DEFAULT_RETRY_INTERVAL)
        backoff = retry.get("backoff", 1.0)
        resumed = self.resume and self.resume["position"] == record.position
        for try_number in range(1, max_tries + 1):
            try_started = time.monotonic()
            # A parked run continues its first try: the waits before it parked are that try's.
            waits: list[dict] = list(self.resume["waits"]) if resumed and try_number == 1 else []
            may_park = try_number == 1 and not record.is_cleanup and self._may_park()
            retryable = self._try_step(step, record, timeout, cap, waits, may_park=may_park)
            stop = self.lease.stop
            if stop.is_set():
                record.status, record.error = StepStatus.ERROR, f"interrupted: {self.lease.reason}"
            entry = {
                "try": try_number,
                "status": record.status,
                "duration_ms": round((time.monotonic() - try_started) * 1000, 2),
                "error": record.error,
            }
            if waits:
                entry["throttled"] = waits
            record.tries.append(entry)
            if record.status == StepStatus.PASSED or not retryable or try_number == max_tries:
                return
            if stop.is_set():
                return
            wait = step_retry_delay(interval=interval, backoff=backoff, failed_tries=try_number)
            if stop.wait(min(wait, max(0.0, cap - time.monotonic()))) or not self._still_owned():
                record.error = f"interrupted: {self.lease.reason}"
                return

    def _pace(
        self, key: str, waits: list[dict], cap: float, *, may_park: bool
    ) -> tuple[Permit, int | None]:
        """A permit (and a concurrency slot, if the key has a limit) to send one request on
        ``key``, after sleeping for it; raises :class:`_Park` for a wait too long to sleep
        (``may_park``), :class:`_Throttled` past the run's throttle budget or the step's
        ``cap`` (a ``finally`` step's deadline), or when stopped."""
        sleep_limit = settings.ORCHESTRA_THROTTLE_SLEEP_SECONDS
        sweep_interval = celeryconfig.beat_schedule["sweep-runs"]["schedule"]
        # A parking run asks to be released this much before its slot (the sweep may come up
        # to an interval late) and sleeps the rest in the step, never longer than a step may.
        lead = min(sweep_interval, sleep_limit)
        if self.released_by_sweep:
            # The sweep releases parked runs once per interval: a run it released may wait in
            # place that much longer, or the runs released together would park again.
            sleep_limit += sweep_interval
        while True:
            left = settings.ORCHESTRA_MAX_THROTTLE_WAIT - self.throttle_used
            until_cap = cap - time.monotonic()
            within = min(left, until_cap, sleep_limit if may_park else math.inf)
            permit = permit_take(key=key, reserve_within=within)
            wait = permit.wait if permit.reserved else permit.release_in
            if wait > until_cap:
                raise _Throttled(
                    f"throttled by {key}: its next slot is {wait:.0f} s away, after the step's "
                    "deadline"
                )
            if wait > left:
                raise _Throttled(
                    f"throttled for {self.throttle_used:.0f} s by {key}: its next slot is "
                    f"{wait:.0f} s away, past the run's throttle budget "
                    f"(ORCHESTRA_MAX_THROTTLE_WAIT {settings.ORCHESTRA_MAX_THROTTLE_WAIT:g} s)"
                )
            if not permit.reserved:
                # Released at the key's pace, each a little apart: never all at once.
                jitter = random.uniform(0, max(permit.interval, 0.05))
                resume_in = max(0.0, wait - lead) + jitter
                self.throttle_used += resume_in
                waits.append(_wait_entry(key, resume_in, f"{permit.reason or 'rate'}, parked"))
                raise _Park(resume_in, waits)
            self.released_by_sweep = False
            if wait > 0:
                self._throttle_sleep(wait)
                waits.append(_wait_entry(key, wait, permit.reason))
                if permit_revoked(permit):
                    continue  # a pushback blocked the key past this slot meanwhile
            if not permit.max_concurrent:
                return permit, None
            return permit, self._slot(permit, waits)

    def _slot(self, permit: Permit, waits: list[dict]) -> int:
        """One of the key's concurrency slots, polled for; the wait counts like any other."""
        waited = 0.0
        while (slot := slot_take(permit)) is None:
            if settings.ORCHESTRA_MAX_THROTTLE_WAIT - self.throttle_used < SLOT_POLL_SECONDS:
                raise _Throttled(
                    f"throttled for {self.throttle_used:.0f} s by {permit.key}: its "
                    f"{permit.max_concurrent} concurrent requests stayed taken"
                )
            self._throttle_sleep(SLOT_POLL_SECONDS)
            waited += SLOT_POLL_SECONDS
        if waited:
            wait_note(permit, waited)
            waits.append(_wait_entry(permit.key, waited, "concurrency"))
        return slot

    def _throttle_sleep(self, seconds: float) -> None:
        """Sleep for a rate key on the lease's ``stop`` (so a cancel still ends it at once)."""
        self.throttle_used += seconds
        if self.lease.stop.wait(seconds):
            raise _Throttled(f"interrupted: {self.lease.reason}")

    def _context(
        self, step: dict, timeout: float, deadline: float, sent: frozenset[str]
    ) -> StepContext:
        return StepContext(
            run_id=self.run_id,
            step_name=step["name"],
            timeout=timeout,
            deadline=deadline,
            stop=self.lease.stop,
            credentials_sent=sent,
            resources=self.resources,
        )

    def _listen(self, step: dict, record: StepRecord, timeout: float, cap: float) -> None:
        """Subscribe the step's ``listen`` before the step runs; a failure ends the step ERROR."""
        listen = step["listen"]
        try:
            plugin = get_plugin(listen["plugin"])
            stored = listen.get("with", {})
            params, sent = self.secrets.render(stored, self.scope, at="listen.with")
            problems = _block_problems(plugin, "listen.with", params, stored)
            if problems:
                raise PluginError("; ".join(problems))
            context = self._context(step, timeout, min(cap, time.monotonic() + timeout), sent)
            self.resources.add(listen["as"], plugin.listen(params, context))
        except (TemplateError, UnknownPlugin, PluginError) as exc:
            record.status, record.error = StepStatus.ERROR, f"listen {listen['as']}: {exc}"
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:  # a plugin bug must not take the worker down with it
            logger.exception("plugin %s crashed listening in run %s", listen["plugin"], self.run_id)
            record.status = StepStatus.ERROR
            record.error = f"listen {listen['as']}: plugin {listen['plugin']} crashed: {exc}"

    def _try_step(
        self,
        step: dict,
        record: StepRecord,
        timeout: float,
        cap: float,
        waits: list[dict],
        *,
        may_park: bool,
    ) -> bool:
        """One try, sent when the step's rate key allows (noting each wait in ``waits``) and
        sent again after a pushback the step does not accept; fills ``record`` and returns
        whether another try may change the outcome. Raises :class:`_Park` when the run must be
        given back (``may_park``) to wait."""
        record.request, record.response, record.captures, record.assertions = {}, {}, {}, []
        try:
            plugin = get_plugin(step["plugin"])
            stored_params, stored_expect = step.get("with", {}), step.get("expect", {})
            params, sent = self.secrets.render(stored_params, self.scope, at="with")
            expect, _ = self.secrets.render(stored_expect, self.scope, at="expect")
            problems = _block_problems(plugin, "with", params, stored_params)
            problems += _block_problems(plugin, "expect", expect, stored_expect)
            if problems:
                raise PluginError("; ".join(problems))
            # A key is stored as it is (RateKey.name): a host made of a secret is redacted, so
            # such steps share one (stricter) key rather than store the secret.
            key = step.get("rate_key") or plugin.rate_target(params)
            key = redact(key, self.secrets.values) if key else None
            while True:
                permit, slot = (
                    self._pace(key, waits, cap, may_park=may_park) if key else (None, None)
                )
                # The step's timeout counts from the moment it may send.
                context = self._context(step, timeout, min(cap, time.monotonic() + timeout), sent)
                try:
                    result = plugin.execute(params, context)
                finally:
                    if slot is not None:
                        slot_release(permit, slot)
                pushback = result.pushback
                if permit is None or pushback is None or plugin.accepts_pushback(expect, pushback):
                    break
                blocked = pushback_record(key=key, pushback=pushback, given_at=permit.given_at)
                waits.append(
                    {
                        "key": key,
                        "seconds": round(blocked, 3),
                        "reason": f"pushback {pushback.status}",
                        "retry_after": pushback.header,
                    }
                )
            record.request, record.response = result.request, result.response
            assertions = plugin.check(expect, result)
            assertions += self._capture(plugin, step.get("capture", {}), result, record)
        except TemplateError as exc:
            record.status, record.error = StepStatus.ERROR, f"step {step['name']!r}: {exc}"
            return False
        except (UnknownPlugin, _Throttled) as exc:
            record.status, record.error = StepStatus.ERROR, str(exc)
            return False
        except (_Park, SoftTimeLimitExceeded, DatabaseError):
            raise  # the throttle's statements: not the plugin's fault
        except PluginError as exc:
            record.status, record.error = StepStatus.ERROR, str(exc)
            record.request = exc.request
            return exc.retryable
        except Exception as exc:  # a plugin bug must not take the worker down with it
            logger.exception("plugin %s crashed in run %s", step["plugin"], self.run_id)
            record.status = StepStatus.ERROR
            record.error = f"plugin {step['plugin']} crashed: {type(exc).__name__}: {exc}"
            return False

        record.assertions = [assertion.as_dict() for assertion in assertions]
        failed = [assertion.message for assertion in assertions if not assertion.passed]
        record.status = StepStatus.FAILED if failed else StepStatus.PASSED
        record.error = "; ".join(failed)
        return bool(failed)  # expectations may hold on a later try (polling)

    def _capture(
        self, plugin, captures: dict[str, str], result: PluginResult, record: StepRecord
    ) -> list[Assertion]:
        failures = []
        for name, expression in captures.items():
            try:
                record.captures[name] = plugin.capture(expression, result)
            except JsonPathError as exc:
                failures.append(
                    Assertion(f"capture {name}", False, expression, None, f"capture {name}: {exc}")
                )
        return failures


def _wait_entry(key: str, seconds: float, reason: str) -> dict[str, Any]:
    """One throttled wait, as stored in a try's ``throttled`` list."""
    return {"key": key, "seconds": round(seconds, 3), "reason": reason or "rate"}


# Verdicts on blocks longer than this are not remembered (memory).
_REMEMBERED_BLOCK_CHARS = 4096


def _block_problems(plugin: ProtocolPlugin, block: str, value: Any, stored: Any) -> tuple[str, ...]:
    """What is wrong with a rendered ``with``/``expect`` block, each naming the field.

    A block without templates (``value is stored``) is the same for every run of its scenario:
    its verdict is remembered, by its JSON text (when short), for the life of the process.
    """
    if value is stored:
        document = json.dumps(value, sort_keys=True)
        if len(document) <= _REMEMBERED_BLOCK_CHARS:
            return _validated_document(plugin, block, document)
    return _validate(plugin, block, value)


@lru_cache(maxsize=1024)
def _validated_document(plugin: ProtocolPlugin, block: str, document: str) -> tuple[str, ...]:
    return _validate(plugin, block, json.loads(document))


def _validate(plugin: ProtocolPlugin, block: str, value: Any) -> tuple[str, ...]:
    validator = {
        "with": plugin.params_validator,
        "expect": plugin.expect_validator,
        "listen.with": plugin.listen_validator,
    }[block]
    problems = []
    for error in validator.iter_errors(value):
        path = ".".join(map(str, error.absolute_path))
        problems.append(f"{block}.{path}: {error.message}" if path else f"{block}: {error.message}")
    return tuple(problems)
