"""A scenario's trend: pass/fail and duration of its latest finished runs, drawn as an inline
SVG on the server (no script, no external file), served in the admin at
``/admin/trends/scenario/<id>/``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from runs.models import Scenario, TestRun
from runs.selectors import scenario_stats
from runs.states import RunStatus

TREND_RUNS = 60
WIDTH, HEIGHT, PAD, STRIP = 720, 220, 36, 10
COLOURS = {RunStatus.PASSED: "#198754", RunStatus.FAILED: "#dc3545", RunStatus.ERROR: "#6f1d1b"}


@dataclass(frozen=True)
class TrendPoint:
    run_id: int
    status: str
    finished_at: datetime
    seconds: float


def trend_points(*, scenario_id: int, limit: int = TREND_RUNS) -> list[TrendPoint]:
    """The scenario's latest ``limit`` finished runs (passed, failed, error), oldest first."""
    runs = (
        TestRun.objects.filter(
            scenario_id=scenario_id, status__in=list(COLOURS), finished_at__isnull=False
        )
        .order_by("-finished_at", "-id")
        .values_list("id", "status", "started_at", "finished_at")[:limit]
    )
    return [
        TrendPoint(
            run_id=run_id,
            status=status,
            finished_at=finished,
            seconds=(finished - started).total_seconds() if started else 0.0,
        )
        for run_id, status, started, finished in reversed(runs)
    ]


def trend_svg(points: list[TrendPoint]) -> SafeString:
    """One bar per run, oldest left: its height the duration, its colour the outcome, and a
    strip under the axis that shows pass/fail alone. Every text is escaped."""
    if not points:
        return mark_safe(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="40" role="img">'
            '<text x="4" y="24" font-size="13">no finished runs yet</text></svg>'
        )
    top = max(point.seconds for point in points) or 1.0
    plot_w, plot_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD - STRIP
    slot = plot_w / len(points)
    bar = max(1.0, slot * 0.8)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-family="sans-serif" font-size="11">',
        "<title>pass/fail and duration per run, oldest left</title>",
        f'<line x1="{PAD}" y1="{PAD + plot_h}" x2="{WIDTH - PAD}" y2="{PAD + plot_h}" '
        'stroke="#888"/>',
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end">{top:.2f}s</text>',
        f'<text x="{PAD - 4}" y="{PAD + plot_h}" text-anchor="end">0</text>',
    ]
    for index, point in enumerate(points):
        x = PAD + index * slot
        h = max(1.0, plot_h * point.seconds / top)
        colour = COLOURS[point.status]
        label = escape(
            f"run {point.run_id}: {point.status}, {point.seconds:.3f}s, "
            f"{point.finished_at:%Y-%m-%d %H:%M:%S}"
        )
        parts.append(
            f"<g><title>{label}</title>"
            f'<rect x="{x:.1f}" y="{PAD + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
            f'fill="{colour}" fill-opacity="0.55"/>'
            f'<rect class="outcome" data-status="{point.status}" x="{x:.1f}" '
            f'y="{PAD + plot_h + 3}" width="{bar:.1f}" height="{STRIP}" fill="{colour}"/></g>'
        )
    first, last = points[0].finished_at, points[-1].finished_at
    parts.append(
        f'<text x="{PAD}" y="{HEIGHT - 6}">{first:%Y-%m-%d %H:%M}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 6}" text-anchor="end">{last:%Y-%m-%d %H:%M}</text>'
        "</svg>"
    )
    return mark_safe("".join(parts))


@staff_member_required
def scenario_trend_view(request: HttpRequest, scenario_id: int) -> HttpResponse:
    """The admin page of one scenario's trend chart and its flaky statistics."""
    if not request.user.has_perm("runs.view_scenario"):
        raise PermissionDenied
    scenario = Scenario.objects.filter(id=scenario_id).first()
    if scenario is None:
        raise Http404
    return render(
        request,
        "runs/trend.html",
        {
            **admin.site.each_context(request),
            "title": f"{scenario.name}: trend",
            "scenario": scenario,
            "chart": trend_svg(trend_points(scenario_id=scenario.id)),
            "stats": scenario_stats(scenario_ids=[scenario.id]).get(scenario.id),
        },
    )
