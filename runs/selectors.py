"""Reads of the run engine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import (
    Aggregate,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    FloatField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
)
from django.db.models.functions import Extract

from runs.models import DeadLetter, ScenarioVersion, StepResult, TestRun
from runs.states import RunStatus

# The outcomes that say whether a scenario works; a cancelled run says nothing about it.
OUTCOMES = (RunStatus.PASSED, RunStatus.FAILED, RunStatus.ERROR)


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


class _Median(Aggregate):
    function = "percentile_cont"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


@dataclass(frozen=True)
class ScenarioStats:
    """How the last ``window`` finished runs of a scenario went (``runs`` may be fewer)."""

    window: int
    runs: int
    passed: int
    median_seconds: float | None

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.runs if self.runs else None


def scenario_stats(*, scenario_id: int, last: int = 50) -> ScenarioStats:
    """Pass rate and median duration over the scenario's last ``last`` runs that passed, failed
    or errored, in one query (the newest runs by ``run_scenario_idx``)."""
    window = (
        TestRun.objects.filter(scenario_id=scenario_id, status__in=OUTCOMES)
        .annotate(
            seconds=Extract(
                ExpressionWrapper(F("finished_at") - F("started_at"), DurationField()), "epoch"
            )
        )
        .order_by("-id")[:last]
    )
    row = window.aggregate(
        runs=Count("id"),
        passed=Count("id", filter=Q(status=RunStatus.PASSED)),
        median_seconds=_Median("seconds"),
    )
    return ScenarioStats(window=last, **row)


def scenario_recent_runs(*, scenario_id: int, limit: int = 20) -> list[TestRun]:
    """The scenario's newest runs, any status, with the version each executed."""
    return list(run_list().filter(scenario_id=scenario_id)[:limit])
