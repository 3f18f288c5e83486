from __future__ import annotations

import django_filters
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from launches import reports, selectors, services
from launches.api.serializers import (
    LaunchCreateSerializer,
    LaunchDetailSerializer,
    LaunchRowSerializer,
    LaunchSerializer,
)
from launches.models import Launch
from launches.states import LaunchStatus
from orchestra.api.filters import StrictFilterSet, UtcIsoDateTimeFilter
from orchestra.api.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent
from orchestra.api.parsers import LimitedJSONParser
from runs.api.views import ERRORS
from runs.models import Priority
from runs.states import RunStatus


class LaunchFilter(StrictFilterSet):
    status = django_filters.MultipleChoiceFilter(choices=LaunchStatus.choices)
    priority = django_filters.ChoiceFilter(choices=Priority.choices)
    environment = django_filters.CharFilter(field_name="environment__name")
    started_after = UtcIsoDateTimeFilter(field_name="started_at", lookup_expr="gte")
    started_before = UtcIsoDateTimeFilter(field_name="started_at", lookup_expr="lt")

    class Meta:
        model = Launch
        fields = ["status", "priority", "environment", "via_queue"]


def _launch_or_404(pk) -> Launch:
    try:
        return selectors.launch_list().get(id=int(pk))
    except (ValueError, TypeError, Launch.DoesNotExist):
        raise NotFound() from None


ROW_STATUS = OpenApiParameter(
    "status",
    OpenApiTypes.STR,
    many=True,
    enum=RunStatus.values,
    description="Only rows with these outcomes (repeat the parameter for several).",
)


@extend_schema_view(list=extend_schema(responses={200: LaunchSerializer(many=True), **ERRORS}))
class LaunchViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Launches: a suite of scenarios (by tag expression or names) over payload rows, in an
    environment, directly or through the queue; one roll-up status."""

    serializer_class = LaunchSerializer
    filterset_class = LaunchFilter
    parser_classes = [LimitedJSONParser, MultiPartParser]

    def get_queryset(self):
        return selectors.launch_list()

    @extend_schema(responses={200: LaunchDetailSerializer, **ERRORS})
    def retrieve(self, request, pk=None):
        """The launch with its counts and its failing rows."""
        return Response(LaunchDetailSerializer(_launch_or_404(pk)).data)

    @extend_schema(
        request={
            "application/json": LaunchCreateSerializer,
            "multipart/form-data": LaunchCreateSerializer,
        },
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: LaunchDetailSerializer, **ERRORS},
    )
    @idempotent
    def create(self, request):
        """Start every scenario picked by `tags` or `scenarios` once per payload row (`data`,
        or the one `payload`). Every row is checked first: a bad one is a 400 naming its row,
        and nothing starts."""
        data = LaunchCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        launch = services.launch_create(**data.validated_data, created_by=request.user)
        launch = _launch_or_404(launch.id)
        return Response(LaunchDetailSerializer(launch).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[ROW_STATUS], responses={200: LaunchRowSerializer(many=True), **ERRORS}
    )
    @action(detail=True, methods=["get"], filterset_class=None)
    def rows(self, request, pk=None):
        """Every row of the launch with its outcome, a page at a time."""
        launch = _launch_or_404(pk)
        outcomes = request.query_params.getlist("status")
        unknown = sorted(set(outcomes) - set(RunStatus.values))
        if unknown:
            raise ValidationError({"status": [f"not a row status: {', '.join(unknown)}"]})
        page = self.paginate_queryset(selectors.launch_rows(launch, outcomes=outcomes))
        return self.get_paginated_response(
            LaunchRowSerializer([selectors.row_of(item) for item in page], many=True).data
        )

    @extend_schema(responses={(200, "application/xml"): OpenApiTypes.STR, **ERRORS})
    @action(detail=True, methods=["get"], filterset_class=None)
    def junit(self, request, pk=None):
        """The launch as JUnit XML: one testsuite per scenario inside one testsuites."""
        launch = _launch_or_404(pk)
        return HttpResponse(reports.launch_junit_xml(launch), content_type="application/xml")

    @extend_schema(responses={(200, "text/html"): OpenApiTypes.STR, **ERRORS})
    @action(detail=True, methods=["get"], filterset_class=None)
    def report(self, request, pk=None):
        """A self-contained HTML page: roll-up, counts, failing rows and rows."""
        launch = _launch_or_404(pk)
        return HttpResponse(reports.launch_html_report(launch), content_type="text/html")
