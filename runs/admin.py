"""Django admin for the run engine: scenarios, runs with their steps, step results, dead letters.

Runs, step results and dead letters are records of what happened, so they are read-only here;
they change only through the services the actions call (cancel, re-run, re-drive), which are
the same ones the API uses.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from orchestra.roles import OPERATE_PERMISSION
from runs import deadletters, services
from runs.models import (
    DeadLetter,
    DeadLetterStatus,
    Scenario,
    StepResult,
    StepStatus,
    TestRun,
)
from runs.states import RunStatus

RUN_STATUS_COLOURS = {
    RunStatus.QUEUED: "#6c757d",
    RunStatus.IN_PROGRESS: "#0d6efd",
    RunStatus.PASSED: "#198754",
    RunStatus.FAILED: "#dc3545",
    RunStatus.ERROR: "#842029",
    RunStatus.CANCELLED: "#adb5bd",
}
STEP_STATUS_COLOURS = {
    StepStatus.PASSED: "#198754",
    StepStatus.FAILED: "#dc3545",
    StepStatus.ERROR: "#842029",
    StepStatus.SKIPPED: "#adb5bd",
}
DEAD_LETTER_STATUS_COLOURS = {
    DeadLetterStatus.WAITING: "#dc3545",
    DeadLetterStatus.REDRIVEN: "#6c757d",
}


def _coloured(colour: str, label: Any):
    return format_html('<b style="color:{}">{}</b>', colour, label)


def _pretty_json(value: Any):
    if value in (None, {}, []):
        return "—"
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return format_html('<pre style="margin:0; white-space:pre-wrap">{}</pre>', text)


def _run_link(run_id: int | None):
    if run_id is None:
        return "—"
    url = reverse("admin:runs_testrun_change", args=[run_id])
    return format_html('<a href="{}">{}</a>', url, _("run %(id)s") % {"id": run_id})


class PrettyJSONFormField(forms.JSONField):
    """A JSON form field that shows its value indented, so a definition is readable and editable."""

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value  # the text as typed, so a syntax error can be fixed in place
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)


class ScenarioAdminForm(forms.ModelForm):
    class Meta:
        model = Scenario
        fields = ["name", "description", "tags", "definition", "is_active"]

    def _post_clean(self):
        # The model's clean() validates the definition and reports every problem (naming the
        # step and field) on the definition field. When the text is not even JSON, the instance
        # still holds the previous definition (or none), and what the model would say about that
        # is noise next to "Enter a valid JSON": keep only the form's own error then.
        form_errors = len(self.errors.get("definition", ()))
        super()._post_clean()
        if form_errors:
            del self._errors["definition"][form_errors:]


@admin.register(Scenario)
class ScenarioAdmin(admin.ModelAdmin):
    form = ScenarioAdminForm
    list_display = ["name", "is_active", "tag_list", "step_count", "updated_at", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "description", "tags"]
    readonly_fields = ["created_at", "updated_at"]
    fields = [
        "name",
        "description",
        "tags",
        "definition",
        "is_active",
        "created_at",
        "updated_at",
    ]
    actions = ["start_runs", "activate", "deactivate"]
    formfield_overrides = {
        models.JSONField: {
            "form_class": PrettyJSONFormField,
            "widget": forms.Textarea(
                attrs={"rows": 30, "cols": 100, "style": "font-family:monospace"}
            ),
        }
    }

    @admin.display(description=_("tags"))
    def tag_list(self, scenario: Scenario) -> str:
        return ", ".join(scenario.tags)

    @admin.display(description=_("steps"))
    def step_count(self, scenario: Scenario) -> int:
        definition = scenario.definition or {}
        return len(definition.get("steps", [])) + len(definition.get("finally", []))

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    @admin.action(description=_("Start a run of each selected scenario"), permissions=["operate"])
    def start_runs(self, request, queryset):
        started = []
        for scenario in queryset:
            try:
                started.append(services.run_start(scenario=scenario))
            except ValidationError as exc:
                self.message_user(
                    request,
                    _("Scenario %(name)s: %(problems)s")
                    % {"name": scenario.name, "problems": "; ".join(exc.messages)},
                    messages.WARNING,
                )
        if started:
            ids = ", ".join(str(run.id) for run in started)
            self.message_user(
                request,
                ngettext("Started run %(ids)s.", "Started runs %(ids)s.", len(started))
                % {"ids": ids},
                messages.SUCCESS,
            )

    @admin.action(description=_("Activate selected scenarios"), permissions=["change"])
    def activate(self, request, queryset):
        self._set_active(request, queryset, is_active=True)

    @admin.action(
        description=_("Deactivate selected scenarios (no new runs)"), permissions=["change"]
    )
    def deactivate(self, request, queryset):
        self._set_active(request, queryset, is_active=False)

    def _set_active(self, request, queryset, *, is_active: bool) -> None:
        for scenario in queryset:
            services.scenario_set_active(scenario=scenario, is_active=is_active)
        self.message_user(
            request,
            ngettext(
                "%(count)d scenario updated.", "%(count)d scenarios updated.", queryset.count()
            )
            % {"count": queryset.count()},
            messages.SUCCESS,
        )


class ReadOnlyAdminMixin:
    """Records of what happened: visible to anyone who may view them, changed by nobody."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class StepResultInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = StepResult
    fields = [
        "attempt",
        "position",
        "name",
        "plugin",
        "is_cleanup",
        "coloured_status",
        "duration_ms",
        "short_error",
    ]
    readonly_fields = fields
    ordering = ["attempt", "position"]
    extra = 0
    show_change_link = True
    verbose_name_plural = _("step results (every attempt, in order)")

    @admin.display(description=_("status"))
    def coloured_status(self, step: StepResult):
        return _coloured(STEP_STATUS_COLOURS[step.status], step.get_status_display())

    @admin.display(description=_("error"))
    def short_error(self, step: StepResult) -> str:
        return Truncator(step.error).chars(200) or "—"


