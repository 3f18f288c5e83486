"""Suite and data-driven launches through the API with real workers: picking scenarios by tag,
roll-up and finishing, the queue path, data rows (JSON, CSV and JSON-lines uploads), bad input,
reports."""

from __future__ import annotations

import threading
from xml.etree import ElementTree

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from launches.models import Launch
from launches.services import launch_settle, launches_sweep
from launches.signals import launch_finished
from queue_catalog.models import QueueRecord
from runs.models import Scenario, TestRun
from tests.factories import delay_step, make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers")]


def http_step(name: str, url: str, status: int = 200) -> dict:
    return {
        "name": name,
        "plugin": "http",
        "with": {"method": "GET", "url": url},
        "expect": {"status": status},
        "timeout": 5,
    }


def tagged(tags: list[str], steps: list[dict] | None = None, **extra) -> Scenario:
    scenario = make_scenario(steps, **extra)
    scenario.tags = tags
    scenario.save(update_fields=["tags"])
    return scenario


def finished_launch(launch_id: int, timeout: float = 60) -> Launch:
    def done():
        launch = Launch.objects.get(id=launch_id)
        return launch if launch.is_finished else None

    return wait_for(done, timeout=timeout, message=f"launch {launch_id} to finish")


def start(api_client, body: dict, **kwargs) -> dict:
    response = api_client.post("/api/launches/", body, format="json", **kwargs)
    assert response.status_code == 201, response.json()
    return response.json()


def test_a_tag_expression_launches_the_matching_active_scenarios_and_rolls_up_the_worst(
    api_client, target_url
):
    passing = tagged(["smoke", "api"])
    failing = tagged(["smoke"], [http_step("missing page", f"{target_url}/no-such-page")])
    slow = tagged(["smoke", "slow"])
    inactive = tagged(["smoke"])
    inactive.is_active = False
    inactive.save(update_fields=["is_active"])
    tagged(["nightly"])

    body = start(api_client, {"tags": "smoke and not slow"})
    assert sorted(body["scenarios"]) == sorted([passing.name, failing.name])
    assert body["status"] == "RUNNING" and body["counts"]["total"] == 2

    launch = finished_launch(body["id"])
    assert launch.status == "FAILED"
    runs = TestRun.objects.filter(launch=launch)
    assert {run.scenario_id: run.status for run in runs} == {
        passing.id: "PASSED",
        failing.id: "FAILED",
    }
    assert not TestRun.objects.filter(scenario__in=[slow, inactive]).exists()
    # Finished only once every run had: no run of it finished after the launch did.
    assert all(run.finished_at <= launch.finished_at for run in runs)

    detail = api_client.get(f"/api/launches/{launch.id}/").json()
    assert detail["counts"] == {"total": 2, "FAILED": 1, "PASSED": 1}
    (failing_row,) = detail["failing_rows"]
    assert failing_row["scenario"] == failing.name and failing_row["status"] == "FAILED"
    assert failing_row["run"] == runs.get(scenario=failing).id and failing_row["error"]
    listed = api_client.get("/api/launches/", {"status": "FAILED"}).json()
    assert launch.id in [item["id"] for item in listed["results"]]


def test_names_launch_exactly_those_scenarios_and_a_passing_launch_passes(api_client):
    first, second = make_scenario(), make_scenario([delay_step("pause", 0.2)])
    make_scenario()
    body = start(api_client, {"scenarios": [first.name, second.name], "payload": {"k": 1}})
    launch = finished_launch(body["id"])
    assert launch.status == "PASSED"
    runs = list(TestRun.objects.filter(launch=launch))
    assert sorted(run.scenario_id for run in runs) == sorted([first.id, second.id])
    assert all(run.context["payload"] == {"k": 1} for run in runs)
    assert all(run.context["launchId"] == launch.id for run in runs)
    listed = api_client.get("/api/runs/", {"launch": launch.id}).json()["results"]
    assert sorted(run["id"] for run in listed) == sorted(run.id for run in runs)
    assert {run["launch"] for run in listed} == {launch.id}


