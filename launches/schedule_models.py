"""The Schedule model: a launch (a scenario or a suite) started by Celery beat from a cron
expression in a time zone, or at a fixed interval. Imported by ``launches.models``."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from runs.models import Priority


class Overlap(models.TextChoices):
    SKIP = "skip", _("Skip while the previous launch runs")
    QUEUE = "queue", _("Queue it through the lanes")


class Schedule(models.Model):
    """What to launch (``tags`` or ``scenario_names``, environment, payload, through the queue
    or not) and when (``cron`` in ``timezone``, or every ``interval_seconds``).

    Its beat entry is a ``django_celery_beat`` PeriodicTask kept in step by
    ``launches.schedules.schedule_save``; which fire starts a launch is decided here, in
    PostgreSQL (``last_fired_at``), not by beat or the broker.
    """

    name = models.CharField(_("name"), max_length=200, unique=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    tags = models.CharField(_("tag expression"), max_length=1000, blank=True)
    scenario_names = models.JSONField(_("scenarios"), default=list, blank=True)
    environment = models.ForeignKey(
        "targets.Environment",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="schedules",
        verbose_name=_("environment"),
    )
    priority = models.CharField(
        _("priority"), max_length=16, choices=Priority.choices, default=Priority.NORMAL
    )
    via_queue = models.BooleanField(_("through the queue"), default=False)
    payload = models.JSONField(_("payload"), default=dict, blank=True)
    cron = models.CharField(
        _("cron expression"),
        max_length=200,
        blank=True,
        help_text=_("minute hour day-of-month month day-of-week, e.g. */15 * * * *"),
    )
    timezone = models.CharField(_("time zone"), max_length=64, default="UTC")
    interval_seconds = models.PositiveIntegerField(_("interval (seconds)"), null=True, blank=True)
    overlap = models.CharField(
        _("overlap"), max_length=8, choices=Overlap.choices, default=Overlap.SKIP
    )
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
    )
    last_launch = models.ForeignKey(
        "launches.Launch",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
        verbose_name=_("last launch"),
    )
    last_fired_at = models.DateTimeField(_("last fired"), null=True, blank=True, editable=False)
    skipped = models.PositiveIntegerField(
        _("skipped fires"), default=0, editable=False, help_text=_("Fires skipped by overlap.")
    )
    last_error = models.TextField(_("last error"), blank=True, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("schedule")
        verbose_name_plural = _("schedules")
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(cron="") & models.Q(interval_seconds__isnull=False))
                | (~models.Q(cron="") & models.Q(interval_seconds__isnull=True)),
                name="schedule_cron_xor_interval",
            )
        ]

    def __str__(self) -> str:
        return self.name
