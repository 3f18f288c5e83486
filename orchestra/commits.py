"""Writes that need not wait for the WAL flush: hints whose loss in a database crash is harmless
or repaired (a run's ``dispatched_at``, a throttle's counter)."""

from __future__ import annotations

from django.db import connection

_ASYNC_COMMIT_SQL = "SET LOCAL synchronous_commit = off;"


def without_flush_wait(sql: str) -> str:
    """``sql`` committing without waiting for the WAL flush when it runs as its own (implicit)
    transaction, in the same round trip; inside a transaction that transaction's commit decides
    and its durability is left alone."""
    return _ASYNC_COMMIT_SQL + sql if connection.get_autocommit() else sql
