"""Who owns a running run: the claim, liveness of an owner, and the lease heartbeat.

**The claim is the fence.** Claiming a run (``states.claim_run``) increments its ``attempt`` and
records the owner (``worker = "host:pid"``); ``(worker, attempt)`` names that one claim and no
other, whatever the pool (prefork, threads, gevent) or host. Every write of the executor is a
statement conditional on the run still being IN_PROGRESS under that claim: renewing the lease,
storing a step (``FOR SHARE`` on the run row, so a takeover and a stale insert serialise) and
finishing the run. A worker that was paused past its lease (SIGSTOP, a long GC, a frozen VM) and
resumes is refused by the database; it also checks the claim before each step and before each
try of a step (the executor's ``_still_owned``: storing the step before answers it, else the claim
is read), so it sends nothing more once another worker took the run.

**Who may claim a run that is IN_PROGRESS.** Another delivery of the same message is a duplicate
while the claim is alive. It may take the run over when

- the lease lapsed (the owner stopped renewing: dead, paused, partitioned), or
- the owner is known to be gone (``owner_is_gone``: same host, process dead; a fast path that
  saves waiting for the lease; never a fence, the attempt still changes), or
- the claim is held by an earlier try of this very message: the run records the Celery task id
  and retry number of the delivery that claimed it, and a Celery retry (``autoretry_for``) of
  that message, which has the same task id and a higher retry number, may take it over at once,
  in whichever process it lands. This is safe because Celery publishes the retry only after the
  try that failed has ended. A redelivery of the same message by the broker (a closed channel,
  a lost connection) carries the same retry number and is not recognised: the try it duplicates
  may still be running.

**The lease keeper** (one daemon thread per process, its own database connection) renews every
held lease each third of the lease and, between renewals, checks about every second whether a
cancel was requested or the claim lost. Either sets the lease's ``stop`` event, which plugins
wait on (``StepContext.stop``), so a waiting step ends at once. It also stops a run whose time
budget ran out without Celery's soft time limit getting through (a plugin that swallowed it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connection

import celeryconfig
from runs.states import LeaseState, lease_state, renew_lease

logger = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()

# Why a run stops early: stored in its error and its interrupted step.
CANCELLED = "cancelled"
TIME_LIMIT = "time limit"
LOST = "lease lost"

# How often the keeper looks for a cancel request or a lost claim between renewals.
CHECK_INTERVAL = 1.0
# Seconds after the claim during which the executor need not check it again.
FRESH_CLAIM = 0.5
# The keeper's own time budget check fires this much after the budget: Celery's soft time
# limit, sent at the same moment, comes first and is the normal way a run is interrupted.
BUDGET_BACKSTOP = 2.0


def worker_identity() -> str:
    """This process's process code: ``host:pid``."""
    return f"{HOSTNAME}:{os.getpid()}"


@dataclass(frozen=True)
class Delivery:
    """The Celery message being executed: its task id, retry number and time limits (those
    Celery enforces are the ones in the message)."""

    task_id: str = ""
    retries: int = 0
    time_limit: float = celeryconfig.task_time_limit
    soft_time_limit: float = celeryconfig.task_soft_time_limit

    @property
    def budget_seconds(self) -> float:
        return celeryconfig.run_time_budget(self.time_limit, self.soft_time_limit)

    @property
    def after_budget_seconds(self) -> float:
        """How long after the budget the finally steps may still run: up to a second before
        the hard limit, leaving that second to store the final status."""
        return max(0.0, self.time_limit - self.budget_seconds - 1)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child that its parent has not reaped yet still answers signal 0.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def owner_is_gone(owner: str) -> bool:
    """True when ``owner`` certainly no longer executes anything: same host, process dead."""
    host, _, pid_text = owner.rpartition(":")
    if host != HOSTNAME or not pid_text.isdigit():
        return False  # another host: only the lease can tell
    return int(pid_text) != os.getpid() and not _process_alive(int(pid_text))


def finally_grace() -> float:
    """Seconds the ``finally`` steps get after a cancel or a time limit."""
    return settings.ORCHESTRA_FINALLY_GRACE_SECONDS


