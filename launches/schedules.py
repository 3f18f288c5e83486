"""Schedules: what to launch and when, kept in step with their django-celery-beat entries, and
the one function that decides whether a fire starts a launch.

Beat (``celery beat -S django``) only triggers: each schedule's PeriodicTask sends
``launches.fire_schedule`` with the schedule id. Whether that message starts a launch is a
compare-and-swap on ``Schedule.last_fired_at`` in PostgreSQL, so fires that piled up while
workers were down (or beat caught up after downtime) start one catch-up launch, not hundreds:
the first one wins, every other within half a period updates nothing. Messages also expire
after one period, so a backlog mostly never reaches the database.
"""

from __future__ import annotations

import json
import logging
import zoneinfo
from datetime import timedelta
from typing import Any

from celery.schedules import crontab
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from launches.models import Launch, Overlap, Schedule
from launches.services import launch_create, launch_scenarios
from launches.states import LaunchStatus
from launches.tags import TagExpressionError, parse_tag_expression
from runs.models import Priority
from targets.models import Environment

logger = logging.getLogger(__name__)

FIRE_TASK = "launches.fire_schedule"
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
#: Shortest gap between two slots of any cron expression (cron counts minutes).
CRON_RESOLUTION = timedelta(minutes=1)
MIN_INTERVAL_SECONDS = 1


def cron_fields(expression: str) -> dict[str, str]:
    """The five fields of a cron expression by name; ``ValueError`` says what is wrong."""
    parts = expression.split()
    if len(parts) != len(CRON_FIELDS):
        raise ValueError(
            "a cron expression has 5 fields: minute hour day-of-month month day-of-week"
        )
    fields = dict(zip(CRON_FIELDS, parts, strict=True))
    try:
        crontab(**fields)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a cron expression: {exc}") from None
    return fields


def fire_gap(*, cron: str, interval_seconds: int | None) -> timedelta:
    """How long after a fire another one is the same slot: half the shortest period."""
    period = CRON_RESOLUTION if cron else timedelta(seconds=interval_seconds or 0)
    return period / 2


def _period_seconds(*, cron: str, interval_seconds: int | None) -> int:
    return int(CRON_RESOLUTION.total_seconds()) if cron else int(interval_seconds or 0)


def schedule_check(values: dict[str, Any]) -> dict[str, Any]:
    """Check a schedule's fields (all of them, as they will be stored) and resolve the
    environment name; ``ValidationError`` maps each bad field to its message."""
    errors: dict[str, str] = {}
    cron = (values.get("cron") or "").strip()
    interval = values.get("interval_seconds")
    if bool(cron) == (interval is not None):
        errors["cron"] = "give either a cron expression or interval_seconds"
    elif cron:
        try:
            cron = " ".join(cron_fields(cron).values())
        except ValueError as exc:
            errors["cron"] = str(exc)
    elif interval < MIN_INTERVAL_SECONDS:
        errors["interval_seconds"] = f"must be at least {MIN_INTERVAL_SECONDS}"
    tz = values.get("timezone") or "UTC"
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        errors["timezone"] = f"unknown time zone {tz!r} (an IANA name such as Europe/Berlin)"
    if values.get("overlap", Overlap.SKIP) not in Overlap.values:
        errors["overlap"] = f"must be one of {Overlap.values}"
    if values.get("priority", Priority.NORMAL) not in Priority.values:
        errors["priority"] = f"must be one of {Priority.values}"
    tags, names = values.get("tags") or "", values.get("scenario_names") or []
    if tags and not names:
        try:
            parse_tag_expression(tags)
        except TagExpressionError as exc:
            errors["tags"] = str(exc)
    else:
        try:
            launch_scenarios(tags=tags or None, names=names or None)
        except ValidationError as exc:
            errors.update({key: " ".join(msgs) for key, msgs in exc.message_dict.items()})
    environment = values.get("environment")
    if isinstance(environment, str):
        found = Environment.objects.filter(name=environment).first()
        if found is None:
            errors["environment"] = f"no environment {environment!r}"
        environment = found
    if errors:
        raise ValidationError(errors)
    return {
        **values,
        "cron": cron,
        "timezone": tz,
        "tags": tags,
        "scenario_names": names,
        "environment": environment,
    }


