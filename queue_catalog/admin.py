from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from orchestra.roles import OPERATE_PERMISSION
from orchestra.times import elapsed, format_age, format_duration
from queue_catalog import services
from queue_catalog.models import QueueRecord
from queue_catalog.states import RecordStatus
from runs.admin import Launch, register_launch
from runs.models import Scenario

STATUS_COLOURS = {
    RecordStatus.SCHEDULED: "#6c757d",
    RecordStatus.RUNNING: "#0d6efd",
    RecordStatus.DONE: "#198754",
    RecordStatus.ERROR: "#dc3545",
    RecordStatus.CANCELLED: "#adb5bd",
}
STOPPING_COLOUR = "#fd7e14"  # running, cancel requested


class LaunchParametersField(forms.JSONField):
    """Launch parameters: any JSON object, {} included; never null, a list or a number."""

    def __init__(self, **kwargs) -> None:
        # {} is "empty" to Django's JSONField, which would call it missing: the object check
        # below is the requirement instead.
        super().__init__(**{**kwargs, "required": False})

    def validate(self, value) -> None:
        super().validate(value)
        if not isinstance(value, dict):
            raise forms.ValidationError(
                _("Enter a JSON object, for example {}."), code="not_an_object"
            )


class QueueRecordForm(forms.ModelForm):
    payload = LaunchParametersField(
        label=capfirst(QueueRecord._meta.get_field("payload").verbose_name),
        initial=dict,
        help_text=QueueRecord._meta.get_field("payload").help_text,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 80, "style": "font-family:monospace"}),
    )

    class Meta:
        model = QueueRecord
        fields = ["scenario", "payload", "priority", "max_attempts"]


def _enqueue(*, scenario: Scenario, payload: dict, priority: str) -> tuple[str, str]:
    record = services.queue_record_create(scenario=scenario, payload=payload, priority=priority)
    url = reverse("admin:queue_catalog_queuerecord_change", args=[record.id])
    return url, _("Added queue record %(id)s of %(name)s.") % {
        "id": record.id,
        "name": scenario.name,
    }


register_launch(
    "queue",
    Launch(_("add a queue record (one at a time in its lane, re-run on failure)"), _enqueue),
)