class Lease:
    """One claim held by this process, and why (if at all) its run must stop now."""

    def __init__(self, run_id: int, worker: str, attempt: int, budget_seconds: float) -> None:
        self.run_id = run_id
        self.worker = worker
        self.attempt = attempt
        self.budget_ends = time.monotonic() + budget_seconds
        self.stop = threading.Event()
        self.reason = ""
        self._seen: set[str] = set()
        self._cleaning = False
        self._lock = threading.Lock()
        self.claimed = self.renewed = time.monotonic()

    @property
    def lost(self) -> bool:
        return self.reason == LOST

    def halt(self, reason: str) -> None:
        """Stop the run for ``reason``; each reason counts once, a lost claim overrides all."""
        with self._lock:
            if reason in self._seen:
                return
            self._seen.add(reason)
            if not self.reason or reason == LOST:
                self.reason = reason
            if reason == LOST or not self._cleaning:
                self.stop.set()

    def for_cleanup(self) -> None:
        """A fresh ``stop`` for the ``finally`` steps: only a lost claim stops them now (a
        cancel or time limit is still noted in ``reason``)."""
        with self._lock:
            self._cleaning = True
            self.stop = threading.Event()
            if self.lost:
                self.stop.set()

    def fresh(self) -> bool:
        """Claimed a moment ago: the claim itself is the check. The monotonic clock goes on
        while a process is stopped, so a worker paused in between checks the database."""
        return time.monotonic() - self.claimed < FRESH_CLAIM

    def note(self, state: LeaseState) -> None:
        if state is LeaseState.LOST:
            self.halt(LOST)
        elif state is LeaseState.CANCEL_REQUESTED:
            self.halt(CANCELLED)


def _renew(lease: Lease) -> LeaseState:
    state = renew_lease(
        lease.run_id,
        worker=lease.worker,
        attempt=lease.attempt,
        lease_seconds=settings.ORCHESTRA_RUN_LEASE_SECONDS,
        cancel_grace=finally_grace() + settings.ORCHESTRA_RUN_LEASE_SECONDS,
    )
    lease.renewed = time.monotonic()
    return state


class LeaseKeeper:
    """One daemon thread per process that keeps the leases of the runs it executes alive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[tuple[int, int], Lease] = {}
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None

    @contextmanager
    def hold(self, run_id: int, worker: str, attempt: int, *, budget_seconds: float):
        """Keep the lease of this claim alive for the duration of the ``with`` block."""
        lease = Lease(run_id, worker, attempt, budget_seconds)
        self._ensure_thread()
        with self._lock:
            self._leases[(run_id, attempt)] = lease
        try:
            yield lease
        finally:
            with self._lock:
                self._leases.pop((run_id, attempt), None)

    def _ensure_thread(self) -> None:
        # After a fork the thread does not exist in the child: start one per process.
        if self._thread is None or self._thread_pid != os.getpid() or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
            self._thread_pid = os.getpid()
            self._thread.start()

    def _loop(self) -> None:
        renew_every = settings.ORCHESTRA_RUN_LEASE_SECONDS / 3
        idle_since = time.monotonic()
        while True:
            time.sleep(min(CHECK_INTERVAL, renew_every))
            with self._lock:
                leases = list(self._leases.values())
            if leases:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > settings.ORCHESTRA_RUN_LEASE_SECONDS:
                # An idle worker holds no connection of its own open (nor a database that
                # someone wants to drop); the next lease opens one again.
                connection.close()
            for lease in leases:
                if time.monotonic() > lease.budget_ends + BUDGET_BACKSTOP:
                    lease.halt(TIME_LIMIT)
                renew = time.monotonic() - lease.renewed >= renew_every
                state = self._check(lease, renew=renew)
                if state is not None:
                    lease.note(state)

    def _check(self, lease: Lease, *, renew: bool) -> LeaseState | None:
        """Renew (or only read) the claim; None when the database could not be reached twice.

        A connection the server dropped fails the first try; the second goes out at once on a
        new connection, so a lease is not left to run down for a whole interval.
        """
        for try_number in (1, 2):
            try:
                if renew:
                    return _renew(lease)
                return lease_state(lease.run_id, worker=lease.worker, attempt=lease.attempt)
            except DatabaseError:
                connection.close()
                if try_number == 2:
                    logger.warning(
                        "could not check the lease of run %s", lease.run_id, exc_info=True
                    )
        return None


lease_keeper = LeaseKeeper()
