from __future__ import annotations

import copy
import hmac
import threading
import time

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, TokenAuthentication

#: Tokens :class:`CachedTokenAuthentication` remembers per process; beyond, the oldest go.
TOKEN_CACHE_SIZE = 1024


class CachedTokenAuthentication(TokenAuthentication):
    """DRF's ``Authorization: Token <key>``, with key -> user remembered in this process for
    ``ORCHESTRA_API_TOKEN_CACHE_SECONDS`` (0: never), permissions included: a request of a
    known token costs no query for its user and role.

    Hence a deleted token, a deactivated user or a changed role takes effect within that many
    seconds in every process, not at once. Each request gets its own copy of the user.
    """

    _lock = threading.Lock()
    _known: dict[str, tuple[float, object]] = {}

    def authenticate_credentials(self, key):
        ttl = settings.ORCHESTRA_API_TOKEN_CACHE_SECONDS
        now = time.monotonic()
        with self._lock:
            known = self._known.get(key)
        if known is not None and known[0] > now:
            user, token = known[1]
            return copy.copy(user), token
        user, token = super().authenticate_credentials(key)
        if ttl > 0:
            # Loaded now so that the copy cached carries them: RolePermission reads them.
            user.get_all_permissions()
            with self._lock:
                self._known.pop(key, None)
                while len(self._known) >= TOKEN_CACHE_SIZE:
                    self._known.pop(next(iter(self._known)))
                self._known[key] = (now + ttl, (copy.copy(user), token))
        return user, token

    @classmethod
    def forget_all(cls) -> None:
        """Drop every remembered token of this process (tests; a revocation that can't wait)."""
        with cls._lock:
            cls._known.clear()


class MetricsScraper(AnonymousUser):
    """The Prometheus scraper: may read metrics, nothing else."""

    is_authenticated = True

    def has_perm(self, perm, obj=None) -> bool:
        return perm == "runs.view_testrun"


class MetricsTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <ORCHESTRA_METRICS_TOKEN>``, when that setting is not empty."""

    def authenticate(self, request):
        expected = settings.ORCHESTRA_METRICS_TOKEN
        header = request.headers.get("Authorization", "")
        if not expected or not header.startswith("Bearer "):
            return None
        if hmac.compare_digest(header.removeprefix("Bearer ").encode(), expected.encode()):
            return MetricsScraper(), None
        return None


class MetricsTokenScheme(OpenApiAuthenticationExtension):
    """Documents the scrape token in the OpenAPI schema."""

    target_class = MetricsTokenAuthentication
    name = "metricsToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "ORCHESTRA_METRICS_TOKEN"}
