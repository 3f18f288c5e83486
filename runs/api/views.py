from __future__ import annotations

import django_filters
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestra.api.exceptions import Conflict
from orchestra.api.filters import IdFilter, StrictFilterSet, UtcIsoDateTimeFilter
from orchestra.api.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent
from orchestra.api.serializers import ErrorSerializer
from runs import deadletters, reports, selectors, services
from runs.api.serializers import (
    DeadLetterSerializer,
    DefinitionCheckResultSerializer,
    DefinitionCheckSerializer,
    PluginSerializer,
    RunDetailSerializer,
    RunSerializer,
    RunStartSerializer,
    ScenarioInputSerializer,
    ScenarioSerializer,
    plugin_descriptions,
)
from runs.models import DeadLetter, DeadLetterStatus, Priority, Scenario, TestRun
from runs.states import RunStatus

ERRORS = {
    400: OpenApiResponse(ErrorSerializer, "Invalid input; `fields` names each bad field."),
    401: OpenApiResponse(ErrorSerializer, "Not authenticated."),
    403: OpenApiResponse(ErrorSerializer, "Your role does not allow this."),
    404: OpenApiResponse(ErrorSerializer, "No such object."),
}
CONFLICT = {409: OpenApiResponse(ErrorSerializer, "The object's state does not allow this.")}


def _object_or_404(queryset, pk):
    try:
        return queryset.get(id=int(pk))
    except (ValueError, TypeError, queryset.model.DoesNotExist):
        raise NotFound() from None


