"""Rate limits shared by every web process on every host.

DRF's ``SimpleRateThrottle`` reads a list of timestamps from the cache, appends and writes it
back: two processes that read at once both accept, so N processes let N times the rate through.
Here a request is counted by one atomic operation of the shared store, in fixed windows of the
rate's duration: at most ``num_requests`` requests of one client are accepted per window, by
all processes together. With Redis configured (``ORCHESTRA_REDIS_URL``) that is ``INCR`` on a
key per window; otherwise it is one upsert in PostgreSQL, whose row lock orders concurrent
requests and whose clock sets the window for every host.
"""

from __future__ import annotations

import hashlib
import math
import random
import time

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import SimpleRateThrottle

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
        cursor.execute(_COUNT_SQL, {"key": key, "duration": duration})
        count, remaining = cursor.fetchone()
        if random.randrange(_PRUNE_ONE_IN) == 0:
            cursor.execute(_PRUNE_SQL)
    return count, float(remaining)


class SharedRateThrottle(SimpleRateThrottle):
    """A ``SimpleRateThrottle`` whose counting is :func:`count_in_window`."""

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        count, self.remaining = count_in_window(key, self.duration)
        return count <= self.num_requests

    def wait(self) -> float:
        # At least a second: Retry-After is whole seconds, and 0 would invite a retry storm.
        return max(1.0, math.ceil(self.remaining))


class WriteRateThrottle(SharedRateThrottle):
    """Limits writes per user (rate ``writes`` in REST_FRAMEWORK); reads are not throttled."""

    scope = "writes"

    def get_cache_key(self, request, view) -> str | None:
        if request.method in SAFE_METHODS:
            return None
        ident = request.user.pk if request.user and request.user.is_authenticated else None
        if ident is None:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class AnonRateThrottle(SharedRateThrottle):
    """Limits anonymous calls per client address (rate ``anon``); the address is REMOTE_ADDR,
    or the client's entry of X-Forwarded-For behind ``NUM_PROXIES`` trusted proxies."""

    scope = "anon"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}



