from __future__ import annotations

import inspect
import json

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from plugins.registry import installed_plugins
from runs.definition import DefinitionError, validate_definition
from runs.models import (
    TAG_MAX_LENGTH,
    DeadLetter,
    Priority,
    Scenario,
    ScenarioVersion,
    StepResult,
    TestRun,
)
from runs.sources import SourceError, definition_from_source, source_diff
from runs.storable import has_unstorable_text

# Some character that is not whitespace as Python sees it: CharField strips exactly these, and
# a text of nothing else is then blank. Spelled out because ECMA's \s (in the published
# pattern) is another set.
_NOT_BLANK = RegexValidator(
    r"[^\t-\r \u001c-\u001f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]",
    "must contain a character that is not whitespace",
)


class ScenarioReferenceField(serializers.CharField):
    """An active scenario named by its id or its name."""

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", "Scenario id or name.")
        kwargs.setdefault("max_length", Scenario._meta.get_field("name").max_length)
        kwargs.setdefault("validators", [_NOT_BLANK])
        super().__init__(**kwargs)

    def run_validation(self, data=serializers.empty) -> Scenario:
        # Looked up only once the text passed CharField's checks: PostgreSQL cannot compare
        # strings holding NUL or unpaired surrogates (they were a 500).
        value = super().run_validation(data)
        lookup = {"id": int(value)} if value.isascii() and value.isdigit() else {"name": value}
        # Its current version comes along (the run started from it names the version's number),
        # without the texts a start never reads.
        scenario = (
            Scenario.objects.select_related("current_version")
            .defer("definition_source", "current_version__source", "current_version__definition")
            .filter(**lookup)
            .first()
        )
        if scenario is None:
            raise serializers.ValidationError(f"no scenario {value!r}")
        if not scenario.is_active:
            raise serializers.ValidationError(f"scenario {value!r} is not active")
        return scenario