class ScenarioFilter(StrictFilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Scenario
        fields = ["name", "is_active"]


@extend_schema_view(
    list=extend_schema(responses={200: ScenarioSerializer(many=True), **ERRORS}),
    retrieve=extend_schema(responses={200: ScenarioSerializer, **ERRORS}),
)
class ScenarioViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Scenarios: named, validated lists of steps."""

    queryset = Scenario.objects.order_by("name")
    serializer_class = ScenarioSerializer
    filterset_class = ScenarioFilter

    @extend_schema(request=ScenarioInputSerializer, responses={201: ScenarioSerializer, **ERRORS})
    def create(self, request):
        data = ScenarioInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        scenario = services.scenario_save(**data.validated_data)
        return Response(ScenarioSerializer(scenario).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ScenarioInputSerializer, responses={200: ScenarioSerializer, **ERRORS})
    def update(self, request, pk=None):
        return self._update(request, pk, partial=False)

    @extend_schema(request=ScenarioInputSerializer, responses={200: ScenarioSerializer, **ERRORS})
    def partial_update(self, request, pk=None):
        return self._update(request, pk, partial=True)

    def _update(self, request, pk, *, partial: bool) -> Response:
        scenario = _object_or_404(Scenario.objects, pk)
        data = ScenarioInputSerializer(
            data=request.data, partial=partial, context={"scenario": scenario}
        )
        data.is_valid(raise_exception=True)
        scenario = services.scenario_update(scenario=scenario, **data.validated_data)
        return Response(ScenarioSerializer(scenario).data)

    @extend_schema(request=None, responses={200: ScenarioSerializer, **ERRORS})
    @action(detail=True, methods=["post"])
    def deactivate(self, request, pk=None):
        """No new runs or queue records of this scenario may start; its history stays."""
        scenario = _object_or_404(Scenario.objects, pk)
        scenario = services.scenario_set_active(scenario=scenario, is_active=False)
        return Response(ScenarioSerializer(scenario).data)

    @extend_schema(request=None, responses={200: ScenarioSerializer, **ERRORS})
    @action(detail=True, methods=["post"])
    def activate(self, request, pk=None):
        scenario = _object_or_404(Scenario.objects, pk)
        scenario = services.scenario_set_active(scenario=scenario, is_active=True)
        return Response(ScenarioSerializer(scenario).data)

    @extend_schema(
        request=DefinitionCheckSerializer,
        responses={200: DefinitionCheckResultSerializer, **ERRORS},
    )
    @action(detail=False, methods=["post"])
    def validate(self, request):
        """Check a definition without saving anything."""
        data = DefinitionCheckSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        definition = data.validated_data["definition"]
        steps = len(definition["steps"]) + len(definition.get("finally", []))
        return Response({"valid": True, "steps": steps})


class RunFilter(StrictFilterSet):
    scenario = IdFilter(field_name="scenario_id")
    scenario_name = django_filters.CharFilter(field_name="scenario__name")
    launch = IdFilter(field_name="launch_id")
    status = django_filters.MultipleChoiceFilter(choices=RunStatus.choices)
    priority = django_filters.ChoiceFilter(choices=Priority.choices)
    queued_after = UtcIsoDateTimeFilter(field_name="queued_at", lookup_expr="gte")
    queued_before = UtcIsoDateTimeFilter(field_name="queued_at", lookup_expr="lt")
    finished_after = UtcIsoDateTimeFilter(field_name="finished_at", lookup_expr="gte")
    finished_before = UtcIsoDateTimeFilter(field_name="finished_at", lookup_expr="lt")

    class Meta:
        model = TestRun
        fields = ["scenario", "scenario_name", "launch", "status", "priority"]


@extend_schema_view(list=extend_schema(responses={200: RunSerializer(many=True), **ERRORS}))
class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Test runs: start, follow, cancel, re-run, reports."""

    serializer_class = RunSerializer
    filterset_class = RunFilter

    def get_queryset(self):
        return selectors.run_list()

    @extend_schema(responses={200: RunDetailSerializer, **ERRORS})
    def retrieve(self, request, pk=None):
        """The run with the step results of every delivery attempt."""
        try:
            run = selectors.run_with_steps(run_id=int(pk))
        except (TestRun.DoesNotExist, ValueError):
            raise NotFound() from None
        return Response(RunDetailSerializer(run).data)

    @extend_schema(
        request=RunStartSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: RunSerializer, **ERRORS, **CONFLICT},
    )
    @idempotent
    def create(self, request):
        """Start a run; send an `Idempotency-Key` header to make retries of this call safe."""
        data = RunStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = services.run_start(**data.validated_data)
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None, responses={200: RunSerializer, 202: RunSerializer, **ERRORS, **CONFLICT}
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """A queued run is cancelled at once (200). A running one is asked to stop (202: it stays
        `IN_PROGRESS` with `cancel_requested_at` set until its worker has really stopped it)."""
        _object_or_404(TestRun.objects, pk)
        try:
            run = services.run_cancel(run_id=int(pk))
        except services.RunConflict as exc:
            raise Conflict(str(exc)) from None
        code = status.HTTP_200_OK if run.is_finished else status.HTTP_202_ACCEPTED
        return Response(RunSerializer(run).data, status=code)

    @extend_schema(
        request=None,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: RunSerializer, **ERRORS, **CONFLICT},
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def rerun(self, request, pk=None):
        """Start a new run of the same scenario with the same payload and priority."""
        run = _object_or_404(TestRun.objects.select_related("scenario"), pk)
        if not run.scenario.is_active:
            raise Conflict(f"scenario {run.scenario.name!r} is not active")
        new_run = services.run_rerun(run_id=run.id)
        return Response(RunSerializer(new_run).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={(200, "application/xml"): OpenApiTypes.STR, **ERRORS})
    @action(detail=True, methods=["get"])
    def junit(self, request, pk=None):
        """The run as JUnit XML (scenario = testsuite, step = testcase)."""
        run = _object_or_404(selectors.run_list(), pk)
        return HttpResponse(reports.run_junit_xml(run), content_type="application/xml")

    @extend_schema(responses={(200, "text/html"): OpenApiTypes.STR, **ERRORS})
    @action(detail=True, methods=["get"])
    def report(self, request, pk=None):
        """A self-contained HTML page with every step, attempt and timing."""
        run = _object_or_404(selectors.run_list(), pk)
        return HttpResponse(reports.run_html_report(run), content_type="text/html")


class DeadLetterFilter(StrictFilterSet):
    status = django_filters.ChoiceFilter(choices=DeadLetterStatus.choices)

    class Meta:
        model = DeadLetter
        fields = ["status", "task"]


@extend_schema_view(
    list=extend_schema(responses={200: DeadLetterSerializer(many=True), **ERRORS}),
    retrieve=extend_schema(responses={200: DeadLetterSerializer, **ERRORS}),
)
class DeadLetterViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Messages that reached the dead-letter queue, with the reason."""

    queryset = DeadLetter.objects.order_by("-id")
    serializer_class = DeadLetterSerializer
    filterset_class = DeadLetterFilter

    @extend_schema(request=None, responses={200: DeadLetterSerializer, **ERRORS, **CONFLICT})
    @action(detail=True, methods=["post"])
    def redrive(self, request, pk=None):
        """Publish the message again to the runs queue, as it was."""
        letter = _object_or_404(DeadLetter.objects, pk)
        try:
            letter = deadletters.dead_letter_redrive(dead_letter_id=letter.id)
        except deadletters.DeadLetterConflict as exc:
            raise Conflict(str(exc)) from None
        return Response(DeadLetterSerializer(letter).data)


class PluginListView(APIView):
    """The installed protocol plugins: their schemas (`with`, `expect`, `listen`) and an example."""

    @extend_schema(responses={200: PluginSerializer(many=True), **ERRORS})
    def get(self, request):
        return Response(plugin_descriptions())
