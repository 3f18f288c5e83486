from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from launches.states import LaunchStatus
from runs.models import Priority


class Launch(models.Model):
    """One request that started many runs: a suite (scenarios picked by tag expression or by
    name) over one or many payload rows, optionally in an environment and through the queue.

    Its rows are its runs (or, through the queue, its queue records); its status is RUNNING
    until every row is settled, then the worst row outcome (``launches.states``).
    """

    status = models.CharField(
        _("status"), max_length=16, choices=LaunchStatus.choices, default=LaunchStatus.RUNNING
    )
    tags = models.CharField(
        _("tag expression"), max_length=1000, blank=True, help_text=_("e.g. smoke and not slow")
    )
    scenario_names = models.JSONField(
        _("scenarios"), default=list, blank=True, help_text=_("The scenarios the launch started.")
    )
    environment = models.ForeignKey(
        "targets.Environment",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="launches",
        verbose_name=_("environment"),
    )
    priority = models.CharField(
        _("priority"), max_length=16, choices=Priority.choices, default=Priority.NORMAL
    )
    via_queue = models.BooleanField(_("through the queue"), default=False)
    data_rows = models.PositiveIntegerField(
        _("data rows"), default=0, help_text=_("Payload rows of a data-driven launch; 0: one.")
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("started by"),
    )
    started_at = models.DateTimeField(_("started"), auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        verbose_name = _("launch")
        verbose_name_plural = _("launches")
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["started_at"],
                name="launch_running_idx",
                condition=models.Q(status="RUNNING"),
            )
        ]

    def __str__(self) -> str:
        return f"launch {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status != LaunchStatus.RUNNING


from launches.schedule_models import Overlap, Schedule  # noqa: E402  (models of launches/schedules.py)

__all__ = ["Launch", "Overlap", "Schedule"]
