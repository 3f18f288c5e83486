"""Flaky detection in the admin: a mixin for ``ScenarioAdmin`` that adds the pass rate, flips,
a "flaky" column, a list filter, and a link to the scenario's trend chart.

Wire it with ``class ScenarioAdmin(ScenarioStatsAdminMixin, admin.ModelAdmin)`` and add
``*ScenarioStatsAdminMixin.stats_list_display`` to ``list_display`` and ``FlakyFilter`` to
``list_filter``. The statistics of a page are one query (``runs.selectors.scenario_stats``).
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from runs.models import Scenario
from runs.selectors import ScenarioStats, scenario_stats


class FlakyFilter(admin.SimpleListFilter):
    """Scenarios flagged flaky (or not) over their last N finished runs."""

    title = _("flaky")
    parameter_name = "flaky"

    def lookups(self, request, model_admin):
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request, queryset):
        if self.value() not in ("yes", "no"):
            return queryset
        flaky = [stats.scenario_id for stats in scenario_stats().values() if stats.flaky]
        if self.value() == "yes":
            return queryset.filter(id__in=flaky)
        return queryset.exclude(id__in=flaky)


class ScenarioStatsAdminMixin:
    """Columns from ``scenario_stats``, computed once for the page shown (kept on each row, so
    concurrent requests never share them)."""

    stats_list_display = ("pass_rate_display", "flips_display", "flaky_display", "trend_link")

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        rows = list(changelist.result_list)
        stats = scenario_stats(scenario_ids=[row.id for row in rows])
        for row in rows:
            row.run_stats = stats.get(row.id)
        return changelist

    @staticmethod
    def _stats(scenario: Scenario) -> ScenarioStats | None:
        return getattr(scenario, "run_stats", None)

    @admin.display(description=_("pass rate"))
    def pass_rate_display(self, scenario: Scenario) -> str:
        stats = self._stats(scenario)
        return f"{stats.pass_rate:.0%} of {stats.runs}" if stats else "-"

    @admin.display(description=_("flips"))
    def flips_display(self, scenario: Scenario) -> str:
        stats = self._stats(scenario)
        return str(stats.flips) if stats else "-"

    @admin.display(description=_("flaky"), boolean=True)
    def flaky_display(self, scenario: Scenario) -> bool | None:
        stats = self._stats(scenario)
        return stats.flaky if stats else None

    @admin.display(description=_("trend"))
    def trend_link(self, scenario: Scenario):
        return format_html(
            '<a href="{}">{}</a>', reverse("scenario-trend", args=[scenario.id]), _("trend")
        )
