from __future__ import annotations

import django_filters
from django.db.models.functions import Now
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from orchestra.api.filters import StrictFilterSet
from orchestra.api.serializers import ErrorSerializer
from targets import selectors, services
from targets.api.serializers import (
    RateKeyConfigSerializer,
    RateKeyCreateSerializer,
    RateKeySerializer,
)
from targets.models import RateKey

ERRORS = {
    400: OpenApiResponse(ErrorSerializer, "Invalid input; `fields` names each bad field."),
    401: OpenApiResponse(ErrorSerializer, "Not authenticated."),
    403: OpenApiResponse(ErrorSerializer, "Your role does not allow this."),
    404: OpenApiResponse(ErrorSerializer, "No such object."),
}

CREATE_EXAMPLE = OpenApiExample(
    "20 requests per second, 5 at once",
    value={
        "name": "https://api.example.com:443",
        "requests": 20,
        "interval_seconds": 1,
        "burst": 5,
        "max_concurrent": 4,
    },
    request_only=True,
)
CONFIG_EXAMPLE = OpenApiExample(
    "100 requests per minute, no concurrency limit",
    value={"requests": 100, "interval_seconds": 60, "burst": 10, "max_concurrent": None},
    request_only=True,
)
KEY_EXAMPLE = OpenApiExample(
    "A key the target blocked with Retry-After",
    value={
        "id": 3,
        "name": "https://api.example.com:443",
        "requests": 20,
        "interval_seconds": 1.0,
        "burst": 5,
        "max_concurrent": 4,
        "blocked_until": "2026-12-02T03:00:30Z",
        "learned_interval_seconds": 0.1,
        "requests_total": 5120,
        "pushbacks_total": 3,
        "throttled_waits_total": 41,
        "wait_seconds_total": 37.5,
        "recent_pushbacks": [
            {
                "at": "2026-12-02T03:00:00+00:00",
                "status": 429,
                "retry_after": "30",
                "blocked_seconds": 30.0,
            }
        ],
        "last_pushback_at": "2026-12-02T03:00:00Z",
        "consecutive_pushbacks": 1,
        "use": {
            "emission_interval_seconds": 0.1,
            "requests_per_second": 10.0,
            "burst_used": 2.0,
            "next_request_in_seconds": 30.0,
            "blocked": True,
            "blocked_for_seconds": 30.0,
        },
        "created_at": "2026-12-01T09:00:00Z",
        "updated_at": "2026-12-02T03:00:00Z",
    },
    response_only=True,
)


class RateKeyFilter(StrictFilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    blocked = django_filters.BooleanFilter(
        method="filter_blocked", label="Blocked by the target now (on the database's clock)."
    )

    class Meta:
        model = RateKey
        fields = ["name", "blocked"]

    def filter_blocked(self, queryset, name, value):
        blocked = {"blocked_until__gt": Now()}
        return queryset.filter(**blocked) if value else queryset.exclude(**blocked)


@extend_schema_view(
    list=extend_schema(responses={200: RateKeySerializer(many=True), **ERRORS}),
)
class RateKeyViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Rate keys: the fleet-wide budget of requests per target (or per a step's `rate_key`),
    its configuration, its state and its use now."""

    serializer_class = RateKeySerializer
    filterset_class = RateKeyFilter

    def get_queryset(self):
        return selectors.rate_key_list()

    @extend_schema(responses={200: RateKeySerializer, **ERRORS}, examples=[KEY_EXAMPLE])
    def retrieve(self, request, pk=None):
        return Response(RateKeySerializer(self._key(pk)).data)

    @extend_schema(
        request=RateKeyCreateSerializer,
        responses={201: RateKeySerializer, **ERRORS},
        examples=[CREATE_EXAMPLE],
    )
    def create(self, request):
        """Configure a key before its first request (a key that exists already: update it)."""
        data = RateKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            key = services.rate_key_create(**data.validated_data)
        except services.RateKeyNameTaken:
            raise ValidationError({"name": ["a rate key with this name already exists"]}) from None
        return Response(RateKeySerializer(key).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=RateKeyConfigSerializer,
        responses={200: RateKeySerializer, **ERRORS},
        examples=[CONFIG_EXAMPLE],
    )
    def update(self, request, pk=None):
        """Replace the configuration; a field left out takes its default (no limit)."""
        return self._configure(request, pk, partial=False)

    @extend_schema(
        request=RateKeyConfigSerializer,
        responses={200: RateKeySerializer, **ERRORS},
        examples=[CONFIG_EXAMPLE],
    )
    def partial_update(self, request, pk=None):
        """Change the named fields of the configuration."""
        return self._configure(request, pk, partial=True)

    @extend_schema(request=None, responses={204: None, **ERRORS})
    def destroy(self, request, pk=None):
        """Forget the key; its next request creates it anew, unlimited."""
        try:
            services.rate_key_delete(rate_key_id=self._id(pk))
        except RateKey.DoesNotExist:
            raise NotFound() from None
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={200: RateKeySerializer, **ERRORS})
    @action(detail=True, methods=["post"])
    def unblock(self, request, pk=None):
        """Lift the block a target's 429 or 503 put on the key (nothing to do if none)."""
        try:
            key = services.rate_key_unblock(rate_key_id=self._id(pk))
        except RateKey.DoesNotExist:
            raise NotFound() from None
        return Response(RateKeySerializer(key).data)

    def _configure(self, request, pk, *, partial: bool) -> Response:
        key_id = self._key(pk).id
        data = RateKeyConfigSerializer(data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        try:
            key = services.rate_key_configure(rate_key_id=key_id, **data.validated_data)
        except RateKey.DoesNotExist:
            raise NotFound() from None
        return Response(RateKeySerializer(key).data)

    @staticmethod
    def _id(pk) -> int:
        try:
            return int(pk)
        except (TypeError, ValueError):
            raise NotFound() from None

    def _key(self, pk) -> RateKey:
        try:
            return selectors.rate_key_get(rate_key_id=self._id(pk))
        except RateKey.DoesNotExist:
            raise NotFound() from None
