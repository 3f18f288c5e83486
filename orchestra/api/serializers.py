"""Serializers of the cross-cutting API pieces: errors and health."""

from __future__ import annotations

from rest_framework import serializers


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded"])
    # "unknown": the check another process runs has not answered yet.
    database = serializers.ChoiceField(choices=["ok", "unreachable", "unknown"])
    broker = serializers.ChoiceField(choices=["ok", "unreachable", "unknown"])
    workers = serializers.IntegerField()
    foreign_run_messages = serializers.IntegerField(
        help_text="Dead letters of the last hour that name a run this database does not have "
        "(another deployment on the same queue)."
    )
    warnings = serializers.ListField(child=serializers.CharField())


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()
