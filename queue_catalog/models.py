from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from orchestra.times import format_time
from queue_catalog.states import RecordStatus
from runs.models import Priority, Scenario, TestRun

LANE_SEQUENCE = "queue_catalog_lane_position_seq"


class NextValue(models.Func):
    """``nextval('<sequence>')``: a fresh, ever-increasing number from a PostgreSQL sequence."""

    function = "nextval"
    output_field = models.BigIntegerField()

    def __init__(self, sequence: str) -> None:
        super().__init__(models.Value(sequence))


def default_max_attempts() -> int:
    return settings.ORCHESTRA_QUEUE_MAX_ATTEMPTS


class QueueRecord(models.Model):
    """One entry of the scenario queue ("Очередь"): a scenario launch waiting in its lane.

    A lane is every active record of one scenario, served strictly in ``lane_position`` order.
    """

    # Выполнить
    scenario = models.ForeignKey(
        Scenario, on_delete=models.PROTECT, related_name="queue_records", verbose_name=_("scenario")
    )
    payload = models.JSONField(
        _("launch parameters"),
        help_text=_("A JSON object the launched scenario reads as `payload`."),
    )
    # More launch context for every run of the record (its launch's, its environment's), under
    # the queue's own keys (``payload``, ``queueRecordId``, ``queueStartCount``).
    context = models.JSONField(_("launch context"), default=dict, blank=True)
    launch = models.ForeignKey(
        "launches.Launch",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="queue_records",
        verbose_name=_("launch"),
    )
    # Исполнение
    status = models.CharField(
        _("status"), max_length=16, choices=RecordStatus.choices, default=RecordStatus.SCHEDULED
    )
    process_code = models.CharField(
        _("process code"), max_length=64, blank=True, help_text=_("The id of the current run.")
    )
    current_run = models.ForeignKey(
        TestRun,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("current run"),
    )
    started_at = models.DateTimeField(_("start date"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finish date"), null=True, blank=True)
    start_count = models.PositiveIntegerField(_("start count"), default=0)
    errors = models.JSONField(
        _("errors"), default=list, blank=True, help_text=_("One entry per failed start.")
    )
    priority = models.CharField(
        _("priority"), max_length=16, choices=Priority.choices, default=Priority.NORMAL
    )
    max_attempts = models.PositiveIntegerField(_("max attempts"), default=default_max_attempts)
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True)
    # Set on a RUNNING record whose run was asked to stop: it keeps its lane until that run
    # has really ended (see queue_catalog.services.queue_record_cancel).
    cancel_requested_at = models.DateTimeField(_("cancel requested"), null=True, blank=True)
    # Служебная информация
    created_at = models.DateTimeField(_("created"), auto_now_add=True, editable=False)
    # Order within the lane: creation order; a retried record rejoins at the tail.
    lane_position = models.BigIntegerField(
        _("lane position"), db_default=NextValue(LANE_SEQUENCE), editable=False
    )

    class Meta:
        verbose_name = _("queue record")
        verbose_name_plural = _("queue records")
        ordering = ["-id"]
        constraints = [
            # The lane guarantee lives in the database, not only in code.
            models.UniqueConstraint(
                fields=["scenario"],
                condition=models.Q(status="RUNNING"),
                name="one_running_record_per_scenario",
            ),
            models.CheckConstraint(
                condition=models.Q(max_attempts__gte=1), name="max_attempts_at_least_one"
            ),
        ]
        indexes = [
            # The head of a lane and the list of active lanes, whatever the queue depth.
            models.Index(
                fields=["scenario", "lane_position"],
                name="queue_active_lane_idx",
                condition=models.Q(status__in=["SCHEDULED", "RUNNING"]),
            ),
            models.Index(fields=["status", "-id"], name="queue_status_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.scenario} ({self.status_text})"

    @property
    def is_stopping(self) -> bool:
        """Running, but asked to stop: its run has not ended yet."""
        return self.status == RecordStatus.RUNNING and self.cancel_requested_at is not None

    @property
    def status_text(self) -> str:
        """The status as people read it, "cancel requested" included."""
        if self.is_stopping:
            return str(_("Running, cancel requested"))
        return str(self.get_status_display())

    @property
    def errors_text(self) -> str:
        """The errors as the original catalog's multi-line text."""
        return "\n".join(
            f"#{entry['attempt']} {format_time(entry['at'])}: {entry['message']}"
            for entry in self.errors
        )


class QueueRun(models.Model):
    """A run launched for a record: one per start, so every attempt stays readable."""

    record = models.ForeignKey(
        QueueRecord, on_delete=models.CASCADE, related_name="attempts", verbose_name=_("record")
    )
    run = models.OneToOneField(
        TestRun, on_delete=models.CASCADE, related_name="queue_attempt", verbose_name=_("run")
    )
    start_number = models.PositiveIntegerField(_("start number"))

    class Meta:
        verbose_name = _("queue attempt")
        verbose_name_plural = _("queue attempts")
        ordering = ["record", "start_number"]
        constraints = [
            models.UniqueConstraint(fields=["record", "start_number"], name="one_run_per_start")
        ]

    def __str__(self) -> str:
        return f"record {self.record_id} start {self.start_number}: run {self.run_id}"
