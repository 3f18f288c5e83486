from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication


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
