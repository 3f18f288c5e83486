"""Django admin for the run engine: scenarios, runs with their steps, step results, dead letters.

Runs, step results and dead letters are records of what happened, so they are read-only here;
they change only through the services the actions call (cancel, re-run, re-drive), which are
the same ones the API uses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from orchestra.roles import OPERATE_PERMISSION
from orchestra.times import elapsed, format_age, format_duration
from runs import deadletters, selectors, services
from runs.api.serializers import payload_field
from runs.definition import DefinitionError, validate_definition
from runs.models import (
    DeadLetter,
    DeadLetterStatus,
    Priority,
    Scenario,
    ScenarioVersion,
    StepResult,
    StepStatus,
    TestRun,
    VersionOrigin,
)
from runs.reports import run_report
from runs.sources import SourceError, definition_from_source, source_diff, source_from_definition
from runs.states import RunStatus
from runs.stats_admin import FlakyFilter, ScenarioStatsAdminMixin

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
    return _preformatted(text)


def _yes_no(value: bool) -> str:
    # Plain words: the admin's boolean icons paint "no" as a red cross, read as a failure.
    return gettext("yes") if value else gettext("no")


def _preformatted(text: str):
    # Wrapped anywhere: one long word (an encoded body, a token) must not widen the page.
    return format_html(
        '<pre style="margin:0; white-space:pre-wrap; overflow-wrap:anywhere">{}</pre>', text
    )


def _run_link(run_id: int | None, scenario_name: str = ""):
    if run_id is None:
        return "—"
    url = reverse("admin:runs_testrun_change", args=[run_id])
    link = format_html('<a href="{}">{}</a>', url, _("run %(id)s") % {"id": run_id})
    return format_html("{} {}", link, scenario_name) if scenario_name else link


def _version_link(scenario_id: int, version: ScenarioVersion | None):
    if version is None:
        return "—"
    url = reverse("admin:runs_scenario_versions", args=[scenario_id])
    return format_html('<a href="{}?to={}">v{}</a>', url, version.number, version.number)


class DefinitionSourceField(forms.CharField):
    """A definition as YAML text (JSON is YAML too), kept as typed, comments and all."""

    widget = forms.Textarea(
        attrs={"rows": 30, "cols": 100, "spellcheck": "false", "style": "font-family:monospace"}
    )

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)


class ScenarioAdminForm(forms.ModelForm):
    definition_source = DefinitionSourceField(
        label=_("Definition (YAML)"),
        help_text=_(
            "Steps and finally steps in YAML; comments and layout are kept, and every change "
            "is kept as a version."
        ),
    )

    class Meta:
        model = Scenario
        fields = ["name", "description", "tags", "definition_source", "is_active"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.instance.definition_source:
            self.initial["definition_source"] = source_from_definition(self.instance.definition)

    def clean_definition_source(self) -> str:
        """Read the YAML and validate the definition: each problem names its step and field."""
        # Browsers send a textarea's lines ending in CRLF; files and the API use LF.
        text = self.cleaned_data["definition_source"].replace("\r\n", "\n")
        try:
            definition = definition_from_source(text)
            validate_definition(definition)
        except SourceError as exc:
            raise ValidationError(str(exc)) from None
        except DefinitionError as exc:
            raise ValidationError([str(problem) for problem in exc.problems]) from None
        self.instance.definition = definition
        return text


# What the "run with payload" form can start besides a run: apps above runs add theirs (the
# queue does, in queue_catalog/admin.py), so runs never imports them.
@dataclass(frozen=True)
class Launch:
    """One way to start a scenario: ``start(scenario=, payload=, priority=)`` returns the admin
    URL of what it started and a message saying what that is; a ``ValidationError`` says why
    it could not."""

    label: str
    start: Callable[..., tuple[str, str]]


def _start_run(*, scenario: Scenario, payload: dict, priority: str) -> tuple[str, str]:
    run = services.run_start(scenario=scenario, payload=payload, priority=priority)
    url = reverse("admin:runs_testrun_change", args=[run.id])
    return url, _("Started run %(id)s of %(name)s.") % {"id": run.id, "name": scenario.name}


LAUNCHES: dict[str, Launch] = {"run": Launch(_("start a run now"), _start_run)}


def register_launch(key: str, launch: Launch) -> None:
    """Offer ``launch`` on every scenario page's "run with payload" form."""
    LAUNCHES[key] = launch