@admin.register(TestRun)
class TestRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "scenario",
        "coloured_status",
        "priority",
        "attempt",
        "worker",
        "queued_at",
        "started_at",
        "finished_at",
    ]
    list_filter = ["status", "priority", "scenario"]
    search_fields = ["=id", "scenario__name", "worker", "error"]
    list_select_related = ["scenario"]
    inlines = [StepResultInline]
    actions = ["cancel_runs", "rerun_runs"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "scenario",
                    "coloured_status",
                    "priority",
                    "context_display",
                    "reports_display",
                ]
            },
        ),
        (
            _("Execution"),
            {
                "fields": [
                    "attempt",
                    "worker",
                    "lease_expires_at",
                    "deadline_at",
                    "cancel_requested_at",
                    "queued_at",
                    "dispatched_at",
                    "started_at",
                    "finished_at",
                    "error",
                ]
            },
        ),
        (
            _("Definition as launched"),
            {"fields": ["definition_display"], "classes": ["collapse"]},
        ),
    ]
    readonly_fields = [
        "coloured_status",
        "context_display",
        "definition_display",
        "reports_display",
    ]

    @admin.display(description=_("status"), ordering="status")
    def coloured_status(self, run: TestRun):
        return _coloured(RUN_STATUS_COLOURS[run.status], run.get_status_display())

    @admin.display(description=_("reports"))
    def reports_display(self, run: TestRun):
        return format_html(
            '<a href="{}" target="_blank">{}</a> · <a href="{}">{}</a>',
            reverse("run-report", args=[run.pk]),
            _("HTML report"),
            reverse("run-junit", args=[run.pk]),
            _("JUnit XML"),
        )

    @admin.display(description=_("launch context"))
    def context_display(self, run: TestRun):
        return _pretty_json(run.context)

    @admin.display(description=_("definition"))
    def definition_display(self, run: TestRun):
        return _pretty_json(run.definition)

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    @admin.action(description=_("Cancel selected runs"), permissions=["operate"])
    def cancel_runs(self, request, queryset):
        cancelled = requested = 0
        for run_id in queryset.values_list("id", flat=True):
            try:
                run = services.run_cancel(run_id=run_id)
            except services.RunConflict as exc:
                self.message_user(request, str(exc), messages.WARNING)
            except TestRun.DoesNotExist:
                continue
            else:
                if run.is_finished:
                    cancelled += 1
                else:
                    requested += 1
        if cancelled:
            self.message_user(
                request,
                ngettext("%(count)d run cancelled.", "%(count)d runs cancelled.", cancelled)
                % {"count": cancelled},
                messages.SUCCESS,
            )
        if requested:
            self.message_user(
                request,
                ngettext(
                    "%(count)d running run asked to stop; it is cancelled once its worker stops.",
                    "%(count)d running runs asked to stop; each is cancelled once its worker "
                    "stops.",
                    requested,
                )
                % {"count": requested},
                messages.SUCCESS,
            )

    @admin.action(
        description=_("Re-run selected runs (same scenario, payload and priority)"),
        permissions=["operate"],
    )
    def rerun_runs(self, request, queryset):
        started = []
        for run_id in queryset.values_list("id", flat=True):
            try:
                started.append(services.run_rerun(run_id=run_id))
            except ValidationError as exc:
                self.message_user(
                    request,
                    _("Run %(id)s: %(problems)s")
                    % {"id": run_id, "problems": "; ".join(exc.messages)},
                    messages.WARNING,
                )
        if started:
            ids = ", ".join(str(run.id) for run in started)
            self.message_user(
                request,
                ngettext("Started run %(ids)s.", "Started runs %(ids)s.", len(started))
                % {"ids": ids},
                messages.SUCCESS,
            )


