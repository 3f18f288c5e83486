"""Reads of the run engine."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Exists, OuterRef, Prefetch, QuerySet

from runs.models import DeadLetter, StepResult, TestRun


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


def foreign_run_dead_letter_count(*, since: datetime) -> int:
    """Dead letters since ``since`` whose message names a run this database does not have.

    Runs are deleted long after they finish (``purge_runs``), when no message names them any
    more: such a message was most likely published by another orchestra, with a database of its
    own, on the same broker queue (two deployments sharing a RabbitMQ vhost).
    """
    return (
        DeadLetter.objects.filter(created_at__gte=since, run_id_hint__isnull=False)
        .exclude(Exists(TestRun.objects.filter(id=OuterRef("run_id_hint"))))
        .count()
    )
