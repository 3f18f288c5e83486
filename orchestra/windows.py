"""Counters in fixed time windows, shared by every process on every host.

A count is one atomic operation of the shared store: with Redis configured
(``ORCHESTRA_REDIS_URL``) ``INCR`` on a key per window; otherwise one upsert in PostgreSQL,
whose row lock orders concurrent callers and whose clock sets the window for every host. The
API's throttles and the health answer's "who probes now" are built on it.
"""

from __future__ import annotations

import hashlib
import random
import time

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import DatabaseError, connection
from redis.exceptions import RedisError

from orchestra.commits import without_flush_wait

# What an unreachable store raises: callers decide whether to go on without it.
STORE_ERRORS = (DatabaseError, RedisError)

# One request in this many also deletes expired counters, so the table holds about one row
# per client seen in the last window.
_PRUNE_ONE_IN = 100

_COUNT_SQL = """
INSERT INTO orchestra_throttle_window AS t (key, window_index, count, expires_at)
SELECT %(key)s, w.i, 1, to_timestamp((w.i + 1) * %(duration)s)
  FROM (SELECT floor(extract(epoch FROM clock_timestamp()) / %(duration)s)::bigint AS i) w
ON CONFLICT (key) DO UPDATE
   SET count = CASE WHEN t.window_index >= EXCLUDED.window_index THEN t.count + 1 ELSE 1 END,
       window_index = greatest(t.window_index, EXCLUDED.window_index),
       expires_at = greatest(t.expires_at, EXCLUDED.expires_at)
RETURNING count, extract(epoch FROM expires_at - clock_timestamp())
"""
_PRUNE_SQL = """
DELETE FROM orchestra_throttle_window
 WHERE key IN (SELECT key FROM orchestra_throttle_window WHERE expires_at < now() LIMIT 1000)
"""


def count_in_window(key: str, duration: int) -> tuple[int, float]:
    """Count one request under ``key``; return the requests counted in the current window
    (this one included) and the seconds until the window ends."""
    if len(key) > 200:  # an address from X-Forwarded-For is as long as a client wants
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    if isinstance(caches["default"], RedisCache):
        return _count_in_redis(key, duration)
    return _count_in_postgresql(key, duration)


def _count_in_redis(key: str, duration: int) -> tuple[int, float]:
    now = time.time()
    window = int(now // duration)
    window_key = f"{key}:{window}"
    cache = caches["default"]
    cache.add(window_key, 0, timeout=duration + 1)
    return cache.incr(window_key), (window + 1) * duration - now


def _count_in_postgresql(key: str, duration: int) -> tuple[int, float]:
    with connection.cursor() as cursor:
        # A count need not wait for the WAL flush: lost in a database crash, it only lets one
        # window's requests through again. Waiting, every request of one client queued on the
        # counter's row lock behind the flush of the request before it.
        cursor.execute(without_flush_wait(_COUNT_SQL), {"key": key, "duration": duration})
        count, remaining = cursor.fetchone()
        if random.randrange(_PRUNE_ONE_IN) == 0:
            cursor.execute(_PRUNE_SQL)
    return count, float(remaining)
