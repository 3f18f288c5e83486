"""Admin of schedules (imported by ``launches.admin``): edits go through ``schedule_save``,
so the admin checks what the API checks and keeps the beat entry in step."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from launches.models import Schedule
from launches.schedules import schedule_check, schedule_delete, schedule_save

EDITABLE = [
    "name", "enabled", "tags", "scenario_names", "environment", "priority", "via_queue",
    "payload", "cron", "timezone", "interval_seconds", "overlap",
]  # fmt: skip


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = EDITABLE

    def clean(self):
        values = super().clean()
        try:
            schedule_check({field: values.get(field) for field in EDITABLE})
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, messages)
        return values

    def validate_constraints(self, exclude=None):
        # schedule_check names the field at fault; the check constraint backs it in the database.
        return None


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = [
        "name", "enabled", "when", "tags", "environment", "overlap", "via_queue",
        "last_fired_at", "last_launch_link", "skipped", "last_error",
    ]  # fmt: skip
    list_filter = ["enabled", "overlap", "via_queue", "environment"]
    search_fields = ["name", "tags"]
    list_select_related = ["environment"]
    readonly_fields = ["last_fired_at", "last_launch_link", "skipped", "last_error"]

    @admin.display(description=_("when"))
    def when(self, schedule: Schedule) -> str:
        if schedule.cron:
            return f"{schedule.cron} ({schedule.timezone})"
        return _("every %(n)s s") % {"n": schedule.interval_seconds}

    @admin.display(description=_("last launch"))
    def last_launch_link(self, schedule: Schedule):
        if schedule.last_launch_id is None:
            return "-"
        url = reverse("admin:launches_launch_change", args=[schedule.last_launch_id])
        return format_html('<a href="{}">{}</a>', url, schedule.last_launch_id)

    def save_model(self, request, obj, form, change) -> None:
        values = {field: form.cleaned_data.get(field) for field in EDITABLE}
        saved = schedule_save(schedule=obj if change else None, **values)
        obj.pk = saved.pk

    def delete_model(self, request, obj) -> None:
        schedule_delete(schedule=obj)

    def delete_queryset(self, request, queryset) -> None:
        for schedule in queryset:
            schedule_delete(schedule=schedule)
