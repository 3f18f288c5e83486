from __future__ import annotations

from django.http import HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from orchestra.api.authentication import MetricsTokenAuthentication
from orchestra.api.exceptions import error_body
from orchestra.api.serializers import ErrorSerializer, HealthSerializer
from orchestra.api.throttling import AnonRateThrottle
from orchestra.health import cached_health
from orchestra.metrics import OrchestraCollector

API_RESOURCES = {
    "scenarios": "scenario-list",
    "runs": "run-list",
    "queue": "queue-record-list",
    "dead-letters": "dead-letter-list",
    "rate-keys": "rate-key-list",
    "plugins": "plugins",
    "health": "health",
    "schema": "schema",
    "docs": "docs",
    "redoc": "redoc",
}


class ApiRootView(APIView):
    """The API's resources and where they live."""

    @extend_schema(
        responses={
            200: OpenApiResponse(
                inline_serializer(
                    "ApiRoot",
                    {name: serializers.URLField() for name in API_RESOURCES},
                ),
                "The URL of each resource.",
            ),
            401: OpenApiResponse(ErrorSerializer, "Not authenticated."),
            403: OpenApiResponse(ErrorSerializer, "Your role does not allow this."),
        }
    )
    def get(self, request):
        return Response(
            {name: reverse(route, request=request) for name, route in API_RESOURCES.items()}
        )


class HealthView(APIView):
    """Database and broker reachability and the number of workers, checked at most every few
    seconds (orchestra.health); needs no credentials, reveals nothing else, and is throttled
    per client address (rate ``anon``)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_classes = [AnonRateThrottle]

    @extend_schema(
        responses={
            200: HealthSerializer,
            429: OpenApiResponse(ErrorSerializer, "Too many calls; see Retry-After."),
            503: HealthSerializer,
        }
    )
    def get(self, request):
        result = cached_health()
        return Response(result, status=200 if result["status"] == "ok" else 503)


class MetricsView(APIView):
    """Prometheus metrics (text exposition format) for authenticated viewers and operators,
    or for a scraper presenting ``Authorization: Bearer $ORCHESTRA_METRICS_TOKEN``."""

    # The token authentication comes first so that a missing credential answers 401.
    authentication_classes = [
        *api_settings.DEFAULT_AUTHENTICATION_CLASSES,
        MetricsTokenAuthentication,
    ]
    throttle_classes: list = []

    @extend_schema(
        responses={
            (200, "text/plain"): OpenApiTypes.STR,
            401: OpenApiResponse(ErrorSerializer, "Not authenticated."),
            403: OpenApiResponse(ErrorSerializer, "Your role does not allow this."),
        }
    )
    def get(self, request):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(OrchestraCollector())
        return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def not_found(request, exception=None):
    """``handler404``: a URL under /api/ that matches no route (``/api/runs/1.5/``) answers in
    the API's error shape like every other API error; other paths get Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return page_not_found(request, exception)


# The API docs pages may load nothing from another server: Swagger UI and ReDoc come from our
# static files (drf-spectacular-sidecar), and ReDoc's bundle would still fetch its logo from a
# CDN, which this policy stops (the bundle then hides the logo). Both pages configure themselves
# with inline scripts and styles; ReDoc's search runs in a worker made from a blob.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:"
)


class _SelfContained:
    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
        return response


class SwaggerView(_SelfContained, SpectacularSwaggerView):
    """Swagger UI at /api/docs/, loading only from this server."""


class RedocView(_SelfContained, SpectacularRedocView):
    """ReDoc at /api/redoc/, loading only from this server (and without web fonts)."""

    template_name = "orchestra/redoc.html"
