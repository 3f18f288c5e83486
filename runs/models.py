from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from runs.definition import DefinitionError, validate_definition
from runs.states import RunStatus


class Priority(models.TextChoices):
    URGENT = "urgent", _("Urgent")
    NORMAL = "normal", _("Normal")
    BACKGROUND = "background", _("Background")


#: How a scenario tag is spelled; ``and``, ``or`` and ``not`` are the expression's words, not tags.
TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.:-]*"
TAG_MAX_LENGTH = 50
_TAG = RegexValidator(
    rf"^(?!(?:and|or|not)$){TAG_PATTERN}\Z",
    _("a tag is letters, digits and _ . : - (not 'and', 'or' or 'not')"),
)


class Scenario(models.Model):
    """A named, validated list of steps that can be launched as TestRuns."""

    name = models.CharField(_("name"), max_length=200, unique=True)
    description = models.TextField(_("description"), blank=True)
    definition = models.JSONField(_("definition"))
    # The text the definition was read from (YAML with its comments), as its author wrote it.
    definition_source = models.TextField(_("definition (YAML)"), blank=True)
    # The latest ScenarioVersion: a run launched in SQL takes its version from this row, in the
    # same statement that reads the definition (see runs.services.new_run_sql).
    current_version = models.ForeignKey(
        "ScenarioVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("version"),
    )
    is_active = models.BooleanField(_("active"), default=True)
    tags = ArrayField(
        models.CharField(max_length=TAG_MAX_LENGTH, validators=[_TAG]),
        verbose_name=_("tags"),
        default=list,
        blank=True,
        help_text=_("Suite launches pick scenarios by tag expression (smoke and not slow)."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("scenario")
        verbose_name_plural = _("scenarios")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # The last line of defence: an invalid definition never reaches the table, whichever
        # path (service, admin, shell) tries to store it. A save that leaves the definition
        # alone (update_fields without it: deactivation) stores a definition validated before.
        update_fields = kwargs.get("update_fields")
        if update_fields is None or "definition" in update_fields:
            self.clean()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        try:
            validate_definition(self.definition)
        except DefinitionError as exc:
            raise ValidationError({"definition": [str(p) for p in exc.problems]}) from None


class VersionOrigin(models.TextChoices):
    ADMIN = "admin", _("admin")
    API = "api", _("API")
    IMPORT = "import", _("import")
    CODE = "code", _("code or shell")
    MIGRATION = "migration", _("kept when versions began")


class ScenarioVersion(models.Model):
    """One saved state of a scenario's definition, kept; numbered 1, 2, ... per scenario."""

    # Indexed by the unique constraint (scenario, number), which also serves the key.
    scenario = models.ForeignKey(
        Scenario,
        on_delete=models.CASCADE,
        related_name="versions",
        verbose_name=_("scenario"),
        db_index=False,
    )
    number = models.PositiveIntegerField(_("number"))
    source = models.TextField(_("definition (YAML)"))
    definition = models.JSONField(_("definition"))
    origin = models.CharField(_("saved from"), max_length=16, choices=VersionOrigin.choices)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("saved by"),
    )
    created_at = models.DateTimeField(_("saved"), auto_now_add=True)

    class Meta:
        verbose_name = _("scenario version")
        verbose_name_plural = _("scenario versions")
        ordering = ["scenario", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["scenario", "number"], name="one_version_number")
        ]

    def __str__(self) -> str:
        return f"{self.scenario.name} v{self.number}"


