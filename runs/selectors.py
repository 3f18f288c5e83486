"""Reads of the run engine."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Exists, OuterRef, Prefetch, QuerySet, Subquery

from runs.models import DeadLetter, ScenarioVersion, StepResult, TestRun
from runs.states import RunStatus


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


@dataclass(frozen=True)
class ScenarioStats:
    """A scenario's last ``runs`` finished runs (passed, failed or error; cancelled ones say
    nothing about the scenario): how many passed, the median duration, and how often the
    outcome flipped between pass and not-pass, oldest to newest."""

    scenario_id: int
    runs: int
    passed: int
    median_seconds: float | None
    flips: int
    last_finished_at: datetime | None
    flaky: bool

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.runs if self.runs else None


# One statement: number each scenario's finished runs newest first, keep the window, compare
# each outcome with the one before it (LAG) and aggregate per scenario.
_STATS_SQL = """
WITH recent AS (
    SELECT scenario_id, id, status, finished_at,
           EXTRACT(EPOCH FROM finished_at - started_at) AS seconds,
           ROW_NUMBER() OVER (PARTITION BY scenario_id ORDER BY finished_at DESC, id DESC) AS n
    FROM runs_testrun
    WHERE status IN %(statuses)s AND finished_at IS NOT NULL {where}
), windowed AS (
    SELECT scenario_id, status, seconds, finished_at,
           LAG(status = 'PASSED') OVER (PARTITION BY scenario_id ORDER BY n DESC) AS passed_before
    FROM recent
    WHERE n <= %(window)s
)
SELECT scenario_id,
       COUNT(*),
       COUNT(*) FILTER (WHERE status = 'PASSED'),
       PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY seconds),
       COUNT(*) FILTER (WHERE passed_before IS DISTINCT FROM NULL
                          AND passed_before <> (status = 'PASSED')),
       MAX(finished_at)
FROM windowed
GROUP BY scenario_id
"""


def scenario_stats(
    *, scenario_ids: Collection[int] | None = None, window: int | None = None
) -> dict[int, ScenarioStats]:
    """Pass rate, median duration and flip count over each scenario's last ``window`` finished
    runs (``ORCHESTRA_FLAKY_WINDOW``), in one query; scenarios without finished runs are
    absent. Flaky: at least ``ORCHESTRA_FLAKY_MIN_FLIPS`` flips."""
    window = window or settings.ORCHESTRA_FLAKY_WINDOW
    params: dict[str, Any] = {
        "statuses": (RunStatus.PASSED, RunStatus.FAILED, RunStatus.ERROR),
        "window": window,
    }
    where = ""
    if scenario_ids is not None:
        if not scenario_ids:
            return {}
        where, params["ids"] = "AND scenario_id IN %(ids)s", tuple(scenario_ids)
    with connection.cursor() as cursor:
        cursor.execute(_STATS_SQL.format(where=where), params)
        rows = cursor.fetchall()
    return {
        row[0]: ScenarioStats(
            scenario_id=row[0],
            runs=row[1],
            passed=row[2],
            median_seconds=float(row[3]) if row[3] is not None else None,
            flips=row[4],
            last_finished_at=row[5],
            flaky=row[4] >= settings.ORCHESTRA_FLAKY_MIN_FLIPS,
        )
        for row in rows
    }


def scenario_recent_runs(*, scenario_id: int, limit: int = 20) -> list[TestRun]:
    """The scenario's newest runs, any status, with the version each executed."""
    return list(run_list().filter(scenario_id=scenario_id)[:limit])
