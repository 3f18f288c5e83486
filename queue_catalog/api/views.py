from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from orchestra.api.exceptions import Conflict
from orchestra.api.filters import IdFilter, StrictFilterSet, UtcIsoDateTimeFilter
from orchestra.api.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent
from queue_catalog import selectors, services
from queue_catalog.api.serializers import (
    QueueRecordCreateSerializer,
    QueueRecordDetailSerializer,
    QueueRecordSerializer,
)
from queue_catalog.models import QueueRecord
from queue_catalog.states import RecordStatus
from runs.api.views import CONFLICT, ERRORS
from runs.models import Priority


def _range(field: str):
    return (
        UtcIsoDateTimeFilter(field_name=field, lookup_expr="gte"),
        UtcIsoDateTimeFilter(field_name=field, lookup_expr="lt"),
    )


class QueueRecordFilter(StrictFilterSet):
    status = django_filters.MultipleChoiceFilter(choices=RecordStatus.choices)
    scenario = IdFilter(field_name="scenario_id")
    scenario_name = django_filters.CharFilter(field_name="scenario__name")
    priority = django_filters.ChoiceFilter(choices=Priority.choices)
    created_after, created_before = _range("created_at")
    started_after, started_before = _range("started_at")
    finished_after, finished_before = _range("finished_at")

    class Meta:
        model = QueueRecord
        fields = ["status", "scenario", "scenario_name", "priority"]


@extend_schema_view(
    list=extend_schema(responses={200: QueueRecordSerializer(many=True), **ERRORS}),
)
class QueueRecordViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The scenario queue ("Очередь"): one lane per scenario, automatic re-runs."""

    serializer_class = QueueRecordSerializer
    filterset_class = QueueRecordFilter

    def get_queryset(self):
        return selectors.queue_record_list()

    @extend_schema(responses={200: QueueRecordDetailSerializer, **ERRORS})
    def retrieve(self, request, pk=None):
        """The record with the run of every start."""
        try:
            record = selectors.queue_record_with_runs(record_id=int(pk))
        except (QueueRecord.DoesNotExist, ValueError):
            raise NotFound() from None
        return Response(QueueRecordDetailSerializer(record).data)

    @extend_schema(
        request=QueueRecordCreateSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: QueueRecordSerializer, **ERRORS, **CONFLICT},
    )
    @idempotent
    def create(self, request):
        """Add a record to its scenario's lane; an idle lane starts it at once."""
        data = QueueRecordCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        record = services.queue_record_create(**data.validated_data)
        return Response(QueueRecordSerializer(record).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: QueueRecordSerializer, **ERRORS, **CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """A waiting record never starts. A running one is asked to stop: it stays RUNNING with
        ``cancel_requested`` until its run has really ended, then it is CANCELLED and its lane
        moves on."""
        return self._change(pk, services.queue_record_cancel)

    @extend_schema(request=None, responses={200: QueueRecordSerializer, **ERRORS, **CONFLICT})
    @action(detail=True, methods=["post"], url_path="move-to-front")
    def move_to_front(self, request, pk=None):
        """Move a waiting record to the front of its lane, behind the record holding the head
        (running, or waiting to re-run); a record already at the front stays there."""
        return self._change(pk, services.queue_record_move_to_front)

    @extend_schema(request=None, responses={200: QueueRecordSerializer, **ERRORS, **CONFLICT})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Send an ERROR record back to the tail of its lane."""
        return self._change(pk, services.queue_record_retry)

    def _change(self, pk, service) -> Response:
        try:
            record = service(record_id=int(pk))
        except (QueueRecord.DoesNotExist, ValueError):
            raise NotFound() from None
        except services.RecordConflict as exc:
            raise Conflict(str(exc)) from None
        return Response(QueueRecordSerializer(record).data)
