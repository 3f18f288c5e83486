"""Rate limits shared by every web process on every host.

DRF's ``SimpleRateThrottle`` reads a list of timestamps from the cache, appends and writes it
back: two processes that read at once both accept, so N processes let N times the rate through.
Here a request is counted by one atomic operation of the shared store
(:func:`orchestra.windows.count_in_window`), in fixed windows of the rate's duration: at most
``num_requests`` requests of one client are accepted per window, by all processes together.
"""

from __future__ import annotations

import logging
import math

from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import SimpleRateThrottle

from orchestra.windows import STORE_ERRORS, count_in_window

logger = logging.getLogger(__name__)


class SharedRateThrottle(SimpleRateThrottle):
    """A ``SimpleRateThrottle`` whose counting is :func:`count_in_window`."""

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        try:
            count, self.remaining = count_in_window(key, self.duration)
        except STORE_ERRORS:
            # Without its store a limit cannot be counted; refusing every request would turn
            # an outage of the cache into an outage of the API.
            logger.warning("throttle %s: the shared store is unreachable", self.scope)
            return True
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
