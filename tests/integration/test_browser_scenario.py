"""The scenario page in a real browser at 1280 px: stats and recent runs fit the width, a bad
payload is named, a good one starts a run whose page links the version it executed; the
versions page shows the diff. Keeps screenshots of both pages.

``ORCHESTRA_REFRESH_DOCS=1`` writes them to docs/ instead of a temporary directory.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from runs.models import Scenario, TestRun
from runs.services import scenario_update
from runs.sources import definition_from_source
from tests.conftest import purge_queues
from tests.factories import delay_step, make_scenario
from tests.integration.test_browser import page  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"
WIDTH = 1280
SOURCE = """\
# The shop's checkout: pay, then confirm.
steps:
  - name: pay
    plugin: delay
    with: {seconds: 0}
  - name: confirm   # the shop confirms within 10 ms
    plugin: delay
    with: {seconds: 0.01}
"""


@pytest.fixture
def checkout(transactional_db) -> Scenario:
    """A scenario with two versions and a day of runs in every outcome."""
    scenario = make_scenario([delay_step("pay")], name="checkout-flow")
    scenario_update(
        scenario=scenario,
        definition=definition_from_source(SOURCE),
        source=SOURCE,
        description="Pays an order and confirms it.",
    )
    now = timezone.now()
    outcomes = ["PASSED", "PASSED", "FAILED", "PASSED", "ERROR", "PASSED", "CANCELLED"]
    for hours, status in enumerate(outcomes, start=1):
        started = now - timedelta(hours=hours)
        run = TestRun.objects.create(
            scenario=scenario,
            scenario_version=scenario.current_version,
            definition=scenario.definition,
            status=status,
            started_at=started,
            finished_at=started + timedelta(seconds=1.5 * hours),
            error="" if status == "PASSED" else "confirm: status is 503, expected 200",
        )
        TestRun.objects.filter(id=run.id).update(queued_at=started)
    User.objects.create_superuser("operator", password="operator-password")
    yield scenario
    purge_queues()  # the started run was published; no worker consumes it here


def screenshot_path(tmp_path: Path, name: str) -> Path:
    return DOCS / name if os.environ.get("ORCHESTRA_REFRESH_DOCS") else tmp_path / name


def test_an_operator_reads_the_scenario_page_and_starts_a_run_with_a_payload(
    live_server,
    checkout,
    page,  # noqa: F811 - the imported fixture
    tmp_path,
):
    page.set_viewport_size({"width": WIDTH, "height": 1200})
    page.goto(f"{live_server.url}/admin/login/?next=/admin/runs/scenario/{checkout.id}/page/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-password")
    page.click("input[type=submit]")
    page.wait_for_selector(".scenario-stats")

    stats = page.inner_text(".scenario-stats")
    assert "67 %" in stats and "pass rate, 6 finished runs" in stats  # 4 of 6; cancelled aside
    assert page.locator(".runs tbody tr").count() == 7
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    shot = screenshot_path(tmp_path, "admin-scenario.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.fill("#id_payload", '{"order": ')
    page.click("input[name=_start]")
    page.wait_for_selector(".errorlist")
    assert "not valid JSON" in page.inner_text(".launch")
    assert TestRun.objects.filter(scenario=checkout).count() == 7

    page.fill("#id_payload", '{"order": 1044}')
    page.select_option("#id_priority", "urgent")
    page.click("input[name=_start]")
    page.wait_for_url("**/admin/runs/testrun/*/change/")
    run = TestRun.objects.filter(scenario=checkout).order_by("-id").first()
    assert run.context["payload"] == {"order": 1044} and run.priority == "urgent"
    assert "v2" in page.inner_text("#content")

    page.click("text=v2")
    page.wait_for_selector("pre.source-diff")
    assert "+  - name: confirm   # the shop confirms within 10 ms" in page.inner_text(
        "pre.source-diff >> nth=0"
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    shot = screenshot_path(tmp_path, "admin-scenario-versions.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_an_operator_edits_the_yaml_sees_the_step_at_fault_then_saves_a_version(
    live_server,
    checkout,
    page,  # noqa: F811 - the imported fixture
    tmp_path,
):
    page.set_viewport_size({"width": WIDTH, "height": 1200})
    page.goto(f"{live_server.url}/admin/login/?next=/admin/runs/scenario/{checkout.id}/change/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-password")
    page.click("input[type=submit]")
    page.wait_for_selector("#id_definition_source")
    assert page.input_value("#id_definition_source") == SOURCE

    page.fill("#id_definition_source", SOURCE.replace("seconds: 0.01", "seconds: -1"))
    page.click("input[name=_continue]")
    page.wait_for_selector(".errorlist")
    assert "steps[1] (confirm): with.seconds" in page.inner_text(".errorlist")
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    shot = screenshot_path(tmp_path, "admin-scenario-edit.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    edited = SOURCE.replace("seconds: 0.01", "seconds: 0.02") + "# slower since the fix\n"
    page.fill("#id_definition_source", edited)
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist")
    checkout.refresh_from_db()
    assert checkout.current_version.number == 3
    assert checkout.definition_source == edited
    assert page.input_value("#id_definition_source") == edited