def test_data_rows_each_become_a_run_and_the_roll_up_points_at_the_failing_rows(
    api_client, target_url
):
    scenario = make_scenario([http_step("page", target_url + "/{{ payload.page }}")])
    rows = [{"page": "health"}, {"page": "nope"}, {"page": "health"}, {"page": "gone"}]
    body = start(api_client, {"scenarios": [scenario.name], "data": rows})
    assert body["data_rows"] == 4 and body["counts"]["total"] == 4

    launch = finished_launch(body["id"])
    assert launch.status == "FAILED"
    detail = api_client.get(f"/api/launches/{launch.id}/").json()
    assert detail["counts"] == {"total": 4, "FAILED": 2, "PASSED": 2}
    assert [(r["row"], r["payload"]) for r in detail["failing_rows"]] == [
        (2, {"page": "nope"}),
        (4, {"page": "gone"}),
    ]
    every = api_client.get(f"/api/launches/{launch.id}/rows/").json()
    assert [(r["row"], r["status"]) for r in every["results"]] == [
        (1, "PASSED"),
        (2, "FAILED"),
        (3, "PASSED"),
        (4, "FAILED"),
    ]
    passed = api_client.get(f"/api/launches/{launch.id}/rows/", {"status": "PASSED"}).json()
    assert [r["row"] for r in passed["results"]] == [1, 3]


