"""Writes of launches: start one (a suite over payload rows, in an environment, directly or
through the queue), settle it when its rows are, and sweep the ones whose news was lost."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from launches.models import Launch
from launches.rows import check_rows
from launches.selectors import ROW_KEY, launch_outcomes
from launches.signals import launch_finished
from launches.states import LaunchStatus, finish_launch, rollup_status
from launches.tags import TagExpressionError, parse_tag_expression
from queue_catalog.services import queue_records_create
from runs.models import Priority, Scenario
from runs.services import runs_start
from runs.templating import TemplateError, member_reads
from targets.environments import environment_run_context
from targets.models import Environment

logger = logging.getLogger(__name__)

LAUNCH_ID_KEY = "launchId"


def launch_scenarios(*, tags: str | None = None, names: list[str] | None = None) -> list[Scenario]:
    """The active scenarios a launch starts: those matching ``tags``, or those named, in id
    order (the order their lanes are locked in). ``ValidationError`` names the field at fault."""
    if bool(tags) == bool(names):
        raise ValidationError({"tags": "give either a tag expression or a list of scenarios"})
    if tags:
        try:
            expression = parse_tag_expression(tags)
        except TagExpressionError as exc:
            raise ValidationError({"tags": str(exc)}) from None
        scenarios = [
            scenario
            for scenario in Scenario.objects.filter(is_active=True).order_by("id")
            if expression.matches(scenario.tags)
        ]
        if not scenarios:
            raise ValidationError({"tags": f"no active scenario matches {tags!r}"})
        return scenarios
    found = {s.name: s for s in Scenario.objects.filter(name__in=names)}
    missing = [name for name in names if name not in found]
    if missing:
        raise ValidationError({"scenarios": f"no scenario {', '.join(map(repr, missing))}"})
    inactive = [name for name in names if not found[name].is_active]
    if inactive:
        raise ValidationError({"scenarios": f"not active: {', '.join(map(repr, inactive))}"})
    return sorted({found[name] for name in names}, key=lambda s: s.id)


def _environment(name: str | None, scenarios: list[Scenario]) -> Environment | None:
    """The named environment; refused when a scenario reads an ``env.x`` it does not define."""
    environment = None
    if name:
        environment = Environment.objects.filter(name=name).first()
        if environment is None:
            raise ValidationError({"environment": f"no environment {name!r}"})
    defined = (
        set(environment.variables) | set(environment.secret_variables) if environment else set()
    )
    for scenario in scenarios:
        try:
            reads = member_reads(scenario.definition, "env")
        except TemplateError:
            continue  # a stored definition was validated when saved; nothing to learn here
        missing = sorted((reads or set()) - defined)
        if missing:
            where = f"environment {name!r}" if name else "no environment"
            raise ValidationError(
                {"environment": f"scenario {scenario.name!r} reads env.{missing[0]}: {where}"}
            )
    return environment


def launch_create(
    *,
    tags: str | None = None,
    scenarios: list[str] | None = None,
    environment: str | None = None,
    priority: str = Priority.NORMAL,
    via_queue: bool = False,
    payload: dict[str, Any] | None = None,
    data: list[Any] | None = None,
    created_by=None,
) -> Launch:
    """Start every scenario picked by ``tags`` or ``scenarios`` once per payload row: ``data``
    (a data-driven launch: each row one run, or one queue record, numbered from 1 as
    ``launchRow``) or the one ``payload``.

    Everything is checked before anything starts (``ValidationError`` naming the field, and the
    row for data rows); then the launch, its runs or queue records are inserted in one
    transaction (one INSERT per batch, per scenario) and every run's message goes out after it
    commits.
    """
    if priority not in Priority.values:
        raise ValidationError({"priority": f"must be one of {Priority.values}"})
    if payload is not None and data is not None:
        raise ValidationError({"data": "give either data rows or one payload, not both"})
    picked = launch_scenarios(tags=tags, names=scenarios)
    env = _environment(environment, picked)
    rows = data if data is not None else [payload or {}]
    problems = check_rows(
        rows,
        max_bytes=settings.ORCHESTRA_API_MAX_PAYLOAD_BYTES,
        max_rows=settings.ORCHESTRA_LAUNCH_MAX_RUNS,
    )
    if problems:
        raise ValidationError({"data": [str(problem) for problem in problems[:20]]})
    if len(rows) * len(picked) > settings.ORCHESTRA_LAUNCH_MAX_RUNS:
        raise ValidationError(
            {
                "data": f"{len(picked)} scenarios × {len(rows)} rows is more than "
                f"{settings.ORCHESTRA_LAUNCH_MAX_RUNS} runs (ORCHESTRA_LAUNCH_MAX_RUNS)"
            }
        )
    with transaction.atomic():
        launch = Launch.objects.create(
            tags=tags or "",
            scenario_names=[scenario.name for scenario in picked],
            environment=env,
            priority=priority,
            via_queue=via_queue,
            data_rows=len(rows) if data is not None else 0,
            created_by=created_by,
        )
        context: dict[str, Any] = {LAUNCH_ID_KEY: launch.id}
        if env is not None:
            context["env"] = environment_run_context(env)
        row_key = ROW_KEY if data is not None else None
        start = queue_records_create if via_queue else runs_start
        for scenario in picked:
            start(
                scenario=scenario,
                payloads=rows,
                priority=priority,
                context=context,
                launch_id=launch.id,
                row_key=row_key,
            )
    return launch


def launch_settle(*, launch_id: int) -> str | None:
    """Finish the launch if every row is settled; its final status, or None when it is still
    running or another process finished it. Only the process that finishes it sends
    ``launch_finished`` (after commit)."""
    launch = Launch.objects.filter(id=launch_id, status=LaunchStatus.RUNNING).first()
    if launch is None:
        return None
    # Settled outcomes never change again, so the status read here is the one the conditional
    # UPDATE may write: it succeeds only if, in that same statement, nothing is unsettled.
    status = rollup_status(launch_outcomes(launch))
    if status == LaunchStatus.RUNNING or not finish_launch(launch_id, status):
        return None
    transaction.on_commit(
        lambda: launch_finished.send(sender=Launch, launch_id=launch_id, status=status)
    )
    return status


def launches_sweep(*, limit: int = 100) -> int:
    """Settle running launches whose last run's news was lost (a crash after its commit, a
    record settled by the queue's sweep); the number finished. Run by Celery beat."""
    running = Launch.objects.filter(status=LaunchStatus.RUNNING).order_by("started_at")
    finished = 0
    for launch_id in running.values_list("id", flat=True)[:limit]:
        if launch_settle(launch_id=launch_id) is not None:
            finished += 1
    return finished
