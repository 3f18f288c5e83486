"""``GET /api/scenarios/{id}/stats/``: pass rate, median duration, flips and the flaky flag."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from runs.api.views import ERRORS, _object_or_404
from runs.models import Scenario
from runs.selectors import scenario_stats

MAX_WINDOW = 1000


class ScenarioStatsSerializer(serializers.Serializer):
    scenario = serializers.IntegerField()
    window = serializers.IntegerField(help_text="How many of the latest finished runs count.")
    runs = serializers.IntegerField()
    passed = serializers.IntegerField()
    pass_rate = serializers.FloatField(allow_null=True)
    median_seconds = serializers.FloatField(allow_null=True)
    flips = serializers.IntegerField(help_text="Changes between pass and fail, oldest first.")
    flaky = serializers.BooleanField()
    last_finished_at = serializers.DateTimeField(allow_null=True)


class ScenarioStatsView(APIView):
    """Flaky detection for one scenario over its last N finished runs."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "window", OpenApiTypes.INT, description=f"Runs counted (1-{MAX_WINDOW})."
            )
        ],
        responses={200: ScenarioStatsSerializer, **ERRORS},
    )
    def get(self, request, pk: int) -> Response:
        scenario = _object_or_404(Scenario.objects, pk)
        raw = request.query_params.get("window", settings.ORCHESTRA_FLAKY_WINDOW)
        try:
            window = int(raw)
        except (TypeError, ValueError):
            window = 0
        if not 1 <= window <= MAX_WINDOW:
            raise ValidationError({"window": [f"an integer from 1 to {MAX_WINDOW}"]})
        stats = scenario_stats(scenario_ids=[scenario.id], window=window).get(scenario.id)
        body = {
            "scenario": scenario.id,
            "window": window,
            "runs": stats.runs if stats else 0,
            "passed": stats.passed if stats else 0,
            "pass_rate": stats.pass_rate if stats else None,
            "median_seconds": stats.median_seconds if stats else None,
            "flips": stats.flips if stats else 0,
            "flaky": stats.flaky if stats else False,
            "last_finished_at": stats.last_finished_at if stats else None,
        }
        return Response(ScenarioStatsSerializer(body).data)