class RunWithPayloadForm(forms.Form):
    priority = forms.ChoiceField(
        label=_("priority"), choices=Priority.choices, initial=Priority.NORMAL
    )
    payload = forms.CharField(
        label=_("payload"),
        initial="{}",
        strip=False,
        help_text=_("A JSON object; templates see it as payload."),
        widget=forms.Textarea(
            attrs={"rows": 6, "cols": 60, "spellcheck": "false", "style": "font-family:monospace"}
        ),
    )
    launch = forms.ChoiceField(label=_("how"), widget=forms.RadioSelect, initial="run")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["launch"].choices = [(key, item.label) for key, item in LAUNCHES.items()]

    def clean_payload(self) -> dict:
        """The payload as the API accepts it: a JSON object, bounded, storable."""
        try:
            value = json.loads(self.cleaned_data["payload"])
        except ValueError as exc:
            raise ValidationError(_("not valid JSON: %(error)s") % {"error": exc}) from None
        try:
            return payload_field().run_validation(value)
        except serializers.ValidationError as exc:
            raise ValidationError([str(message) for message in exc.detail]) from None


@admin.register(Scenario)
class ScenarioAdmin(ScenarioStatsAdminMixin, admin.ModelAdmin):
    form = ScenarioAdminForm
    list_display = [
        "name",
        "is_active",
        "tag_list",
        "step_count",
        "version_display",
        *ScenarioStatsAdminMixin.stats_list_display,
        "page_link",
    ]
    list_filter = ["is_active", FlakyFilter]
    search_fields = ["name", "description", "tags"]
    list_select_related = ["current_version"]
    readonly_fields = ["version_display", "created_at", "updated_at"]
    fields = [
        "name",
        "description",
        "tags",
        "definition_source",
        "is_active",
        "version_display",
        "created_at",
        "updated_at",
    ]
    actions = ["start_runs", "activate", "deactivate"]
    change_form_template = "admin/runs/scenario/change_form.html"
    recent_runs = 20
    stats_window = 50

    @admin.display(description=_("tags"))
    def tag_list(self, scenario: Scenario) -> str:
        return ", ".join(scenario.tags)

    @admin.display(description=_("steps"))
    def step_count(self, scenario: Scenario) -> int:
        definition = scenario.definition or {}
        return len(definition.get("steps", [])) + len(definition.get("finally", []))

    @admin.display(description=_("version"))
    def version_display(self, scenario: Scenario):
        return _version_link(scenario.id, scenario.current_version) if scenario.id else "—"

    @admin.display(description=_("runs"))
    def page_link(self, scenario: Scenario):
        url = reverse("admin:runs_scenario_page", args=[scenario.id])
        return format_html('<a href="{}">{}</a>', url, _("runs and launch"))

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    # Operators edit scenarios here as they do through the API: the same role, not a second one.
    def has_add_permission(self, request) -> bool:
        return self.has_operate_permission(request) or super().has_add_permission(request)

    def has_change_permission(self, request, obj=None) -> bool:
        return self.has_operate_permission(request) or super().has_change_permission(request, obj)

    def save_model(self, request, obj: Scenario, form, change: bool) -> None:
        services.scenario_store(
            scenario=obj,
            source=form.cleaned_data["definition_source"],
            origin=VersionOrigin.ADMIN,
            created_by=request.user,
        )

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:scenario_id>/page/", wrap(self.scenario_page), name="runs_scenario_page"),
            path(
                "<int:scenario_id>/versions/",
                wrap(self.versions_page),
                name="runs_scenario_versions",
            ),
            *super().get_urls(),
        ]

    def _scenario_or_404(self, request, scenario_id: int) -> Scenario:
        scenario = Scenario.objects.select_related("current_version").filter(id=scenario_id)
        scenario = scenario.first()
        if scenario is None or not self.has_view_permission(request, scenario):
            raise Http404(_("no scenario %(id)s") % {"id": scenario_id})
        return scenario

    def scenario_page(self, request, scenario_id: int):
        """Recent runs, pass rate and median duration, and the "run with payload" form."""
        scenario = self._scenario_or_404(request, scenario_id)
        may_operate = self.has_operate_permission(request)
        form = RunWithPayloadForm()
        status = 200
        if request.method == "POST":
            if not may_operate:
                raise PermissionDenied
            form = RunWithPayloadForm(request.POST)
            if form.is_valid():
                launch = LAUNCHES[form.cleaned_data["launch"]]
                try:
                    url, done = launch.start(
                        scenario=scenario,
                        payload=form.cleaned_data["payload"],
                        priority=form.cleaned_data["priority"],
                    )
                except ValidationError as exc:
                    form.add_error(None, exc.messages)
                else:
                    self.message_user(request, done, messages.SUCCESS)
                    return HttpResponseRedirect(url)
            status = 400
        stats = selectors.scenario_stats(scenario_ids=[scenario.id], window=self.stats_window).get(
            scenario.id
        ) or selectors.ScenarioStats(scenario.id, 0, 0, None, 0, None, False)
        runs = selectors.scenario_recent_runs(scenario_id=scenario.id, limit=self.recent_runs)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": scenario.name,
            "scenario": scenario,
            "stats": stats,
            "window": self.stats_window,
            "median": format_duration(stats.median_seconds),
            "trend_url": reverse("scenario-trend", args=[scenario.id]),
            "recent_runs": [_run_row(run) for run in runs],
            "form": form if may_operate else None,
            "version_link": _version_link(scenario.id, scenario.current_version),
        }
        return TemplateResponse(request, "admin/runs/scenario/page.html", context, status=status)

    def versions_page(self, request, scenario_id: int):
        """Every version, and the diff between two of them (``?from=&to=``; by default the
        latest and the one before it)."""
        scenario = self._scenario_or_404(request, scenario_id)
        versions = list(selectors.scenario_versions(scenario_id=scenario.id))
        by_number = {version.number: version for version in versions}
        newest = versions[0].number if versions else 0
        to = _version_number(request.GET.get("to"), newest)
        old = _version_number(request.GET.get("from"), (to or 0) - 1)
        shown = by_number.get(to)
        if request.GET and (shown is None or old is None or (old and old not in by_number)):
            raise Http404(_("no such version of %(name)s") % {"name": scenario.name})
        diff = []
        if shown is not None and old in by_number:
            diff = [
                (_diff_class(line), line)
                for line in source_diff(
                    by_number[old].source,
                    shown.source,
                    old_label=f"version {old}",
                    new_label=f"version {to}",
                )
            ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Versions of %(name)s") % {"name": scenario.name},
            "scenario": scenario,
            "versions": versions,
            "shown": shown,
            "old": by_number.get(old),
            "diff": diff,
        }
        return TemplateResponse(request, "admin/runs/scenario/versions.html", context)

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


