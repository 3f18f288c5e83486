"""Reachability of the database, the broker, how many workers answer, and messages that name
runs this database does not have (two deployments sharing one queue).

The check opens a broker connection and pings the workers, so it runs at most once per
``ORCHESTRA_HEALTH_CACHE_SECONDS`` window for all web processes together (the first caller of
a window, chosen by :func:`orchestra.windows.count_in_window`); every other caller reads the
answer from the shared cache. Without a reachable shared store each process checks at most
once per window for itself.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.core.cache import caches
from django.db import connection
from django.utils import timezone

from orchestra.windows import STORE_ERRORS, count_in_window

logger = logging.getLogger(__name__)

CACHE_KEY = "orchestra:health"
# How long a caller waits for the answer of the check another process is running.
_WAIT_FOR_PROBE_SECONDS = 3.0
# Dead letters naming unknown runs are counted over this many seconds.
FOREIGN_RUNS_WINDOW_SECONDS = 3600
_UNKNOWN = {
    "status": "degraded",
    "database": "unknown",
    "broker": "unknown",
    "workers": 0,
    "foreign_run_messages": 0,
    "warnings": [],
}

_local_lock = threading.Lock()
_local: dict = {}


def _database_status() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        logger.warning("health: database unreachable", exc_info=True)
        return "unreachable"
    return "ok"


def _broker_status(ping_timeout: float) -> tuple[str, int]:
    """``(reachability, workers answering a ping)``; opens one broker connection."""
    from orchestra.celery import app

    try:
        # A fresh connection, not one from the pool: a pooled connection may
        # have been closed by a broker restart since it was last used.
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            replies = app.control.ping(timeout=ping_timeout, connection=conn)
    except Exception:
        logger.warning("health: broker unreachable", exc_info=True)
        return "unreachable", 0
    return "ok", len(replies or [])


def _foreign_run_messages() -> int:
    from runs.selectors import foreign_run_dead_letter_count

    since = timezone.now() - timedelta(seconds=FOREIGN_RUNS_WINDOW_SECONDS)
    try:
        return foreign_run_dead_letter_count(since=since)
    except Exception:
        logger.warning("health: cannot count dead letters", exc_info=True)
        return 0


def health_check(*, ping_timeout: float = 0.5) -> dict:
    """``{"status", "database", "broker", "workers", "foreign_run_messages", "warnings"}``,
    checked now; never raises. Warnings do not make the status degraded: the service works."""
    database = _database_status()
    broker, workers = _broker_status(ping_timeout)
    healthy = database == "ok" and broker == "ok"
    foreign = _foreign_run_messages() if database == "ok" else 0
    warnings = []
    if foreign:
        warnings.append(
            f"{foreign} message(s) in the last hour named runs this database does not have: "
            "another orchestra deployment may share this RabbitMQ vhost (CELERY_BROKER_URL)"
        )
    return {
        "status": "ok" if healthy else "degraded",
        "database": database,
        "broker": broker,
        "workers": workers,
        "foreign_run_messages": foreign,
        "warnings": warnings,
    }


def _window(max_age: int) -> int:
    return int(time.time() // max_age)


def cached_health() -> dict:
    """The answer of :func:`health_check`, checked at most once per window by all processes."""
    max_age = max(1, int(settings.ORCHESTRA_HEALTH_CACHE_SECONDS))
    try:
        return _shared_health(max_age)
    except STORE_ERRORS:
        logger.warning("health: the shared cache is unreachable; checking per process")
        return _local_health(max_age)


def _shared_health(max_age: int) -> dict:
    cache = caches["default"]
    window = _window(max_age)
    entry = cache.get(CACHE_KEY)
    if entry and entry["window"] == window:
        return entry["result"]
    count, _remaining = count_in_window("health-check", max_age)
    if count == 1:
        result = health_check()
        # Kept past its window: while the next check runs, others answer with this one.
        cache.set(CACHE_KEY, {"window": window, "result": result}, 10 * max_age)
        return result
    if entry:
        return entry["result"]
    deadline = time.monotonic() + _WAIT_FOR_PROBE_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.05)
        entry = cache.get(CACHE_KEY)
        if entry:
            return entry["result"]
    return dict(_UNKNOWN)


def _local_health(max_age: int) -> dict:
    with _local_lock:
        # The window is read under the lock: one read before it could be older than the one a
        # check that held the lock meanwhile stored, and would check again.
        window = _window(max_age)
        if _local.get("window") != window:
            _local.update(window=window, result=health_check())
        return _local["result"]