def test_a_csv_upload_starts_one_run_per_line_with_the_header_as_keys(api_client):
    scenario = make_scenario()
    upload = SimpleUploadedFile("customers.csv", b'name,plan\nada,pro\n"lovelace, countess",free\n')
    response = api_client.post(
        "/api/launches/",
        {"scenarios": [scenario.name], "data": upload, "via_queue": "false"},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    launch = finished_launch(response.json()["id"])
    payloads = [
        (run.context["launchRow"], run.context["payload"])
        for run in TestRun.objects.filter(launch=launch).order_by("id")
    ]
    assert payloads == [
        (1, {"name": "ada", "plan": "pro"}),
        (2, {"name": "lovelace, countess", "plan": "free"}),
    ]


def test_a_json_lines_upload_keeps_types_and_skips_blank_lines(api_client):
    scenario = make_scenario()
    upload = SimpleUploadedFile(
        "rows.jsonl", b'{"n": 1, "tags": ["a"]}\n\n{"n": 2, "ok": true}\n', "application/x-ndjson"
    )
    response = api_client.post(
        "/api/launches/", {"scenarios": [scenario.name], "data": upload}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    launch = finished_launch(response.json()["id"])
    runs = TestRun.objects.filter(launch=launch).order_by("id")
    assert [run.context["payload"] for run in runs] == [
        {"n": 1, "tags": ["a"]},
        {"n": 2, "ok": True},
    ]


def test_via_queue_each_row_is_a_record_of_its_lane_and_the_launch_follows_the_records(
    api_client,
):
    scenario = make_scenario([delay_step("pause", 0.2)])
    body = start(
        api_client,
        {"scenarios": [scenario.name], "via_queue": True, "data": [{"i": 1}, {"i": 2}, {"i": 3}]},
    )
    records = list(QueueRecord.objects.filter(launch_id=body["id"]).order_by("id"))
    assert [r.payload for r in records] == [{"i": 1}, {"i": 2}, {"i": 3}]
    launch = finished_launch(body["id"])
    assert launch.status == "PASSED"
    runs = list(TestRun.objects.filter(launch=launch).order_by("started_at"))
    assert len(runs) == 3
    assert [run.context["queueRecordId"] for run in runs] == [r.id for r in records]
    assert [run.context["launchRow"] for run in runs] == [1, 2, 3]
    # The lane ran them one after another, never two at once.
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert earlier.finished_at <= later.started_at
    rows = api_client.get(f"/api/launches/{launch.id}/rows/").json()["results"]
    assert [(r["record"], r["starts"], r["status"]) for r in rows] == [
        (r.id, 1, "PASSED") for r in records
    ]


def test_via_queue_a_row_that_keeps_failing_is_rerun_then_counts_as_failed(
    api_client, target_url, beat
):
    scenario = make_scenario([http_step("missing", f"{target_url}/no-such-page")])
    body = start(api_client, {"scenarios": [scenario.name], "via_queue": True, "payload": {"x": 1}})
    launch = finished_launch(body["id"])
    assert launch.status == "FAILED"
    (record,) = QueueRecord.objects.filter(launch=launch)
    assert record.status == "ERROR" and record.start_count == record.max_attempts
    assert TestRun.objects.filter(launch=launch).count() == record.max_attempts
    (row,) = api_client.get(f"/api/launches/{launch.id}/").json()["failing_rows"]
    assert row["record"] == record.id and row["run"] == record.current_run_id


def test_the_launch_junit_has_one_testsuite_per_scenario_and_the_html_report_lists_rows(
    api_client, target_url
):
    good = make_scenario([delay_step("a"), delay_step("b")])
    bad = make_scenario([http_step("missing", f"{target_url}/no-such-page")])
    body = start(api_client, {"scenarios": [good.name, bad.name], "data": [{"r": 1}, {"r": 2}]})
    launch = finished_launch(body["id"])

    response = api_client.get(f"/api/launches/{launch.id}/junit/")
    assert response.status_code == 200 and response["Content-Type"] == "application/xml"
    root = ElementTree.fromstring(response.content)
    assert root.tag == "testsuites"
    suites = {suite.get("name"): suite for suite in root.findall("testsuite")}
    assert set(suites) == {good.name, bad.name}
    assert [case.get("name") for case in suites[good.name].findall("testcase")] == [
        "[row 1] a",
        "[row 1] b",
        "[row 2] a",
        "[row 2] b",
    ]
    assert suites[bad.name].get("failures") == "2" and root.get("tests") == "6"
    assert root.get("failures") == "2"

    page = api_client.get(f"/api/launches/{launch.id}/report/")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    assert "Failing rows" in html and bad.name in html and "FAILED" in html


def test_the_last_two_runs_finishing_together_finish_the_launch_exactly_once(api_client):
    scenario = make_scenario()
    body = start(api_client, {"scenarios": [scenario.name], "data": [{"i": 1}, {"i": 2}]})
    launch = finished_launch(body["id"])
    # Reopen it and let two processes settle it at once, as the last two runs' news would.
    Launch.objects.filter(id=launch.id).update(status="RUNNING", finished_at=None)
    heard: list[str] = []

    def listener(sender, launch_id, status, **kwargs):
        heard.append(status)

    launch_finished.connect(listener)
    barrier = threading.Barrier(8)
    results: list[str | None] = []

    def settle():
        barrier.wait()
        try:
            results.append(launch_settle(launch_id=launch.id))
        finally:
            connection.close()

    threads = [threading.Thread(target=settle) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        launch_finished.disconnect(listener)
    assert sorted(map(str, results)) == [*["None"] * 7, "PASSED"]
    assert heard == ["PASSED"]


def test_the_sweep_finishes_a_launch_whose_last_news_was_lost(api_client):
    scenario = make_scenario()
    body = start(api_client, {"scenarios": [scenario.name]})
    launch = finished_launch(body["id"])
    Launch.objects.filter(id=launch.id).update(status="RUNNING", finished_at=None)
    assert launches_sweep() == 1
    assert Launch.objects.get(id=launch.id).status == "PASSED"
    assert launches_sweep() == 0


def test_a_deactivated_scenario_named_in_a_launch_is_refused(api_client):
    scenario = make_scenario()
    scenario.is_active = False
    scenario.save(update_fields=["is_active"])
    response = api_client.post("/api/launches/", {"scenarios": [scenario.name]}, format="json")
    assert response.status_code == 400
    assert "not active" in response.json()["error"]["fields"]["scenarios"][0]
    assert not Launch.objects.exists()


def test_a_run_left_unfinished_keeps_the_launch_running(api_client):
    scenario = make_scenario()
    body = start(api_client, {"scenarios": [scenario.name], "data": [{"i": 1}, {"i": 2}]})
    launch = finished_launch(body["id"])
    Launch.objects.filter(id=launch.id).update(status="RUNNING", finished_at=None)
    run = TestRun.objects.filter(launch=launch).first()
    TestRun.objects.filter(id=run.id).update(status="IN_PROGRESS")
    assert launch_settle(launch_id=launch.id) is None
    assert Launch.objects.get(id=launch.id).status == "RUNNING"
    TestRun.objects.filter(id=run.id).update(status="ERROR")
    assert launch_settle(launch_id=launch.id) == "ERROR"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({}, "tags", "either"),
        ({"tags": "smoke", "scenarios": ["x"]}, "tags", "either"),
        ({"tags": "smoke and"}, "tags", "expected a tag"),
        ({"tags": "(" * 40 + "a" + ")" * 40}, "tags", "nested"),
        ({"tags": "no-scenario-has-this"}, "tags", "no active scenario"),
        ({"tags": 5}, "tags", "no active scenario"),
        ({"scenarios": "one"}, "scenarios", "list"),
        ({"scenarios": []}, "scenarios", ""),
        ({"scenarios": ["no-such-scenario"]}, "scenarios", "no scenario"),
        ({"scenarios": ["{known}"], "environment": "nowhere"}, "environment", "no environment"),
        ({"scenarios": ["{known}"], "priority": "asap"}, "priority", ""),
        ({"scenarios": ["{known}"], "via_queue": "maybe"}, "via_queue", ""),
        ({"scenarios": ["{known}"], "payload": [1]}, "payload", "object"),
        ({"scenarios": ["{known}"], "payload": {}, "data": [{}]}, "data", "not both"),
        ({"scenarios": ["{known}"], "data": {"a": 1}}, "data", "list"),
        ({"scenarios": ["{known}"], "data": []}, "data", "no rows"),
        (
            {"scenarios": ["{known}"], "data": [{}, {}, 7, {}]},
            "data",
            "row 3: must be a JSON object",
        ),
        ({"scenarios": ["{known}"], "data": [{}, [1]]}, "data", "row 2: must be a JSON object"),
        ({"scenarios": ["{known}"], "data": [{}, {"a": "\u0000"}]}, "data", "row 2"),
        (
            {"scenarios": ["{known}"], "data": [{}, {}, {"big": "{huge}"}]},
            "data",
            "row 3: is larger",
        ),
    ],
)
def test_bad_launches_are_refused_with_400_naming_the_field_and_nothing_starts(
    api_client, body, field, words
):
    known = make_scenario()
    huge = "x" * settings.ORCHESTRA_API_MAX_PAYLOAD_BYTES

    def fill(value):
        if isinstance(value, str):
            return value.replace("{known}", known.name).replace("{huge}", huge)
        if isinstance(value, list):
            return [fill(item) for item in value]
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        return value

    response = api_client.post("/api/launches/", fill(body), format="json")
    assert response.status_code == 400, response.content
    fields = response.json()["error"]["fields"]
    named = [name for name in fields if name.split(".")[0].split("[")[0] == field]
    assert named, fields
    assert words in " ".join(m for name in named for m in fields[name])
    assert not Launch.objects.exists() and not TestRun.objects.exists()


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("rows.csv", b"a,b\n1,2\n3\n", "row 2: has 1 fields"),
        ("rows.csv", b"a,a\n1,2\n", "distinct"),
        ("rows.csv", b"", "no header"),
        ("rows.csv", b"a\n\xff\n", "UTF-8"),
        ("rows.csv", b"a\nx\x00y\n", "row 1: text must not hold NUL"),
        ("rows.jsonl", b'{"a": "x\\u0000y"}\n', "row 1: text must not hold NUL"),
        ("rows.jsonl", b'{"a": 1}\n{"a": \n', "row 2: not JSON"),
        ("rows.jsonl", b'{"a": 1}\n[2]\n', "row 2: must be a JSON object"),
        ("rows.txt", b"a\n1\n", ".csv, .jsonl"),
    ],
)
def test_bad_data_files_are_refused_with_the_row_and_nothing_starts(
    api_client, name, content, words
):
    scenario = make_scenario()
    upload = SimpleUploadedFile(name, content, "application/octet-stream")
    response = api_client.post(
        "/api/launches/", {"scenarios": [scenario.name], "data": upload}, format="multipart"
    )
    assert response.status_code == 400, response.content
    messages = response.json()["error"]["fields"]["data"]
    assert any(words in message for message in messages), messages
    assert not Launch.objects.exists() and not TestRun.objects.exists()


def test_too_many_runs_at_once_are_refused(api_client, settings):
    settings.ORCHESTRA_LAUNCH_MAX_RUNS = 3
    first, second = make_scenario(), make_scenario()
    response = api_client.post(
        "/api/launches/",
        {"scenarios": [first.name, second.name], "data": [{}, {}]},
        format="json",
    )
    assert response.status_code == 400
    assert "ORCHESTRA_LAUNCH_MAX_RUNS" in response.json()["error"]["fields"]["data"][0]
    assert not TestRun.objects.exists()


def test_launch_reads_need_a_viewer_and_starts_need_an_operator(viewer_client, api_client):
    scenario = make_scenario()
    refused = viewer_client.post("/api/launches/", {"scenarios": [scenario.name]}, format="json")
    assert refused.status_code == 403
    body = start(api_client, {"scenarios": [scenario.name]})
    assert viewer_client.get(f"/api/launches/{body['id']}/").status_code == 200
    assert viewer_client.get("/api/launches/x/").status_code == 404
    assert viewer_client.get("/api/launches/999999/junit/").status_code == 404
    bad_status = viewer_client.get(f"/api/launches/{body['id']}/rows/", {"status": "NOPE"})
    assert bad_status.status_code == 400
    finished_launch(body["id"])
