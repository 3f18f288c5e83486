"""Reads of the run engine."""

from __future__ import annotations

from django.db.models import OuterRef, Prefetch, QuerySet, Subquery

from runs.models import ScenarioVersion, StepResult, TestRun


def run_with_steps(*, run_id: int) -> TestRun:
    """The run with the step results of every attempt, in order."""
    return (
        TestRun.objects.select_related("scenario", "scenario_version")
        .prefetch_related(
            Prefetch("steps", queryset=StepResult.objects.order_by("attempt", "position"))
        )
        .get(id=run_id)
    )


def run_list() -> QuerySet[TestRun]:
    return TestRun.objects.select_related("scenario", "scenario_version").order_by("-id")


def latest_attempt_steps(run: TestRun) -> list[StepResult]:
    """The steps of the run's latest attempt (earlier attempts were interrupted by a crash)."""
    steps = list(run.steps.all())
    latest = max((step.attempt for step in steps), default=0)
    return [step for step in steps if step.attempt == latest]


def scenario_versions(*, scenario_id: int) -> QuerySet[ScenarioVersion]:
    """The scenario's versions, newest first, each with ``previous_source`` (the source text of
    the version before it, None for version 1) for diffs, in one query."""
    previous = ScenarioVersion.objects.filter(
        scenario_id=OuterRef("scenario_id"), number=OuterRef("number") - 1
    ).values("source")
    return (
        ScenarioVersion.objects.filter(scenario_id=scenario_id)
        .select_related("created_by")
        .annotate(previous_source=Subquery(previous))
        .order_by("-number")
    )
