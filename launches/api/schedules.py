"""API of schedules: ``/api/schedules/`` (list, create, read, update, delete)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from launches.models import Overlap, Schedule
from launches.schedules import schedule_delete, schedule_save
from runs.api.serializers import payload_field
from runs.api.views import ERRORS, _object_or_404
from runs.models import Priority


class ScheduleInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    enabled = serializers.BooleanField(default=True)
    tags = serializers.CharField(
        required=False, allow_blank=True, max_length=1000, help_text="A tag expression."
    )
    scenarios = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        max_length=1000,
        source="scenario_names",
        help_text="Scenario names (instead of `tags`); one name launches one scenario.",
    )
    environment = serializers.CharField(required=False, allow_null=True, max_length=100)
    priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.NORMAL)
    via_queue = serializers.BooleanField(default=False)
    payload = payload_field(required=False)
    cron = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="e.g. `*/15 * * * *`"
    )
    timezone = serializers.CharField(
        required=False, max_length=64, help_text="The cron's IANA time zone (default UTC)."
    )
    interval_seconds = serializers.IntegerField(required=False, allow_null=True)
    overlap = serializers.ChoiceField(choices=Overlap.choices, default=Overlap.SKIP)


class ScheduleSerializer(serializers.ModelSerializer):
    scenarios = serializers.ListField(source="scenario_names", child=serializers.CharField())
    environment = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Schedule
        fields = [
            "id", "name", "enabled", "tags", "scenarios", "environment", "priority",
            "via_queue", "payload", "cron", "timezone", "interval_seconds", "overlap",
            "last_fired_at", "last_launch", "skipped", "last_error", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


#: What a PUT leaves out is reset to these (a PATCH keeps it).
REPLACED = {
    "tags": "",
    "scenario_names": [],
    "environment": None,
    "payload": {},
    "cron": "",
    "timezone": "UTC",
    "interval_seconds": None,
}


def _schedule_or_404(pk) -> Schedule:
    return _object_or_404(Schedule.objects.select_related("environment"), pk)


@extend_schema_view(
    list=extend_schema(responses={200: ScheduleSerializer(many=True), **ERRORS}),
    retrieve=extend_schema(responses={200: ScheduleSerializer, **ERRORS}),
    destroy=extend_schema(responses={204: None, **ERRORS}),
)
class ScheduleViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Schedules: a scenario or a suite launched from a cron expression in a time zone, or at
    a fixed interval, by Celery beat's database scheduler."""

    queryset = Schedule.objects.select_related("environment").order_by("name")
    serializer_class = ScheduleSerializer

    @extend_schema(request=ScheduleInputSerializer, responses={201: ScheduleSerializer, **ERRORS})
    def create(self, request):
        data = ScheduleInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        schedule = schedule_save(**data.validated_data)
        return Response(ScheduleSerializer(schedule).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ScheduleInputSerializer, responses={200: ScheduleSerializer, **ERRORS})
    def update(self, request, pk=None):
        return self._update(request, pk, partial=False)

    @extend_schema(request=ScheduleInputSerializer, responses={200: ScheduleSerializer, **ERRORS})
    def partial_update(self, request, pk=None):
        return self._update(request, pk, partial=True)

    def _update(self, request, pk, *, partial: bool) -> Response:
        schedule = _schedule_or_404(pk)
        data = ScheduleInputSerializer(data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        values = data.validated_data if partial else {**REPLACED, **data.validated_data}
        schedule = schedule_save(schedule=schedule, **values)
        return Response(ScheduleSerializer(schedule).data)

    def destroy(self, request, pk=None):
        schedule_delete(schedule=_schedule_or_404(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)
