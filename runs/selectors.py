"""Reads of the run engine."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from runs.models import StepResult, TestRun


def run_with_steps(*, run_id: int) -> TestRun:
    """The run with the step results of every attempt, in order."""
    return (
        TestRun.objects.select_related("scenario")
        .prefetch_related(
            Prefetch("steps", queryset=StepResult.objects.order_by("attempt", "position"))
        )
        .get(id=run_id)
    )


def run_list() -> QuerySet[TestRun]:
    return TestRun.objects.select_related("scenario").order_by("-id")


def latest_attempt_steps(run: TestRun) -> list[StepResult]:
    """The steps of the run's latest attempt (earlier attempts were interrupted by a crash)."""
    steps = list(run.steps.all())
    latest = max((step.attempt for step in steps), default=0)
    return [step for step in steps if step.attempt == latest]