def _sync_periodic_task(schedule: Schedule) -> PeriodicTask:
    """Create or update the schedule's beat entry (beat's DatabaseScheduler sees the change)."""
    task = schedule.periodic_task or PeriodicTask(name=f"launches.schedule:{schedule.id}")
    if schedule.cron:
        task.crontab, _ = CrontabSchedule.objects.get_or_create(
            **cron_fields(schedule.cron), timezone=zoneinfo.ZoneInfo(schedule.timezone)
        )
        task.interval = None
    else:
        task.interval, _ = IntervalSchedule.objects.get_or_create(
            every=schedule.interval_seconds, period=IntervalSchedule.SECONDS
        )
        task.crontab = None
    task.task = FIRE_TASK
    task.kwargs = json.dumps({"schedule_id": schedule.id})
    task.enabled = schedule.enabled
    task.expire_seconds = _period_seconds(
        cron=schedule.cron, interval_seconds=schedule.interval_seconds
    )
    task.description = f"Launches schedule {schedule.name!r}"
    task.save()
    return task


@transaction.atomic
def schedule_save(*, schedule: Schedule | None = None, **values: Any) -> Schedule:
    """Create (no ``schedule``) or update a schedule from its field values, checked first,
    and its beat entry, in one transaction."""
    current = {}
    if schedule is not None:
        current = {
            field: getattr(schedule, field)
            for field in (
                "name", "enabled", "tags", "scenario_names", "environment", "priority",
                "via_queue", "payload", "cron", "timezone", "interval_seconds", "overlap",
            )
        }  # fmt: skip
    checked = schedule_check({**current, **values})
    if schedule is None:
        schedule = Schedule(**checked)
    else:
        for field, value in checked.items():
            setattr(schedule, field, value)
    try:
        schedule.validate_unique()
    except ValidationError as exc:
        raise ValidationError({k: " ".join(v) for k, v in exc.message_dict.items()}) from None
    schedule.save()
    task = _sync_periodic_task(schedule)
    if schedule.periodic_task_id != task.id:
        schedule.periodic_task = task
        schedule.save(update_fields=["periodic_task"])
    return schedule


@transaction.atomic
def schedule_delete(*, schedule: Schedule) -> None:
    """Delete a schedule and its beat entry."""
    task_id = schedule.periodic_task_id
    schedule.delete()
    PeriodicTask.objects.filter(id=task_id).delete()


def schedule_fire(*, schedule_id: int) -> Launch | None:
    """Start the schedule's launch for this fire, or nothing: another fire of the same slot
    won, the schedule is disabled or gone, or its overlap policy is ``skip`` and its previous
    launch still runs. With ``queue`` the launch goes through the lanes, behind the previous
    one. A schedule whose launch is refused (say no scenario matches its tags any more) keeps
    the reason in ``last_error``; nothing raises into beat's task."""
    schedule = Schedule.objects.filter(id=schedule_id, enabled=True).first()
    if schedule is None:
        return None
    gap = fire_gap(cron=schedule.cron, interval_seconds=schedule.interval_seconds)
    with transaction.atomic():
        # The database's clock, so fires handled on different hosts compare alike.
        won = (
            Schedule.objects.filter(id=schedule_id, enabled=True)
            .filter(Q(last_fired_at__isnull=True) | Q(last_fired_at__lte=Now() - gap))
            .update(last_fired_at=Now())
        )
        if not won:
            return None
        previous_running = Launch.objects.filter(
            id=schedule.last_launch_id, status=LaunchStatus.RUNNING
        ).exists()
        if previous_running and schedule.overlap == Overlap.SKIP:
            Schedule.objects.filter(id=schedule_id).update(skipped=F("skipped") + 1)
            logger.info(
                "schedule %s skipped: launch %s still runs", schedule_id, schedule.last_launch_id
            )
            return None
        try:
            with transaction.atomic():
                launch = launch_create(
                    tags=schedule.tags or None,
                    scenarios=schedule.scenario_names or None,
                    environment=schedule.environment.name if schedule.environment_id else None,
                    priority=schedule.priority,
                    via_queue=schedule.via_queue or schedule.overlap == Overlap.QUEUE,
                    payload=schedule.payload or None,
                )
        except ValidationError as exc:
            error = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            Schedule.objects.filter(id=schedule_id).update(last_error=error)
            logger.warning("schedule %s launched nothing: %s", schedule_id, error)
            return None
        Schedule.objects.filter(id=schedule_id).update(last_launch=launch, last_error="")
    return launch
