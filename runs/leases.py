"""Who owns a running run: worker identity, liveness of an owner, and the lease heartbeat.

A claimed run carries ``worker = "host:pid"`` and a lease that a heartbeat thread in the owning
process extends while the run executes. Another delivery of the same message is a duplicate as
long as that owner is alive; it may take the run over only when the lease lapsed or the owner is
known to be gone (same host, process dead; or the owner is this very process, which runs one task
at a time and so is not executing it any more).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager

from django.conf import settings
from django.db import DatabaseError, connection

from runs.states import renew_lease

logger = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()


def worker_identity() -> str:
    """This process's process code: ``host:pid``."""
    return f"{HOSTNAME}:{os.getpid()}"


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
    """True when ``owner`` certainly no longer executes its run (see the module docstring)."""
    host, _, pid_text = owner.rpartition(":")
    if host != HOSTNAME or not pid_text.isdigit():
        return False  # another host: only the lease can tell
    pid = int(pid_text)
    return pid == os.getpid() or not _process_alive(pid)


class LeaseKeeper:
    """One daemon thread per process that renews the lease of the run being executed.

    It wakes every third of the lease; a renewal that matches no row means the run was cancelled
    or taken over, which it reports through :attr:`lost` so the executor stops before its next
    step. It uses its own database connection (Django connections are per thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._current: tuple[int, str, int] | None = None
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None
        self.lost = False

    @property
    def lease_seconds(self) -> float:
        return settings.ORCHESTRA_RUN_LEASE_SECONDS

    @contextmanager
    def hold(self, run_id: int, worker: str, attempt: int):
        """Keep the lease of ``run_id`` alive for the duration of the ``with`` block."""
        self._ensure_thread()
        with self._lock:
            self._current = (run_id, worker, attempt)
            self.lost = False
        try:
            yield self
        finally:
            with self._lock:
                self._current = None

    def _ensure_thread(self) -> None:
        # After a fork the thread does not exist in the child: start one per process.
        if self._thread is None or self._thread_pid != os.getpid() or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
            self._thread_pid = os.getpid()
            self._thread.start()

    def _loop(self) -> None:
        interval = self.lease_seconds / 3
        held_since: tuple[int, str, int] | None = None
        while True:
            self._wake.wait(interval)
            with self._lock:
                current = self._current
            if current is None:
                held_since = None
                continue
            if current != held_since:
                # Freshly claimed runs already have a full lease; renew from the next tick.
                held_since = current
                continue
            still_owned = self._renew(*current)
            if still_owned is False:
                with self._lock:
                    if self._current == current:
                        self.lost = True

    def _renew(self, run_id: int, worker: str, attempt: int) -> bool | None:
        """Renew the lease; None when the database could not be reached (twice in a row).

        A connection the server dropped fails the first try; the second goes out at once on a
        new connection, so a lease is not left to run down for a whole interval.
        """
        for try_number in (1, 2):
            try:
                return renew_lease(
                    run_id, worker=worker, attempt=attempt, lease_seconds=self.lease_seconds
                )
            except DatabaseError:
                connection.close()
                if try_number == 2:
                    logger.warning("could not renew the lease of run %s", run_id, exc_info=True)
        return None


lease_keeper = LeaseKeeper()
