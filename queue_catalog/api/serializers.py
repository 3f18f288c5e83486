from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from queue_catalog.models import QueueRecord
from runs.api.serializers import RunSerializer, ScenarioReferenceField, payload_field
from runs.models import Priority

MAX_ATTEMPTS_LIMIT = 100


class QueueRecordSerializer(serializers.ModelSerializer):
    scenario = serializers.SlugRelatedField(slug_field="name", read_only=True)
    scenario_id = serializers.IntegerField(read_only=True)
    cancel_requested = serializers.BooleanField(
        source="is_stopping",
        read_only=True,
        help_text="RUNNING but asked to stop: the lane moves on once its run has really ended.",
    )

    class Meta:
        model = QueueRecord
        fields = [
            "id",
            "scenario",
            "scenario_id",
            "payload",
            "status",
            "process_code",
            "started_at",
            "finished_at",
            "start_count",
            "errors",
            "priority",
            "max_attempts",
            "next_attempt_at",
            "cancel_requested",
            "cancel_requested_at",
            "created_at",
        ]


class QueueAttemptSerializer(serializers.Serializer):
    start_number = serializers.IntegerField()
    run = RunSerializer()


class QueueRecordDetailSerializer(QueueRecordSerializer):
    runs = QueueAttemptSerializer(source="attempts", many=True, read_only=True)

    class Meta(QueueRecordSerializer.Meta):
        fields = [*QueueRecordSerializer.Meta.fields, "runs"]


class QueueRecordCreateSerializer(serializers.Serializer):
    scenario = ScenarioReferenceField()
    payload = payload_field(required=False, default=dict)
    priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.NORMAL)
    max_attempts = serializers.IntegerField(
        min_value=1,
        max_value=MAX_ATTEMPTS_LIMIT,
        required=False,
        help_text=f"Starts before the record is given up (default "
        f"{settings.ORCHESTRA_QUEUE_MAX_ATTEMPTS}).",
    )