def _version_number(text: str | None, default: int) -> int | None:
    """A version number from the query string: ``default`` when absent, None when not one."""
    if not text:
        return default
    return int(text) if text.isascii() and text.isdigit() else None


def _diff_class(line: str) -> str:
    if line.startswith(("+++", "---", "@@")):
        return "diff-head"
    return {"+": "diff-add", "-": "diff-del"}.get(line[:1], "")


def _run_row(run: TestRun) -> dict[str, Any]:
    return {
        "run": run,
        "link": _run_link(run.id),
        "status": _coloured(RUN_STATUS_COLOURS[run.status], run.get_status_display()),
        "version": _version_link(run.scenario_id, run.scenario_version),
        "duration": format_duration(elapsed(run.started_at, run.finished_at)),
        "age": format_age(run.queued_at),
    }


class ReadOnlyAdminMixin:
    """Records of what happened: visible to anyone who may view them, changed by nobody."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(TestRun)
class TestRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "scenario_name", "coloured_status", "priority", "duration", "age"]
    list_filter = ["status", "priority", "scenario"]
    search_fields = ["=id", "scenario__name", "worker", "error"]
    list_select_related = ["scenario"]
    actions = ["cancel_runs", "rerun_runs"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "scenario",
                    "scenario_version_display",
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
                    "owner",
                    "lease_expires_at",
                    "deadline_at",
                    "cancel_requested_at",
                    "queued_at",
                    "dispatched_at",
                    "resume_at",
                    "throttle_seconds",
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
        "scenario_version_display",
        "coloured_status",
        "owner",
        "context_display",
        "definition_display",
        "reports_display",
    ]

    @admin.display(description=_("status"), ordering="status")
    def coloured_status(self, run: TestRun):
        return _coloured(RUN_STATUS_COLOURS[run.status], run.get_status_display())

    @admin.display(description=_("scenario"), ordering="scenario__name")
    def scenario_name(self, run: TestRun) -> str:
        # Not the foreign key itself: the admin keeps a key's column on one line, however long.
        return run.scenario.name

    @admin.display(description=_("owner"))
    def owner(self, run: TestRun) -> str:
        # The worker executing the run (host:pid); a queue record's process code is the run.
        return run.worker or "—"

    @admin.display(description=_("duration"))
    def duration(self, run: TestRun) -> str:
        return format_duration(elapsed(run.started_at, run.finished_at))

    @admin.display(description=_("queued"), ordering="queued_at")
    def age(self, run: TestRun):
        return format_age(run.queued_at)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The stored fields, under the run's report: failures first, then every step."""
        run = self.get_object(request, object_id)
        context = {**(extra_context or {}), "report": run_report(run) if run else None}
        return super().change_view(request, object_id, form_url, extra_context=context)

    @admin.display(description=_("scenario version"))
    def scenario_version_display(self, run: TestRun):
        return _version_link(run.scenario_id, run.scenario_version)

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
        "position",
        "name",
        "plugin",
        "coloured_status",
        "duration",
        "age",
    ]
    list_filter = ["status", "plugin", "is_cleanup"]
    search_fields = ["=run__id", "name", "error"]
    list_select_related = ["run__scenario"]
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
                    "cleanup_display",
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
        "cleanup_display",
        "coloured_status",
        "request_display",
        "response_display",
        "assertions_display",
        "captures_display",
        "tries_display",
    ]

    @admin.display(description=_("run"), ordering="run")
    def run_link(self, step: StepResult):
        return _run_link(step.run_id, step.run.scenario.name)

    @admin.display(description=_("finally step"))
    def cleanup_display(self, step: StepResult) -> str:
        return _yes_no(step.is_cleanup)

    @admin.display(description=_("duration"), ordering="duration_ms")
    def duration(self, step: StepResult) -> str:
        return format_duration(None if step.duration_ms is None else step.duration_ms / 1000)

    @admin.display(description=_("started"), ordering="started_at")
    def age(self, step: StepResult):
        return format_age(step.started_at)

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
        "age",
        "task",
        "run_link",
        "short_reason",
        "coloured_status",
        "received_display",
    ]
    list_filter = ["status", "received", "task"]
    search_fields = ["task_id", "=run_id_hint", "reason"]
    fields = [
        "task",
        "task_id",
        "run_link",
        "reason",
        "coloured_status",
        "received_display",
        "created_at",
        "redriven_at",
        "content_type",
        "headers_display",
        "body_display",
    ]
    readonly_fields = [
        "run_link",
        "coloured_status",
        "received_display",
        "headers_display",
        "body_display",
    ]
    actions = ["redrive"]

    @admin.display(description=_("run"), ordering="run_id_hint")
    def run_link(self, letter: DeadLetter):
        return _run_link(letter.run_id_hint)

    @admin.display(description=_("reason"))
    def short_reason(self, letter: DeadLetter) -> str:
        return Truncator(letter.reason).chars(100) or "—"

    @admin.display(description=_("created"), ordering="created_at")
    def age(self, letter: DeadLetter):
        return format_age(letter.created_at)

    @admin.display(description=_("status"), ordering="status")
    def coloured_status(self, letter: DeadLetter):
        return _coloured(DEAD_LETTER_STATUS_COLOURS[letter.status], letter.get_status_display())

    @admin.display(description=_("drained from the broker"), ordering="received")
    def received_display(self, letter: DeadLetter) -> str:
        return _yes_no(letter.received)

    @admin.display(description=_("headers"))
    def headers_display(self, letter: DeadLetter):
        return _pretty_json(letter.headers)

    @admin.display(description=_("body"))
    def body_display(self, letter: DeadLetter):
        return _preformatted(letter.body) if letter.body else "—"

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