@extend_schema_field(OpenApiTypes.OBJECT)
class JsonObjectField(serializers.JSONField):
    """A JSON value that must be an object, at most ``max_bytes`` long when serialised."""

    def __init__(self, *, max_bytes: int | None = None, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        if has_unstorable_text(value):
            raise serializers.ValidationError(
                "text must not contain NUL characters or unpaired surrogates"
            )
        if self.max_bytes and len(json.dumps(value)) > self.max_bytes:
            raise serializers.ValidationError(f"must be at most {self.max_bytes} bytes as JSON")
        return value


def payload_field(**kwargs) -> JsonObjectField:
    return JsonObjectField(max_bytes=settings.ORCHESTRA_API_MAX_PAYLOAD_BYTES, **kwargs)


_STEP_OPENAPI = {
    "type": "object",
    "required": ["name", "plugin"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "plugin": {"type": "string", "minLength": 1},
        "with": {"type": "object"},
        "expect": {"type": "object"},
    },
}


@extend_schema_field(
    {
        "type": "object",
        "description": "Steps and `finally` steps, run in order; each step's `with` and `expect` "
        "follow the JSON Schemas of its plugin (GET /api/plugins/).",
        "required": ["steps"],
        "properties": {
            "steps": {"type": "array", "minItems": 1, "items": _STEP_OPENAPI},
            "finally": {"type": "array", "items": _STEP_OPENAPI},
        },
    }
)
class DefinitionField(JsonObjectField):
    """A scenario definition, validated in full; errors are keyed by their path in it."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            validate_definition(value)
        except DefinitionError as exc:
            # Keyed by each problem's own path: the API reports ``definition.<path>``.
            whole = [problem.message for problem in exc.problems if not problem.path]
            if whole:
                raise serializers.ValidationError(whole) from None
            raise serializers.ValidationError(exc.as_dict()) from None
        return value


class ScenarioSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(
        source="current_version.number",
        read_only=True,
        allow_null=True,
        help_text="The number of the latest saved version (GET .../versions/).",
    )

    class Meta:
        model = Scenario
        fields = [
            "id",
            "name",
            "description",
            "definition",
            "definition_source",
            "version",
            "tags",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "definition_source", "is_active", "created_at", "updated_at"]


class ScenarioVersionSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    diff = serializers.SerializerMethodField(
        help_text="Unified diff of `source` from the previous version (empty for version 1)."
    )

    class Meta:
        model = ScenarioVersion
        fields = ["number", "origin", "created_by", "created_at", "source", "definition", "diff"]

    def get_diff(self, version: ScenarioVersion) -> str:
        if version.previous_source is None:
            return ""
        lines = source_diff(
            version.previous_source,
            version.source,
            old_label=f"version {version.number - 1}",
            new_label=f"version {version.number}",
        )
        return "\n".join(lines)


class ScenarioInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, validators=[_NOT_BLANK])
    description = serializers.CharField(required=False, allow_blank=True, default="")
    definition = DefinitionField(
        required=False, help_text="Required unless `definition_source` gives it as YAML."
    )
    definition_source = serializers.CharField(
        required=False,
        trim_whitespace=False,
        help_text="The definition as YAML text, kept with its comments; instead of `definition`.",
    )

    def validate(self, attrs: dict) -> dict:
        """One of ``definition`` and ``definition_source``; the YAML is read and validated as
        ``definition`` is, its problems reported on ``definition_source``. A full write names
        the definition, a partial one may leave it alone."""
        text = attrs.pop("definition_source", None)
        if text is not None and "definition" in attrs:
            raise serializers.ValidationError(
                {"definition_source": ["give definition or definition_source, not both"]}
            )
        if text is not None:
            try:
                definition = JsonObjectField().run_validation(definition_from_source(text))
                validate_definition(definition)
            except SourceError as exc:
                raise serializers.ValidationError({"definition_source": [str(exc)]}) from None
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"definition_source": exc.detail}) from None
            except DefinitionError as exc:
                problems = [str(problem) for problem in exc.problems]
                raise serializers.ValidationError({"definition_source": problems}) from None
            attrs["definition"] = definition
            attrs["source"] = text
        elif "definition" not in attrs and not self.partial:
            raise serializers.ValidationError(
                {"definition": ["This field is required (or give definition_source)."]}
            )
        return attrs

    tags = serializers.ListField(
        child=serializers.CharField(max_length=TAG_MAX_LENGTH),
        required=False,
        max_length=100,
        help_text="Tags suite launches pick scenarios by (letters, digits, _ . : -).",
    )

    def validate_name(self, value: str) -> str:
        current = self.context.get("scenario")
        taken = Scenario.objects.filter(name=value)
        if current is not None:
            taken = taken.exclude(id=current.id)
        if taken.exists():
            raise serializers.ValidationError("a scenario with this name already exists")
        return value


class DefinitionCheckSerializer(serializers.Serializer):
    definition = DefinitionField()


class DefinitionCheckResultSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    steps = serializers.IntegerField()


class StepResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = StepResult
        fields = [
            "attempt",
            "position",
            "name",
            "plugin",
            "is_cleanup",
            "status",
            "started_at",
            "finished_at",
            "duration_ms",
            "request",
            "response",
            "captures",
            "assertions",
            "tries",
            "error",
        ]


class RunSerializer(serializers.ModelSerializer):
    scenario = serializers.SlugRelatedField(slug_field="name", read_only=True)
    scenario_id = serializers.IntegerField(read_only=True)
    scenario_version = serializers.IntegerField(
        source="scenario_version.number",
        read_only=True,
        allow_null=True,
        help_text="The scenario version the run executed (null: a run older than versions).",
    )
    launch = serializers.IntegerField(
        source="launch_id", read_only=True, allow_null=True, help_text="Its launch, if any."
    )

    class Meta:
        model = TestRun
        fields = [
            "id",
            "scenario",
            "scenario_id",
            "scenario_version",
            "status",
            "priority",
            "context",
            "launch",
            "attempt",
            "worker",
            "queued_at",
            "started_at",
            "finished_at",
            "cancel_requested_at",
            "resume_at",
            "throttle_seconds",
            "error",
        ]


class RunDetailSerializer(RunSerializer):
    steps = StepResultSerializer(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "steps"]


class RunStartSerializer(serializers.Serializer):
    scenario = ScenarioReferenceField()
    payload = payload_field(required=False, default=dict)
    priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.NORMAL)


class DeadLetterSerializer(serializers.ModelSerializer):
    run_id = serializers.IntegerField(source="run_id_hint", read_only=True, allow_null=True)

    class Meta:
        model = DeadLetter
        fields = [
            "id",
            "task_id",
            "task",
            "run_id",
            "reason",
            "body",
            "content_type",
            "headers",
            "status",
            "received",
            "created_at",
            "redriven_at",
        ]


class PluginSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(help_text="The first paragraph of the plugin's docstring.")
    params_schema = serializers.JSONField(help_text="JSON Schema of a step's `with` block.")
    expect_schema = serializers.JSONField(help_text="JSON Schema of a step's `expect` block.")
    listen_schema = serializers.JSONField(
        allow_null=True, help_text="JSON Schema of a `listen: {with: ...}` block; null: none."
    )
    example = serializers.JSONField(allow_null=True, help_text="A step using the plugin.")


def plugin_descriptions() -> list[dict]:
    """Every installed plugin with its schemas and an example step."""
    return [
        {
            "name": name,
            "description": _first_paragraph(type(plugin).__doc__),
            "params_schema": plugin.params_schema,
            "expect_schema": plugin.expect_schema,
            "listen_schema": plugin.listen_schema,
            "example": plugin.example,
        }
        for name, plugin in sorted(installed_plugins().items())
    ]


def _first_paragraph(docstring: str | None) -> str:
    paragraph = inspect.cleandoc(docstring or "").split("\n\n", 1)[0]
    return " ".join(paragraph.split())
