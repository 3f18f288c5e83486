"""Flaky detection (pass rate, median duration, flips over the last N finished runs) in one
query, in the API and the admin mixin; the trend chart as inline SVG in the admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.sites import AdminSite
from django.contrib.auth.models import User
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs.models import Scenario, TestRun
from runs.selectors import scenario_stats
from runs.stats_admin import FlakyFilter, ScenarioStatsAdminMixin
from tests.factories import make_scenario

pytestmark = pytest.mark.django_db


def history(scenario: Scenario, outcomes: str, seconds: list[float] | None = None) -> None:
    """Finished runs oldest first: P passed, F failed, E error, C cancelled."""
    names = {"P": "PASSED", "F": "FAILED", "E": "ERROR", "C": "CANCELLED"}
    start = timezone.now() - timedelta(hours=1)
    for index, letter in enumerate(outcomes):
        began = start + timedelta(minutes=index)
        TestRun.objects.create(
            scenario=scenario,
            definition=scenario.definition,
            status=names[letter],
            started_at=began,
            finished_at=began + timedelta(seconds=(seconds or [1.0] * len(outcomes))[index]),
        )


def test_flips_pass_rate_and_median_over_the_window_in_one_query():
    flaky, steady = make_scenario(), make_scenario()
    history(flaky, "PPFPCFFP", [1, 2, 3, 4, 99, 5, 6, 7])
    history(steady, "PPPPF")
    with CaptureQueriesContext(connection) as queries:
        stats = scenario_stats()
    assert len(queries) == 1
    one = stats[flaky.id]
    # cancelled runs say nothing about the scenario: P P F P F F P
    assert (one.runs, one.passed, one.flips, one.flaky) == (7, 4, 4, True)
    assert one.median_seconds == pytest.approx(4.0)
    other = stats[steady.id]
    assert (other.runs, other.flips, other.flaky) == (5, 1, False)
    narrow = scenario_stats(scenario_ids=[flaky.id], window=3)[flaky.id]  # F F P
    assert (narrow.runs, narrow.passed, narrow.flips, narrow.flaky) == (3, 1, 1, False)


def test_the_api_gives_a_scenarios_stats_and_refuses_a_bad_window(api_client):
    scenario = make_scenario()
    history(scenario, "PFPFP")
    body = api_client.get(f"/api/scenarios/{scenario.id}/stats/").json()
    assert body["flips"] == 4 and body["flaky"] is True and body["pass_rate"] == 0.6
    assert api_client.get(f"/api/scenarios/{scenario.id}/stats/?window=2").json()["flips"] == 1
    for bad in ("abc", "0", "100000"):
        response = api_client.get(f"/api/scenarios/{scenario.id}/stats/?window={bad}")
        assert response.status_code == 400 and "window" in response.json()["error"]["fields"]
    empty = api_client.get(f"/api/scenarios/{make_scenario().id}/stats/").json()
    assert (empty["runs"], empty["flaky"], empty["pass_rate"]) == (0, False, None)
    assert api_client.get("/api/scenarios/999999/stats/").status_code == 404


def test_the_admin_mixin_shows_columns_and_filters_flaky_scenarios():
    flaky, steady = make_scenario(name="flaky-one"), make_scenario(name="steady-one")
    history(flaky, "PFPF")
    history(steady, "PP")

    class StatsAdmin(ScenarioStatsAdminMixin, admin.ModelAdmin):
        list_display = ("name", *ScenarioStatsAdminMixin.stats_list_display)
        list_filter = [FlakyFilter]

    model_admin = StatsAdmin(Scenario, AdminSite())
    user = User.objects.create_superuser("root-stats")
    request = RequestFactory().get("/", {"flaky": "yes"})
    request.user = user
    page = model_admin.changelist_view(request).rendered_content
    assert "flaky-one" in page and "steady-one" not in page
    assert "50% of 4" in page and f"/admin/trends/scenario/{flaky.id}/" in page


def test_the_trend_page_draws_every_run_as_inline_svg_for_staff_only(client):
    scenario = make_scenario(name="<b>trend</b>")
    history(scenario, "PPFEP", [0.5, 1, 2, 4, 1])
    url = f"/admin/trends/scenario/{scenario.id}/"
    assert client.get(url).status_code == 302  # to the admin login
    client.force_login(User.objects.create_superuser("root-trend"))
    page = client.get(url).content.decode()
    assert "<svg" in page and "<script" not in page.split('id="trend"')[1]
    statuses = [part.split('"')[0] for part in page.split('data-status="')[1:]]
    assert statuses == ["PASSED", "PASSED", "FAILED", "ERROR", "PASSED"]
    assert "4.00s" in page  # the axis is scaled to the longest run
    assert "<b>trend</b>" not in page  # the name is escaped
    assert client.get("/admin/trends/scenario/999999/").status_code == 404
