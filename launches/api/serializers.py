from __future__ import annotations

import json

from django.core.files.uploadedfile import UploadedFile
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from launches.models import Launch
from launches.rows import RowProblem, file_kind, read_rows
from launches.selectors import FAILING, launch_outcomes, launch_rows, row_of
from runs.api.serializers import payload_field
from runs.models import Priority

#: Failing rows the detail shows; ``GET /api/launches/{id}/rows/?status=FAILED`` pages them all.
FAILING_ROWS_SHOWN = 100


@extend_schema_field(
    {
        "oneOf": [
            {"type": "array", "items": {"type": "object"}, "minItems": 1},
            {"type": "string", "format": "binary"},
        ],
        "description": "Payload rows: a JSON list of objects, or (multipart) a CSV file with a "
        "header line or a JSON-lines file (.csv, .jsonl, .ndjson).",
    }
)
class DataRowsField(serializers.Field):
    """Payload rows as given: a list, or an uploaded CSV / JSON-lines file read into one.
    The rows themselves are checked by the service, which names the bad row."""

    def to_internal_value(self, data):
        if isinstance(data, UploadedFile):
            try:
                return read_rows(data.read(), file_kind(data.name or "", data.content_type))
            except RowProblem as exc:
                raise serializers.ValidationError(str(exc)) from None
        if isinstance(data, str):  # a multipart text field holding JSON
            try:
                data = json.loads(data)
            except ValueError:
                raise serializers.ValidationError(
                    "must be a JSON list, or an uploaded .csv, .jsonl or .ndjson file"
                ) from None
        if not isinstance(data, list):
            raise serializers.ValidationError(
                "must be a list of JSON objects, or an uploaded .csv, .jsonl or .ndjson file"
            )
        return data

    def to_representation(self, value):
        return value


class LaunchCreateSerializer(serializers.Serializer):
    """The shape of a launch request; what depends on stored data (and which fields exclude
    each other) is checked by ``launches.services.launch_create``."""

    tags = serializers.CharField(
        required=False, max_length=1000, help_text="A tag expression: `smoke and not slow`."
    )
    scenarios = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        min_length=1,
        max_length=1000,
        help_text="Scenario names (instead of `tags`).",
    )
    environment = serializers.CharField(required=False, max_length=100)
    priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.NORMAL)
    via_queue = serializers.BooleanField(
        default=False, help_text="Each row becomes a queue record in its scenario's lane."
    )
    payload = payload_field(required=False)
    data = DataRowsField(required=False)


def _counts(launch: Launch) -> dict[str, int]:
    counts = launch_outcomes(launch)
    return {"total": sum(counts.values()), **dict(sorted(counts.items()))}


class LaunchSerializer(serializers.ModelSerializer):
    environment = serializers.SlugRelatedField(slug_field="name", read_only=True)
    scenarios = serializers.ListField(source="scenario_names", read_only=True)
    counts = serializers.SerializerMethodField()

    class Meta:
        model = Launch
        fields = [
            "id",
            "status",
            "tags",
            "scenarios",
            "environment",
            "priority",
            "via_queue",
            "data_rows",
            "started_at",
            "finished_at",
            "counts",
        ]

    @extend_schema_field(
        {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "`total` rows, and rows by outcome (PASSED, FAILED, ERROR, ...).",
        }
    )
    def get_counts(self, launch: Launch) -> dict[str, int]:
        return _counts(launch)


class LaunchRowSerializer(serializers.Serializer):
    scenario = serializers.CharField()
    row = serializers.IntegerField(allow_null=True, help_text="1-based data row; null: one.")
    payload = serializers.DictField()
    status = serializers.CharField(help_text="The row's outcome, in the run's words.")
    run = serializers.IntegerField(allow_null=True, help_text="The run that decides the row.")
    record = serializers.IntegerField(allow_null=True, help_text="Its queue record (via_queue).")
    starts = serializers.IntegerField(allow_null=True, help_text="Starts of its queue record.")
    error = serializers.CharField()


class LaunchDetailSerializer(LaunchSerializer):
    failing_rows = serializers.SerializerMethodField()

    class Meta(LaunchSerializer.Meta):
        fields = [*LaunchSerializer.Meta.fields, "failing_rows"]

    @extend_schema_field(LaunchRowSerializer(many=True))
    def get_failing_rows(self, launch: Launch) -> list[dict]:
        rows = launch_rows(launch, outcomes=list(FAILING))[:FAILING_ROWS_SHOWN]
        return [row_of(item) for item in rows]
