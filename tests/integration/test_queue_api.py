"""The queue's REST endpoints: create, list, filter, detail with runs, cancel, retry, bad input."""

from __future__ import annotations

import pytest

from queue_catalog.models import QueueRecord
from tests.factories import delay_step, make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers")]


def test_enqueue_over_the_api_returns_the_record_and_its_runs(api_client):
    scenario = make_scenario([delay_step("quick")])
    response = api_client.post(
        "/api/queue/",
        {
            "scenario": scenario.name,
            "payload": {"order": 7},
            "priority": "urgent",
            "max_attempts": 2,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "RUNNING" and body["start_count"] == 1
    assert body["max_attempts"] == 2 and body["priority"] == "urgent"

    wait_for(lambda: QueueRecord.objects.get(id=body["id"]).status == "DONE")
    detail = api_client.get(f"/api/queue/{body['id']}/").json()
    assert detail["status"] == "DONE"
    (attempt,) = detail["runs"]
    assert attempt["start_number"] == 1 and attempt["run"]["status"] == "PASSED"
    assert attempt["run"]["context"]["payload"] == {"order": 7}
    assert attempt["run"]["context"]["queueRecordId"] == body["id"]


def test_enqueue_without_payload_launches_with_an_empty_payload(api_client):
    scenario = make_scenario([delay_step("quick")])

    response = api_client.post("/api/queue/", {"scenario": scenario.name}, format="json")

    assert response.status_code == 201, response.json()
    record = QueueRecord.objects.get(id=response.json()["id"])
    assert record.payload == {}
    wait_for(lambda: QueueRecord.objects.get(id=record.id).status == "DONE")
    assert record.attempts.get().run.context["payload"] == {}


def test_queue_list_filters_by_status_and_scenario(api_client):
    slow = make_scenario([delay_step("slow", 1)])
    other = make_scenario([delay_step("quick")])
    for _ in range(2):
        api_client.post("/api/queue/", {"scenario": slow.id, "payload": {}}, format="json")
    api_client.post("/api/queue/", {"scenario": other.id, "payload": {}}, format="json")

    scheduled = api_client.get("/api/queue/", {"status": "SCHEDULED"}).json()
    assert [r["scenario"] for r in scheduled["results"]] == [slow.name]
    by_scenario = api_client.get("/api/queue/", {"scenario": other.id}).json()
    assert by_scenario["count"] == 1 and by_scenario["results"][0]["scenario"] == other.name


def test_cancel_and_retry_report_conflicts_with_409(api_client):
    scenario = make_scenario([delay_step("slow", 1)])
    first = api_client.post(
        "/api/queue/", {"scenario": scenario.id, "payload": {}}, format="json"
    ).json()
    second = api_client.post(
        "/api/queue/", {"scenario": scenario.id, "payload": {}}, format="json"
    ).json()

    cancelled = api_client.post(f"/api/queue/{second['id']}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    assert api_client.post(f"/api/queue/{second['id']}/cancel/").status_code == 409
    assert api_client.post(f"/api/queue/{first['id']}/retry/").status_code == 409
    assert api_client.post("/api/queue/999999/cancel/").status_code == 404
    wait_for(lambda: QueueRecord.objects.get(id=first["id"]).status == "DONE")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"scenario": "no-such-scenario", "payload": {}}, "scenario"),
        ({"scenario": "__SCENARIO__", "payload": [1, 2]}, "payload"),
        ({"scenario": "__SCENARIO__", "payload": "text"}, "payload"),
        ({"scenario": "__SCENARIO__", "payload": None}, "payload"),
        ({"scenario": "__SCENARIO__", "payload": {}, "max_attempts": -1}, "max_attempts"),
        ({"scenario": "__SCENARIO__", "payload": {}, "max_attempts": 0}, "max_attempts"),
        ({"scenario": "__SCENARIO__", "payload": {}, "max_attempts": 10**9}, "max_attempts"),
        ({"scenario": "__SCENARIO__", "payload": {}, "priority": "asap"}, "priority"),
    ],
)
def test_bad_queue_input_is_refused_with_field_errors_and_nothing_written(api_client, body, field):
    scenario = make_scenario()
    body = {k: scenario.name if v == "__SCENARIO__" else v for k, v in body.items()}

    response = api_client.post("/api/queue/", body, format="json")

    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert QueueRecord.objects.count() == 0


def test_queue_requires_authentication(client):
    assert client.get("/api/queue/").status_code == 401
    assert client.post("/api/queue/", {}, content_type="application/json").status_code in (401, 403)
