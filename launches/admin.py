from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _

from launches.models import Launch
from launches.selectors import FAILING, launch_outcomes, launch_rows, row_of
from launches.states import LaunchStatus

STATUS_COLOURS = {
    LaunchStatus.RUNNING: "#0d6efd",
    LaunchStatus.PASSED: "#198754",
    LaunchStatus.FAILED: "#dc3545",
    LaunchStatus.ERROR: "#b02a37",
    LaunchStatus.CANCELLED: "#adb5bd",
}
FAILING_ROWS_SHOWN = 50


@admin.register(Launch)
class LaunchAdmin(admin.ModelAdmin):
    """Launches are started by the API and ``run_suite``; here they are inspected."""

    list_display = [
        "id",
        "coloured_status",
        "tags",
        "scenario_list",
        "environment",
        "via_queue",
        "data_rows",
        "started_at",
        "finished_at",
    ]
    list_filter = ["status", "via_queue", "environment", "priority", "started_at"]
    search_fields = ["tags", "scenario_names"]
    list_select_related = ["environment"]
    fields = [
        "coloured_status",
        "tags",
        "scenario_list",
        "environment",
        "priority",
        "via_queue",
        "data_rows",
        "created_by",
        "started_at",
        "finished_at",
        "counts_display",
        "failing_rows_display",
        "reports_display",
    ]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description=_("status"), ordering="status")
    def coloured_status(self, launch: Launch):
        colour = STATUS_COLOURS.get(launch.status, "#6c757d")
        return format_html('<b style="color:{}">{}</b>', colour, launch.get_status_display())

    @admin.display(description=_("scenarios"))
    def scenario_list(self, launch: Launch) -> str:
        return ", ".join(launch.scenario_names)

    @admin.display(description=_("rows by outcome"))
    def counts_display(self, launch: Launch):
        counts = sorted(launch_outcomes(launch).items())
        return format_html_join(", ", "{} {}", ((n, status.lower()) for status, n in counts))

    @admin.display(description=_("failing rows"))
    def failing_rows_display(self, launch: Launch):
        rows = [
            row_of(item)
            for item in launch_rows(launch, outcomes=list(FAILING))[:FAILING_ROWS_SHOWN]
        ]
        if not rows:
            return "—"
        return format_html_join(
            mark_safe("<br>"),
            '{} · row {} · <a href="{}">run {}</a> {}: {}',
            (
                (
                    row["scenario"],
                    row["row"] or "—",
                    reverse("admin:runs_testrun_change", args=[row["run"]]),
                    row["run"],
                    row["status"],
                    row["error"][:200],
                )
                for row in rows
                if row["run"] is not None
            ),
        )

    @admin.display(description=_("reports"))
    def reports_display(self, launch: Launch):
        return format_html(
            '<a href="{}">JUnit XML</a> · <a href="{}">HTML</a>',
            reverse("launch-junit", args=[launch.id]),
            reverse("launch-report", args=[launch.id]),
        )


from launches import schedule_admin  # noqa: E402, F401  (registers ScheduleAdmin)
