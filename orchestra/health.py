"""Reachability of the database, the broker, and how many workers answer."""

from __future__ import annotations

import logging

from django.db import connection

logger = logging.getLogger(__name__)


def health_check(*, ping_timeout: float = 0.5) -> dict:
    """``{"status", "database", "broker", "workers"}``; never raises."""
    from orchestra.celery import app

    result = {"database": "ok", "broker": "ok", "workers": 0}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        logger.warning("health: database unreachable", exc_info=True)
        result["database"] = "unreachable"
    try:
        # A fresh connection, not one from the pool: a pooled connection may
        # have been closed by a broker restart since it was last used.
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            replies = app.control.ping(timeout=ping_timeout, connection=conn)
        result["workers"] = len(replies or [])
    except Exception:
        logger.warning("health: broker unreachable", exc_info=True)
        result["broker"] = "unreachable"
    healthy = result["database"] == "ok" and result["broker"] == "ok"
    result["status"] = "ok" if healthy else "degraded"
    return result
