from __future__ import annotations

import re

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from targets import selectors, services
from targets.models import RateKey

# Some character that is not whitespace as Python sees it (CharField strips exactly these),
# spelled out because the pattern is published in the schema, where \s is ECMA's other set.
_NOT_BLANK = RegexValidator(
    r"[^\t-\r \u001c-\u001f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]",
    "must contain a character that is not whitespace",
)
# What PostgreSQL's text cannot hold; NUL is refused by CharField already.
_UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")


def _count(help_text: str, **kwargs) -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=1, max_value=services.MAX_COUNT, help_text=help_text, **kwargs
    )


@extend_schema_field(
    {
        "type": "number",
        "format": "double",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": services.MAX_INTERVAL_SECONDS,
    }
)
class IntervalField(serializers.FloatField):
    """Seconds, more than 0 and at most a day."""

    def __init__(self, **kwargs):
        kwargs.setdefault("validators", [services.validate_interval_seconds])
        super().__init__(**kwargs)


class RateKeyConfigSerializer(serializers.Serializer):
    """A key's configuration. A field left out of a PUT takes its default (no limit of that
    kind); a PATCH changes only the fields it names. A key's name and state cannot be set."""

    # Names a caller might send expecting them to change something: a 400 says they cannot.
    READ_ONLY = {
        "name": "cannot change; create a key of the new name",
        **{
            field: "read-only: the throttle keeps it (use unblock to lift a block)"
            for field in (
                "id",
                "tat",
                "blocked_until",
                "learned_interval_seconds",
                "requests_total",
                "pushbacks_total",
                "throttled_waits_total",
                "wait_seconds_total",
                "recent_pushbacks",
                "last_pushback_at",
                "consecutive_pushbacks",
                "use",
            )
        },
    }

    requests = _count(
        "Requests per `interval_seconds` (null: no rate limit).", allow_null=True, default=None
    )
    interval_seconds = IntervalField(default=1.0, help_text="The interval `requests` are per.")
    burst = _count("Requests that may go at once after a quiet spell.", default=1)
    max_concurrent = _count(
        "Requests in flight at once, fleet-wide (null: no limit).", allow_null=True, default=None
    )

    def to_internal_value(self, data):
        if isinstance(data, dict):
            refused = {name: [self.READ_ONLY[name]] for name in data if name in self.READ_ONLY}
            if refused:
                raise serializers.ValidationError(refused)
        return super().to_internal_value(data)


class RateKeyCreateSerializer(RateKeyConfigSerializer):
    READ_ONLY = {
        name: text for name, text in RateKeyConfigSerializer.READ_ONLY.items() if name != "name"
    }

    name = serializers.CharField(
        max_length=services.NAME_MAX_LENGTH,
        validators=[_NOT_BLANK],
        help_text="A target's `scheme://host:port`, or the `rate_key` of some steps.",
    )

    def validate_name(self, value: str) -> str:
        if _UNPAIRED_SURROGATE.search(value):
            raise serializers.ValidationError("must not hold unpaired surrogates")
        existing = RateKey.objects.filter(name=value).values_list("id", flat=True).first()
        if existing is not None:
            raise serializers.ValidationError(
                f"a rate key with this name already exists (id {existing}); change that one"
            )
        return value


class RateKeyUseSerializer(serializers.Serializer):
    emission_interval_seconds = serializers.FloatField(
        allow_null=True,
        help_text="Seconds between requests the key allows now: configured or learned from "
        "429s, the longer (null: unlimited).",
    )
    requests_per_second = serializers.FloatField(allow_null=True)
    burst_used = serializers.FloatField(
        allow_null=True, help_text="Requests' worth of the burst spent (0 .. burst)."
    )
    next_request_in_seconds = serializers.FloatField(
        help_text="Seconds until the next request may go (0: now)."
    )
    blocked = serializers.BooleanField(help_text="`blocked_until` is after the database's now.")
    blocked_for_seconds = serializers.FloatField()


class RateKeySerializer(serializers.ModelSerializer):
    """Configuration, state (written by the throttle only) and the use derived from it."""

    recent_pushbacks = serializers.SerializerMethodField(
        help_text="The latest 429s (and 503s with Retry-After) received, newest last: when, "
        "the status, the Retry-After header as sent and the seconds the key was blocked for."
    )
    use = serializers.SerializerMethodField()

    class Meta:
        model = RateKey
        fields = [
            "id",
            "name",
            "requests",
            "interval_seconds",
            "burst",
            "max_concurrent",
            "blocked_until",
            "learned_interval_seconds",
            "requests_total",
            "pushbacks_total",
            "throttled_waits_total",
            "wait_seconds_total",
            "recent_pushbacks",
            "last_pushback_at",
            "consecutive_pushbacks",
            "use",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field({"type": "array", "items": {"type": "object"}})
    def get_recent_pushbacks(self, key: RateKey) -> list:
        return key.recent_pushbacks

    @extend_schema_field(RateKeyUseSerializer)
    def get_use(self, key: RateKey) -> dict:
        use = selectors.rate_key_use(key=key, now=key.db_now)
        return RateKeyUseSerializer(use).data