class TestRun(models.Model):
    """One launch of a scenario, executed by a worker; see ``runs.states`` for its lifecycle."""

    __test__ = False  # not a pytest test class

    # Indexed by run_scenario_idx (scenario, -id), which also serves the foreign key.
    scenario = models.ForeignKey(
        Scenario,
        on_delete=models.PROTECT,
        related_name="runs",
        verbose_name=_("scenario"),
        db_index=False,
    )
    status = models.CharField(
        _("status"), max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED
    )
    priority = models.CharField(
        _("priority"), max_length=16, choices=Priority.choices, default=Priority.NORMAL
    )
    # The definition as it was at launch: a run records exactly what it executed.
    definition = models.JSONField(_("definition"))
    # Which saved version that definition was; empty for runs older than versions. No index:
    # nothing looks runs up by version, and every launch would pay for one.
    scenario_version = models.ForeignKey(
        ScenarioVersion,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="runs",
        verbose_name=_("scenario version"),
        db_index=False,
    )
    # payload, queueRecordId, queueStartCount ... as seen by templates.
    context = models.JSONField(_("launch context"), default=dict, blank=True)
    # The suite or data-driven launch this run belongs to (launches.Launch), if any.
    launch = models.ForeignKey(
        "launches.Launch",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="runs",
        verbose_name=_("launch"),
    )
    attempt = models.PositiveIntegerField(
        _("delivery attempt"), default=0, help_text=_("How many times a worker claimed this run.")
    )
    worker = models.CharField(
        _("process code"), max_length=255, blank=True, help_text=_("host:pid of the executor.")
    )
    lease_expires_at = models.DateTimeField(_("lease expires"), null=True, blank=True)
    # The Celery message (task id, retry number) whose delivery holds the current claim: a retry
    # of that message may take the claim over at once (see runs.leases).
    # Database defaults too: the queue's hand-off inserts runs in raw SQL.
    delivery_id = models.CharField(_("delivery"), max_length=255, blank=True, db_default="")
    delivery_retries = models.PositiveIntegerField(_("delivery retries"), default=0, db_default=0)
    deadline_at = models.DateTimeField(
        _("time limit"),
        null=True,
        blank=True,
        help_text=_("When the current attempt's time budget ends (the task's time limit)."),
    )
    cancel_requested_at = models.DateTimeField(
        _("cancel requested"),
        null=True,
        blank=True,
        help_text=_("A running run stays in progress until its worker confirms the cancel."),
    )
    # A run parked on a throttled rate key (runs.executor) is QUEUED with ``resume_at``: the sweep
    # publishes it when that time comes, and it continues at the step ``resume`` names.
    resume_at = models.DateTimeField(
        _("resumes at"),
        null=True,
        blank=True,
        help_text=_("A run waiting for a throttled rate key continues at this time."),
    )
    resume = models.JSONField(_("resume state"), null=True, blank=True)
    throttle_seconds = models.FloatField(
        _("throttled (s)"),
        default=0.0,
        db_default=0.0,
        help_text=_("Seconds this run waited on rate keys, of ORCHESTRA_MAX_THROTTLE_WAIT."),
    )
    queued_at = models.DateTimeField(_("queued"), auto_now_add=True, db_index=True)
    dispatched_at = models.DateTimeField(_("published"), null=True, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        verbose_name = _("test run")
        verbose_name_plural = _("test runs")
        ordering = ["-id"]
        permissions = [("operate", _("Can start, cancel, retry and edit runs and the queue"))]
        indexes = [
            models.Index(fields=["scenario", "-id"], name="run_scenario_idx"),
            # The sweeps look only at unfinished runs; a partial index keeps that cheap.
            models.Index(
                fields=["status", "queued_at"],
                name="run_unfinished_idx",
                condition=models.Q(status__in=["QUEUED", "IN_PROGRESS"]),
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.scenario.name} ({self.status})"

    @property
    def is_finished(self) -> bool:
        from runs.states import TERMINAL_STATUSES

        return self.status in TERMINAL_STATUSES


class StepStatus(models.TextChoices):
    PASSED = "PASSED", _("Passed")
    FAILED = "FAILED", _("Failed")
    ERROR = "ERROR", _("Error")
    SKIPPED = "SKIPPED", _("Skipped")


class StepResult(models.Model):
    """The recorded outcome of one step in one attempt of a run (written once, when it ends)."""

    # Indexed by the unique constraint (run, attempt, position), which also serves the key.
    run = models.ForeignKey(
        TestRun,
        on_delete=models.CASCADE,
        related_name="steps",
        verbose_name=_("run"),
        db_index=False,
    )
    attempt = models.PositiveIntegerField(_("delivery attempt"))
    position = models.PositiveIntegerField(_("position"))
    name = models.CharField(_("name"), max_length=200)
    plugin = models.CharField(_("plugin"), max_length=100)
    is_cleanup = models.BooleanField(_("finally step"), default=False)
    status = models.CharField(_("status"), max_length=16, choices=StepStatus.choices)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    duration_ms = models.FloatField(_("duration (ms)"), null=True, blank=True)
    request = models.JSONField(_("request"), default=dict, blank=True)
    response = models.JSONField(_("response"), default=dict, blank=True)
    captures = models.JSONField(_("captured variables"), default=dict, blank=True)
    assertions = models.JSONField(_("assertions"), default=list, blank=True)
    tries = models.JSONField(_("tries"), default=list, blank=True)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        verbose_name = _("step result")
        verbose_name_plural = _("step results")
        ordering = ["run", "attempt", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "attempt", "position"], name="one_result_per_step_and_attempt"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name}: {self.status}"


class DeadLetterStatus(models.TextChoices):
    WAITING = "WAITING", _("Waiting")
    REDRIVEN = "REDRIVEN", _("Re-driven")


class DeadLetter(models.Model):
    """A message that reached the dead-letter queue, kept visible and re-drivable."""

    task_id = models.CharField(_("task id"), max_length=64, blank=True, db_index=True)
    task = models.CharField(_("task"), max_length=200, blank=True)
    run_id_hint = models.BigIntegerField(_("run id"), null=True, blank=True)
    reason = models.TextField(_("reason"), blank=True)
    body = models.TextField(_("body"), blank=True)
    content_type = models.CharField(_("content type"), max_length=100, blank=True)
    headers = models.JSONField(_("headers"), default=dict, blank=True)
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=DeadLetterStatus.choices,
        default=DeadLetterStatus.WAITING,
    )
    received = models.BooleanField(
        _("drained from the broker"),
        default=False,
        help_text=_("False: only the reason is known yet."),
    )
    created_at = models.DateTimeField(_("dead-lettered"), auto_now_add=True, db_index=True)
    redriven_at = models.DateTimeField(_("re-driven"), null=True, blank=True)

    class Meta:
        verbose_name = _("dead letter")
        verbose_name_plural = _("dead letters")
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.task or 'message'} {self.task_id}: {self.reason[:60]}"