@admin.register(QueueRecord)
class QueueRecordAdmin(admin.ModelAdmin):
    form = QueueRecordForm
    list_display = [
        "id",
        "scenario_name",
        "coloured_status",
        "start_count",
        "process_code_display",
        "duration",
        "age",
    ]
    list_filter = ["status", "scenario", "priority", "created_at"]
    search_fields = ["scenario__name", "payload"]
    list_select_related = ["scenario", "current_run"]
    actions = ["cancel_records", "retry_records", "move_records_to_front"]
    fieldsets = [
        (_("Run"), {"fields": ["scenario", "payload", "priority", "max_attempts"]}),
        (
            _("Execution"),
            {
                "fields": [
                    "status",
                    "process_code_display",
                    "started_at",
                    "finished_at",
                    "start_count",
                    "errors_display",
                    "next_attempt_at",
                    "cancel_requested_at",
                    "runs_display",
                ]
            },
        ),
        (_("Service information"), {"fields": ["created_at"]}),
    ]
    readonly_fields = [
        "status",
        "process_code_display",
        "started_at",
        "finished_at",
        "start_count",
        "errors_display",
        "next_attempt_at",
        "cancel_requested_at",
        "runs_display",
        "created_at",
    ]

    def get_fieldsets(self, request, obj=None):
        # A record being added has no execution yet: only what it runs.
        return self.fieldsets if obj else self.fieldsets[:1]

    def save_model(self, request, obj, form, change):
        # A record added here goes through the queue's service, like one added by the API: its
        # lane starts it at once if idle.
        obj.pk = services.queue_record_create(
            scenario=obj.scenario,
            payload=obj.payload,
            priority=obj.priority,
            max_attempts=obj.max_attempts,
        ).pk

    def has_change_permission(self, request, obj=None):
        # Records change only through the queue's services (the actions), never by hand.
        return False

    @admin.display(description=_("status"), ordering="status")
    def coloured_status(self, record: QueueRecord):
        colour = STOPPING_COLOUR if record.is_stopping else STATUS_COLOURS[record.status]
        return format_html('<b style="color:{}">{}</b>', colour, record.status_text)

    @admin.display(description=_("process code"), ordering="current_run")
    def process_code_display(self, record: QueueRecord):
        """The current run, linked, and the worker (owner) executing it, on one line."""
        run = record.current_run
        if run is None:
            return record.process_code or "—"
        link = format_html(
            '<a href="{}">{}</a>',
            reverse("admin:runs_testrun_change", args=[run.pk]),
            _("run %(id)s") % {"id": run.pk},
        )
        if not run.worker:
            return link
        return format_html(
            '{} · <span style="overflow-wrap:anywhere">{} {}</span>', link, _("owner"), run.worker
        )

    @admin.display(description=_("scenario"), ordering="scenario__name")
    def scenario_name(self, record: QueueRecord) -> str:
        # Not the foreign key itself: the admin keeps a key's column on one line, however long.
        return record.scenario.name

    @admin.display(description=_("duration"))
    def duration(self, record: QueueRecord) -> str:
        return format_duration(elapsed(record.started_at, record.finished_at))

    @admin.display(description=_("created"), ordering="created_at")
    def age(self, record: QueueRecord):
        return format_age(record.created_at)

    @admin.display(description=_("errors"))
    def errors_display(self, record: QueueRecord):
        if not record.errors:
            return "—"
        return format_html(
            '<pre style="margin:0; white-space:pre-wrap">{}</pre>', record.errors_text
        )

    @admin.display(description=_("runs"))
    def runs_display(self, record: QueueRecord):
        attempts = record.attempts.select_related("run").order_by("start_number")
        return (
            format_html_join(
                ", ",
                '<a href="/admin/runs/testrun/{}/change/">#{} run {} ({})</a>',
                (
                    (a.run_id, a.start_number, a.run_id, a.run.get_status_display())
                    for a in attempts
                ),
            )
            or "—"
        )

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    @admin.action(description=_("Cancel selected records"), permissions=["operate"])
    def cancel_records(self, request, queryset):
        records = self._apply(request, queryset, services.queue_record_cancel, None)
        stopping = sum(record.is_stopping for record in records)
        if len(records) - stopping:
            self.message_user(request, f"{len(records) - stopping} {_('cancelled')}")
        if stopping:
            self.message_user(
                request,
                f"{stopping} {_('running: cancel requested, the lane waits for the run to stop')}",
                messages.WARNING,
            )

    @admin.action(description=_("Retry selected records (ERROR only)"), permissions=["operate"])
    def retry_records(self, request, queryset):
        self._apply(request, queryset, services.queue_record_retry, _("sent back to the queue"))

    @admin.action(
        description=_("Move selected records to the front of their lane (waiting only)"),
        permissions=["operate"],
    )
    def move_records_to_front(self, request, queryset):
        # Last selected first, so that the selection keeps its order at the front.
        queryset = queryset.order_by("-lane_position")
        self._apply(request, queryset, services.queue_record_move_to_front, _("moved to the front"))

    def _apply(self, request, queryset, service, done_text) -> list[QueueRecord]:
        """Apply ``service`` to each selected record; a conflict is a message, never an error."""
        changed = []
        for record_id in queryset.values_list("id", flat=True):
            try:
                changed.append(service(record_id=record_id))
            except services.RecordConflict as exc:
                self.message_user(request, str(exc), messages.WARNING)
            except QueueRecord.DoesNotExist:
                self.message_user(request, f"record {record_id} no longer exists", messages.WARNING)
        if changed and done_text:
            self.message_user(request, f"{len(changed)} {done_text}", messages.SUCCESS)
        return changed