@admin.register(StepResult)
class StepResultAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "run_link",
        "attempt",
        "position",
        "name",
        "plugin",
        "coloured_status",
        "duration_ms",
        "started_at",
    ]
    list_filter = ["status", "plugin", "is_cleanup"]
    search_fields = ["=run__id", "name", "error"]
    list_select_related = ["run"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "run_link",
                    "attempt",
                    "position",
                    "name",
                    "plugin",
                    "is_cleanup",
                    "coloured_status",
                    "started_at",
                    "finished_at",
                    "duration_ms",
                    "error",
                ]
            },
        ),
        (
            _("Details"),
            {
                "fields": [
                    "request_display",
                    "response_display",
                    "assertions_display",
                    "captures_display",
                    "tries_display",
                ]
            },
        ),
    ]
    readonly_fields = [
        "run_link",
        "coloured_status",
        "request_display",
        "response_display",
        "assertions_display",
        "captures_display",
        "tries_display",
    ]

    @admin.display(description=_("run"), ordering="run")
    def run_link(self, step: StepResult):
        return _run_link(step.run_id)

    @admin.display(description=_("status"), ordering="status")
    def coloured_status(self, step: StepResult):
        return _coloured(STEP_STATUS_COLOURS[step.status], step.get_status_display())

    @admin.display(description=_("request"))
    def request_display(self, step: StepResult):
        return _pretty_json(step.request)

    @admin.display(description=_("response"))
    def response_display(self, step: StepResult):
        return _pretty_json(step.response)

    @admin.display(description=_("assertions"))
    def assertions_display(self, step: StepResult):
        return _pretty_json(step.assertions)

    @admin.display(description=_("captured variables"))
    def captures_display(self, step: StepResult):
        return _pretty_json(step.captures)

    @admin.display(description=_("tries"))
    def tries_display(self, step: StepResult):
        return _pretty_json(step.tries)


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "created_at",
        "task",
        "run_link",
        "short_reason",
        "coloured_status",
        "received",
        "redriven_at",
    ]
    list_filter = ["status", "received", "task"]
    search_fields = ["task_id", "=run_id_hint", "reason"]
    fields = [
        "task",
        "task_id",
        "run_link",
        "reason",
        "coloured_status",
        "received",
        "created_at",
        "redriven_at",
        "content_type",
        "headers_display",
        "body",
    ]
    readonly_fields = ["run_link", "coloured_status", "headers_display"]
    actions = ["redrive"]

    @admin.display(description=_("run"), ordering="run_id_hint")
    def run_link(self, letter: DeadLetter):
        return _run_link(letter.run_id_hint)

    @admin.display(description=_("reason"))
    def short_reason(self, letter: DeadLetter) -> str:
        return Truncator(letter.reason).chars(120) or "—"

    @admin.display(description=_("status"), ordering="status")
    def coloured_status(self, letter: DeadLetter):
        return _coloured(DEAD_LETTER_STATUS_COLOURS[letter.status], letter.get_status_display())

    @admin.display(description=_("headers"))
    def headers_display(self, letter: DeadLetter):
        return _pretty_json(letter.headers)

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    @admin.action(
        description=_("Re-drive selected dead letters to the runs queue"), permissions=["operate"]
    )
    def redrive(self, request, queryset):
        redriven = 0
        for letter_id in queryset.values_list("id", flat=True):
            try:
                deadletters.dead_letter_redrive(dead_letter_id=letter_id)
            except deadletters.DeadLetterConflict as exc:
                self.message_user(request, str(exc), messages.WARNING)
            else:
                redriven += 1
        if redriven:
            self.message_user(
                request,
                ngettext("%(count)d message re-driven.", "%(count)d messages re-driven.", redriven)
                % {"count": redriven},
                messages.SUCCESS,
            )
