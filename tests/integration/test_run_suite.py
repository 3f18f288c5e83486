"""``manage.py run_suite`` as a real process against the test database, broker and workers:
exit codes, live progress, the JUnit report's shape, the queue path and a data file."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from launches.models import Launch
from queue_catalog.models import QueueRecord
from runs.models import Scenario
from tests.factories import delay_step, make_scenario
from tests.integration.test_cli import manage

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers")]


def tagged(tags: list[str], steps: list[dict] | None = None) -> Scenario:
    scenario = make_scenario(steps)
    scenario.tags = tags
    scenario.save(update_fields=["tags"])
    return scenario


def failing_step(target_url: str) -> dict:
    return {
        "name": "missing page",
        "plugin": "http",
        "with": {"method": "GET", "url": f"{target_url}/no-such-page"},
        "expect": {"status": 200},
        "timeout": 5,
    }


def test_a_passing_suite_exits_0_with_one_testsuite_per_scenario(tmp_path):
    first = tagged(["smoke"], [delay_step("a"), delay_step("b")])
    second = tagged(["smoke", "api"])
    tagged(["slow"])
    report = tmp_path / "out.xml"

    done = manage("run_suite", "--tag", "smoke", "--wait", "--junit", str(report))

    assert done.returncode == 0, done.stdout + done.stderr
    launch = Launch.objects.get()
    assert f"launch {launch.id}: PASSED (2 passed)" in done.stdout
    root = ElementTree.parse(report).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "0"
    suites = {suite.get("name"): suite for suite in root.findall("testsuite")}
    assert set(suites) == {first.name, second.name}
    assert [case.get("name") for case in suites[first.name].findall("testcase")] == ["a", "b"]


def test_a_failing_row_exits_1_and_is_named_in_the_output_and_the_report(tmp_path, target_url):
    scenario = tagged(["smoke"], [failing_step(target_url)])
    tagged(["smoke"])
    rows = tmp_path / "rows.csv"
    rows.write_text("customer\nada\nbob\n")
    report = tmp_path / "out.xml"

    done = manage(
        "run_suite",
        "--scenario",
        scenario.name,
        "--data",
        str(rows),
        "--wait",
        "--junit",
        str(report),
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{scenario.name} row 1: FAILED" in done.stdout
    assert f"{scenario.name} row 2: FAILED" in done.stdout
    assert "FAILED (2 failed)" in done.stdout
    (suite,) = ElementTree.parse(report).getroot().findall("testsuite")
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == ["[row 1] missing page", "[row 2] missing page"]
    assert all(case.find("failure") is not None for case in cases)


def test_via_queue_the_suite_goes_through_the_lanes(tmp_path):
    scenario = tagged(["queued"], [delay_step("pause", 0.1)])

    done = manage("run_suite", "--tag", "queued", "--via-queue", "--payload", '{"n": 1}', "--wait")

    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = QueueRecord.objects.filter(scenario=scenario)
    assert record.status == "DONE" and record.launch_id == Launch.objects.get().id
    assert record.payload == {"n": 1}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--tag", "smoke and"], "expected a tag"),
        (["--tag", "nothing-has-this"], "no active scenario"),
        (["--scenario", "no-such-scenario"], "no scenario"),
        (["--tag", "smoke", "--env", "nowhere"], "no environment"),
        (["--tag", "smoke", "--junit", "x.xml"], "need --wait"),
        (["--tag", "smoke", "--payload", "[1]"], "JSON object"),
        (["--tag", "smoke", "--data", "missing.csv"], "cannot read"),
        (["--tag", "smoke", "--data", "{bad}"], "row 1: must be a JSON object"),
    ],
)
def test_unusable_arguments_exit_2_and_start_nothing(tmp_path, args, words):
    tagged(["smoke"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1]\n")
    args = [str(bad) if arg == "{bad}" else arg for arg in args]

    done = manage("run_suite", *args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr
    assert not Launch.objects.exists()
