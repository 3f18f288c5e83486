"""The REST API end to end: every endpoint's happy path, authentication, roles, unknown ids, bad
input with field paths, state conflicts, idempotency keys, request limits, reports and dead
letters; against real workers, RabbitMQ and PostgreSQL."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from launches.models import Launch
from launches.schedule_models import Schedule
from orchestra.api.throttling import WriteRateThrottle
from plugins.registry import BUILTIN_PLUGINS
from queue_catalog.models import QueueRecord
from runs.deadletters import dead_letters_collect
from runs.models import DeadLetter, Scenario, StepResult, TestRun
from runs.services import scenario_save
from runs.tasks import execute_run
from targets.models import RateKey
from tests.factories import delay_step, make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers")]

UNKNOWN_ID = 987654

# Every operation of the API but health (anonymous) and /metrics (its own tests); ids in braces
# are filled in from ``stored``. test_the_endpoint_table_lists_every_operation_of_the_schema
# keeps it complete.
ENDPOINTS = [
    ("get", "/api/"),
    ("get", "/api/scenarios/"),
    ("post", "/api/scenarios/"),
    ("get", "/api/scenarios/{scenario}/"),
    ("put", "/api/scenarios/{scenario}/"),
    ("patch", "/api/scenarios/{scenario}/"),
    ("post", "/api/scenarios/validate/"),
    ("post", "/api/scenarios/{scenario}/deactivate/"),
    ("post", "/api/scenarios/{scenario}/activate/"),
    ("get", "/api/scenarios/{scenario}/versions/"),
    ("get", "/api/runs/"),
    ("post", "/api/runs/"),
    ("get", "/api/runs/{run}/"),
    ("post", "/api/runs/{run}/cancel/"),
    ("post", "/api/runs/{run}/rerun/"),
    ("get", "/api/runs/{run}/junit/"),
    ("get", "/api/runs/{run}/report/"),
    ("get", "/api/dead-letters/"),
    ("get", "/api/dead-letters/{letter}/"),
    ("post", "/api/dead-letters/{letter}/redrive/"),
    ("get", "/api/plugins/"),
    ("get", "/api/queue/"),
    ("post", "/api/queue/"),
    ("get", "/api/queue/{record}/"),
    ("post", "/api/queue/{record}/cancel/"),
    ("post", "/api/queue/{record}/retry/"),
    ("post", "/api/queue/{record}/move-to-front/"),
    ("get", "/api/rate-keys/"),
    ("post", "/api/rate-keys/"),
    ("get", "/api/rate-keys/{key}/"),
    ("put", "/api/rate-keys/{key}/"),
    ("patch", "/api/rate-keys/{key}/"),
    ("delete", "/api/rate-keys/{key}/"),
    ("post", "/api/rate-keys/{key}/unblock/"),
    ("get", "/api/launches/"),
    ("post", "/api/launches/"),
    ("get", "/api/launches/{launch}/"),
    ("get", "/api/launches/{launch}/rows/"),
    ("get", "/api/launches/{launch}/junit/"),
    ("get", "/api/launches/{launch}/report/"),
    ("get", "/api/scenarios/{scenario}/stats/"),
    ("get", "/api/schedules/"),
    ("post", "/api/schedules/"),
    ("get", "/api/schedules/{schedule}/"),
    ("put", "/api/schedules/{schedule}/"),
    ("patch", "/api/schedules/{schedule}/"),
    ("delete", "/api/schedules/{schedule}/"),
]
READS = [endpoint for endpoint in ENDPOINTS if endpoint[0] == "get"]
WRITES = [endpoint for endpoint in ENDPOINTS if endpoint[0] != "get"]
DETAILS = [endpoint for endpoint in ENDPOINTS if "{" in endpoint[1]]


def _label(endpoint: tuple[str, str]) -> str:
    return f"{endpoint[0].upper()} {endpoint[1]}"


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response has ``status`` and the one error shape; returns the error."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def call(client, method: str, url: str, body=None):
    if method == "get":
        return client.get(url)
    return getattr(client, method)(url, body, format="json")


def http_step(name: str, url: str, status: int) -> dict:
    return {"name": name, "plugin": "http", "with": {"url": url}, "expect": {"status": status}}


@pytest.fixture
def stored(live_db) -> dict[str, int]:
    """One finished object of each kind, written directly (no worker involved)."""
    scenario = make_scenario([delay_step("first"), delay_step("second")])
    now = timezone.now()
    run = TestRun.objects.create(
        scenario=scenario,
        definition=scenario.definition,
        status="FAILED",
        attempt=1,
        worker="host:1",
        started_at=now,
        finished_at=now,
        error="step 'second' failed",
    )
    for position, (name, status) in enumerate([("first", "PASSED"), ("second", "FAILED")]):
        StepResult.objects.create(
            run=run, attempt=1, position=position, name=name, plugin="delay", status=status
        )
    letter = DeadLetter.objects.create(
        task_id="stored", task="runs.execute_run", reason="stored", body="[[1], {}, {}]"
    )
    record = QueueRecord.objects.create(scenario=scenario, payload={}, status="DONE")
    key = RateKey.objects.create(name="http://127.0.0.1:8081", requests=20, burst=5)
    launch = Launch.objects.create(status="FAILED", scenario_names=[scenario.name])
    TestRun.objects.filter(id=run.id).update(launch=launch)
    schedule = Schedule.objects.create(
        name="stored", scenario_names=[scenario.name], interval_seconds=3600
    )
    return {
        "scenario": scenario.id,
        "run": run.id,
        "letter": letter.id,
        "record": record.id,
        "key": key.id,
        "launch": launch.id,
        "schedule": schedule.id,
    }


def row_counts() -> list[int]:
    return [
        model.objects.count() for model in (Scenario, TestRun, QueueRecord, DeadLetter, RateKey)
    ]


def finished_run(run_id: int) -> TestRun:
    return wait_for(
        lambda: TestRun.objects.filter(id=run_id, finished_at__isnull=False).first(),
        message=f"run {run_id} to finish",
    )


# --- authentication, roles, unknown ids ---------------------------------------------------------


def test_the_endpoint_table_lists_every_operation_of_the_schema(viewer_client):
    schema = viewer_client.get("/api/schema/?format=json").json()
    operations = {
        (method, path.replace("{id}", "{x}"))
        for path, methods in schema["paths"].items()
        for method in methods
    }
    listed = {
        (
            method,
            url.format(
                scenario="{x}",
                run="{x}",
                letter="{x}",
                record="{x}",
                key="{x}",
                launch="{x}",
                schedule="{x}",
            ),
        )
        for method, url in ENDPOINTS
    }
    assert operations - listed == {("get", "/api/health/"), ("get", "/metrics")}
    assert listed <= operations


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_label)
def test_every_endpoint_refuses_requests_without_credentials_with_401(stored, endpoint):
    method, url = endpoint

    response = call(APIClient(), method, url.format(**stored), {})

    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Token")


@pytest.mark.parametrize("endpoint", READS, ids=_label)
def test_a_viewer_can_read_every_endpoint(viewer_client, stored, endpoint):
    method, url = endpoint

    response = call(viewer_client, method, url.format(**stored))

    assert response.status_code == 200, response.content[:300]


@pytest.mark.parametrize("endpoint", WRITES, ids=_label)
def test_a_viewer_trying_to_write_gets_403_and_nothing_changes(viewer_client, stored, endpoint):
    method, url = endpoint
    # A body every write would accept from an operator.
    body = {
        "name": "by-a-viewer",
        "scenario": stored["scenario"],
        "payload": {},
        "definition": {"steps": [delay_step("wait")]},
    }
    counts = row_counts()

    response = call(viewer_client, method, url.format(**stored), body)

    assert_error(response, 403, "permission_denied")
    assert row_counts() == counts
    assert Scenario.objects.get(id=stored["scenario"]).is_active
    assert DeadLetter.objects.get(id=stored["letter"]).status == "WAITING"


@pytest.mark.parametrize("endpoint", DETAILS, ids=_label)
def test_every_detail_endpoint_answers_404_for_an_unknown_id(api_client, endpoint):
    method, url = endpoint
    ids = dict.fromkeys(
        ["scenario", "run", "letter", "record", "key", "launch", "schedule"], UNKNOWN_ID
    )

    assert_error(call(api_client, method, url.format(**ids), {}), 404, "not_found")


@pytest.mark.parametrize("path", ["/api/runs/1.5/", "/api/queue/a.b/cancel/", "/api/nothing/"])
def test_urls_that_match_no_route_answer_404_in_the_error_shape(api_client, path):
    assert_error(api_client.get(path), 404, "not_found")


# --- happy paths --------------------------------------------------------------------------------


def test_api_root_lists_every_resource_for_users_only(viewer_client):
    response = viewer_client.get("/api/")

    assert response.status_code == 200
    assert response.json()["runs"] == "http://testserver/api/runs/"
    assert set(response.json()) == {
        "scenarios",
        "runs",
        "queue",
        "dead-letters",
        "rate-keys",
        "plugins",
        "health",
        "schema",
        "docs",
        "redoc",
    }
    assert APIClient().get("/api/").status_code == 401


def test_health_needs_no_credentials_and_reports_database_broker_and_workers(workers):
    response = APIClient().get("/api/health/")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
        "workers": len(workers),
        "foreign_run_messages": 0,
        "warnings": [],
    }


def test_plugins_lists_every_installed_plugin_with_its_parameter_schema(viewer_client):
    plugins = {plugin["name"]: plugin for plugin in viewer_client.get("/api/plugins/").json()}

    assert set(BUILTIN_PLUGINS) <= set(plugins)
    assert "method" in plugins["http"]["params_schema"]["properties"]
    assert "seconds" in plugins["delay"]["params_schema"]["properties"]
    assert plugins["sql"]["expect_schema"]["properties"]["rows"]
    assert plugins["http"]["description"] == "Sends one HTTP request with httpx."
    assert plugins["delay"]["listen_schema"] is None
    for name in BUILTIN_PLUGINS:
        example = plugins[name]["example"]
        assert example["plugin"] == name
        scenario_save(name=f"example-{name}", definition={"steps": [example]})


def test_scenario_is_created_read_updated_validated_deactivated_and_activated(api_client):
    definition = {"steps": [delay_step("wait")]}
    created = api_client.post(
        "/api/scenarios/", {"name": "api-crud", "definition": definition}, format="json"
    )
    assert created.status_code == 201, created.json()
    scenario = created.json()
    assert scenario["is_active"] and scenario["definition"] == definition
    url = f"/api/scenarios/{scenario['id']}/"

    assert api_client.get(url).json()["name"] == "api-crud"
    replaced = api_client.put(
        url,
        {
            "name": "api-crud-2",
            "description": "two steps",
            "definition": {"steps": [delay_step("wait"), delay_step("again")]},
        },
        format="json",
    )
    assert replaced.status_code == 200, replaced.json()
    assert len(replaced.json()["definition"]["steps"]) == 2
    patched = api_client.patch(url, {"description": "patched"}, format="json")
    assert patched.json()["description"] == "patched" and patched.json()["name"] == "api-crud-2"
    listed = api_client.get("/api/scenarios/", {"name": "crud-2"}).json()
    assert [s["id"] for s in listed["results"]] == [scenario["id"]]

    checked = api_client.post(
        "/api/scenarios/validate/", {"definition": {"steps": [delay_step("a")]}}, format="json"
    )
    assert checked.json() == {"valid": True, "steps": 1}

    assert api_client.post(f"{url}deactivate/").json()["is_active"] is False
    refused = api_client.post("/api/runs/", {"scenario": scenario["id"]}, format="json")
    assert "not active" in assert_error(refused, 400)["fields"]["scenario"][0]
    assert api_client.get("/api/scenarios/", {"is_active": "false"}).json()["count"] == 1
    assert api_client.post(f"{url}activate/").json()["is_active"] is True
    started = api_client.post("/api/runs/", {"scenario": scenario["id"]}, format="json")
    assert started.status_code == 201
    finished_run(started.json()["id"])


def test_run_started_over_the_api_passes_and_is_listed_filtered_and_detailed(api_client):
    scenario = make_scenario([delay_step("one"), delay_step("two")])
    other = make_scenario()
    response = api_client.post(
        "/api/runs/",
        {"scenario": scenario.name, "payload": {"order": 7}, "priority": "urgent"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    started = response.json()
    assert started["status"] == "QUEUED" and started["priority"] == "urgent"
    other_run = api_client.post("/api/runs/", {"scenario": other.id}, format="json").json()
    assert finished_run(started["id"]).status == "PASSED"
    finished_run(other_run["id"])

    detail = api_client.get(f"/api/runs/{started['id']}/").json()
    assert detail["status"] == "PASSED" and detail["context"]["payload"] == {"order": 7}
    assert [(s["name"], s["status"]) for s in detail["steps"]] == [
        ("one", "PASSED"),
        ("two", "PASSED"),
    ]
    by_scenario = api_client.get("/api/runs/", {"scenario": scenario.id}).json()
    assert [r["id"] for r in by_scenario["results"]] == [started["id"]]
    by_name = api_client.get("/api/runs/", {"scenario_name": other.name}).json()
    assert [r["id"] for r in by_name["results"]] == [other_run["id"]]
    urgent = api_client.get("/api/runs/", {"priority": "urgent", "status": "PASSED"}).json()
    assert [r["id"] for r in urgent["results"]] == [started["id"]]
    later = (timezone.now() + timezone.timedelta(hours=1)).isoformat()
    assert api_client.get("/api/runs/", {"queued_after": later}).json()["count"] == 0
    # An offset PostgreSQL does not accept (over 15:59) is converted to UTC first.
    far_east = (timezone.now() - timezone.timedelta(hours=1)).astimezone(
        timezone.get_fixed_timezone(20 * 60 + 41)
    )
    assert api_client.get("/api/runs/", {"queued_after": far_east.isoformat()}).json()["count"] == 2
    page = api_client.get("/api/runs/", {"limit": 1, "offset": 1}).json()
    assert page["count"] == 2 and [r["id"] for r in page["results"]] == [started["id"]]


def test_rerun_starts_a_new_run_with_the_same_scenario_payload_and_priority(api_client):
    scenario = make_scenario()
    first = api_client.post(
        "/api/runs/",
        {"scenario": scenario.id, "payload": {"k": 1}, "priority": "background"},
        format="json",
    ).json()
    finished_run(first["id"])

    response = api_client.post(f"/api/runs/{first['id']}/rerun/")

    assert response.status_code == 201
    again = response.json()
    assert again["id"] != first["id"] and again["scenario_id"] == scenario.id
    assert again["priority"] == "background" and again["context"]["payload"] == {"k": 1}
    assert finished_run(again["id"]).status == "PASSED"


def test_a_queued_run_can_be_cancelled_and_never_starts(api_client):
    blocker = make_scenario([delay_step("hold", 1.5)])
    scenario = make_scenario()
    # Two slow runs occupy both workers, so the third stays QUEUED until cancelled.
    busy = [
        api_client.post("/api/runs/", {"scenario": blocker.id}, format="json").json()
        for _ in range(2)
    ]
    wait_for(
        lambda: TestRun.objects.filter(status="IN_PROGRESS").count() == 2,
        message="both workers to be busy",
    )
    queued = api_client.post("/api/runs/", {"scenario": scenario.id}, format="json").json()

    response = api_client.post(f"/api/runs/{queued['id']}/cancel/")

    assert response.status_code == 200 and response.json()["status"] == "CANCELLED"
    for run in busy:
        finished_run(run["id"])
    cancelled = TestRun.objects.get(id=queued["id"])
    assert cancelled.status == "CANCELLED" and cancelled.started_at is None


def test_queue_record_that_failed_is_retried_and_then_cancelled(api_client, target_url):
    failing = make_scenario([http_step("teapot", f"{target_url}/health", 418)])
    created = api_client.post(
        "/api/queue/", {"scenario": failing.id, "payload": {}, "max_attempts": 1}, format="json"
    ).json()
    wait_for(lambda: QueueRecord.objects.get(id=created["id"]).status == "ERROR")
    errored = api_client.get("/api/queue/", {"status": "ERROR"}).json()["results"]
    assert [record["id"] for record in errored] == [created["id"]]
    assert api_client.get(f"/api/queue/{created['id']}/").json()["runs"][0]["run"]["status"] == (
        "FAILED"
    )

    retried = api_client.post(f"/api/queue/{created['id']}/retry/")
    assert retried.status_code == 200, retried.json()
    assert retried.json()["status"] in ("SCHEDULED", "RUNNING")
    cancelled = api_client.post(f"/api/queue/{created['id']}/cancel/")
    assert cancelled.status_code == 200, cancelled.json()
    # A run its worker has claimed already stops first: the record holds its lane until then.
    if cancelled.json()["status"] == "RUNNING":
        assert cancelled.json()["cancel_requested_at"] is not None
    wait_for(lambda: QueueRecord.objects.get(id=created["id"]).status == "CANCELLED")


# --- bad input ----------------------------------------------------------------------------------

_VALID = {"steps": [delay_step("wait")]}
_BAD_METHOD = {
    "steps": [
        delay_step("wait"),
        {"name": "fetch", "plugin": "http", "with": {"url": "http://x", "method": "FETCH"}},
    ]
}


@pytest.mark.parametrize(
    "method, url, body, field",
    [
        ("post", "/api/scenarios/", {"name": "s", "definition": _BAD_METHOD},
         "definition.steps[1].with.method"),
        ("post", "/api/scenarios/validate/", {"definition": _BAD_METHOD},
         "definition.steps[1].with.method"),
        ("post", "/api/scenarios/validate/",
         {"definition": {"steps": [{"name": "a", "plugin": "nope"}]}},
         "definition.steps[0].plugin"),
        ("post", "/api/scenarios/validate/", {"definition": {"steps": []}}, "definition.steps"),
        ("post", "/api/scenarios/", {"definition": _VALID}, "name"),
        ("post", "/api/scenarios/", {"name": "  ", "definition": _VALID}, "name"),
        ("post", "/api/scenarios/", {"name": "a\u0000b", "definition": _VALID}, "name"),
        ("post", "/api/scenarios/", {"name": "s", "definition": [1]}, "definition"),
        ("post", "/api/scenarios/", {"name": "{scenario_name}", "definition": _VALID}, "name"),
        ("patch", "/api/scenarios/{scenario}/", {"definition": _BAD_METHOD},
         "definition.steps[1].with.method"),
        ("put", "/api/scenarios/{scenario}/", {"name": "s"}, "definition"),
        ("post", "/api/runs/", {"scenario": "no-such-scenario"}, "scenario"),
        ("post", "/api/runs/", {"scenario": "{scenario}", "payload": [1]}, "payload"),
        ("post", "/api/runs/", {"scenario": "{scenario}", "priority": "asap"}, "priority"),
        ("post", "/api/runs/", {"scenario": "{scenario}", "payload": {"a": "x\u0000"}}, "payload"),
        ("post", "/api/runs/", '{"scenario": "{scenario}", "payload": {"a": "\\ud800"}}',
         "payload"),
        ("post", "/api/queue/", {"scenario": "{scenario}", "payload": [1]}, "payload"),
        ("post", "/api/queue/", {"scenario": "{scenario}", "payload": {}, "max_attempts": 0},
         "max_attempts"),
        ("get", "/api/runs/?queued_after=0001-01-01T00:00:00%2B05:00", None, "queued_after"),
        ("get", "/api/runs/?queued_after=", None, "queued_after"),
        ("get", "/api/runs/?scenario=abc", None, "scenario"),
        ("get", "/api/runs/?status=DONE", None, "status"),
        ("get", "/api/queue/?limit=0", None, "limit"),
        ("get", "/api/queue/?offset=-1", None, "offset"),
        ("get", "/api/scenarios/?is_active=maybe", None, "is_active"),
        ("get", "/api/dead-letters/?status=LOST", None, "status"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_written(
    api_client, method, url, body, field
):
    scenario = make_scenario(name="existing")
    url = url.format(scenario=scenario.id)
    # A str body is sent as it is: the client could not encode an unpaired surrogate.
    raw = body if isinstance(body, str) else json.dumps(body)
    raw = raw.replace("{scenario}", str(scenario.id)).replace("{scenario_name}", scenario.name)
    counts = row_counts()

    if method == "get":
        response = api_client.get(url)
    else:
        response = api_client.generic(method.upper(), url, raw, content_type="application/json")

    assert field in assert_error(response, 400, "invalid")["fields"], response.json()
    assert row_counts() == counts
    assert Scenario.objects.get(id=scenario.id).definition == scenario.definition


def test_a_definition_with_more_steps_than_the_limit_is_refused(api_client):
    steps = [delay_step(f"step {i}") for i in range(4)]
    with override_settings(ORCHESTRA_MAX_STEPS=3):
        response = api_client.post(
            "/api/scenarios/", {"name": "long", "definition": {"steps": steps}}, format="json"
        )

    assert "at most 3 steps" in assert_error(response, 400)["fields"]["definition.steps"][0]
    assert not Scenario.objects.filter(name="long").exists()


def test_a_payload_over_the_payload_limit_is_refused(api_client, settings):
    scenario = make_scenario()
    payload = {"blob": "x" * settings.ORCHESTRA_API_MAX_PAYLOAD_BYTES}

    response = api_client.post(
        "/api/runs/", {"scenario": scenario.id, "payload": payload}, format="json"
    )

    assert "at most" in assert_error(response, 400)["fields"]["payload"][0]
    assert not TestRun.objects.exists()


def test_a_body_over_the_size_limit_is_a_413_in_the_error_shape(api_client):
    scenario = make_scenario()
    body = {"scenario": scenario.id, "payload": {"blob": "x" * 2000}}

    with override_settings(ORCHESTRA_API_MAX_BODY_BYTES=1000):
        response = api_client.post("/api/runs/", body, format="json")

    assert_error(response, 413, "too_large")
    assert not TestRun.objects.exists()


def test_deeply_nested_json_is_a_400_not_a_500(api_client):
    scenario = make_scenario()
    nested = "[" * 100 + "]" * 100
    raw = f'{{"scenario": {scenario.id}, "payload": {{"deep": {nested}}}}}'

    response = api_client.generic("POST", "/api/runs/", raw, content_type="application/json")

    assert_error(response, 400, "parse_error")
    assert not TestRun.objects.exists()


@pytest.mark.parametrize(
    "raw, content_type, status, code",
    [
        ("{not json", "application/json", 400, "parse_error"),
        ("scenario=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_bodies_that_are_not_json_are_refused(api_client, raw, content_type, status, code):
    response = api_client.generic("POST", "/api/runs/", raw, content_type=content_type)

    assert_error(response, status, code)


def test_writes_over_the_rate_limit_are_a_429(api_client, monkeypatch):
    monkeypatch.setattr(WriteRateThrottle, "THROTTLE_RATES", {"writes": "2/minute"})
    body = {"definition": {"steps": [delay_step("a")]}}

    statuses = [
        api_client.post("/api/scenarios/validate/", body, format="json").status_code
        for _ in range(2)
    ]
    throttled = api_client.post("/api/scenarios/validate/", body, format="json")

    assert statuses == [200, 200]
    assert_error(throttled, 429, "throttled")
    assert int(throttled["Retry-After"]) > 0
    assert api_client.get("/api/scenarios/").status_code == 200  # reads are not throttled


# --- state conflicts ----------------------------------------------------------------------------


def test_cancelling_a_finished_run_is_a_409(api_client):
    run = api_client.post("/api/runs/", {"scenario": make_scenario().id}, format="json").json()
    assert finished_run(run["id"]).status == "PASSED"

    response = api_client.post(f"/api/runs/{run['id']}/cancel/")

    assert "PASSED" in assert_error(response, 409, "conflict")["message"]
    assert TestRun.objects.get(id=run["id"]).status == "PASSED"


def test_retrying_a_done_queue_record_is_a_409(api_client):
    record = api_client.post(
        "/api/queue/", {"scenario": make_scenario().id, "payload": {}}, format="json"
    ).json()
    wait_for(lambda: QueueRecord.objects.get(id=record["id"]).status == "DONE")

    assert_error(api_client.post(f"/api/queue/{record['id']}/retry/"), 409, "conflict")
    assert QueueRecord.objects.get(id=record["id"]).status == "DONE"


def test_rerunning_a_run_of_a_deactivated_scenario_is_a_409(api_client, stored):
    api_client.post(f"/api/scenarios/{stored['scenario']}/deactivate/")
    runs_before = TestRun.objects.count()

    assert_error(api_client.post(f"/api/runs/{stored['run']}/rerun/"), 409, "conflict")
    assert TestRun.objects.count() == runs_before


# --- idempotency --------------------------------------------------------------------------------


def test_repeated_idempotency_key_starts_one_run_and_replays_the_first_response(api_client):
    scenario = make_scenario()
    body = {"scenario": scenario.id, "payload": {"n": 1}}
    headers = {"HTTP_IDEMPOTENCY_KEY": "start-once"}

    first = api_client.post("/api/runs/", body, format="json", **headers)
    second = api_client.post("/api/runs/", body, format="json", **headers)

    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert TestRun.objects.filter(scenario=scenario).count() == 1
    finished_run(first.json()["id"])


def test_idempotency_key_reused_with_another_body_is_a_409(api_client):
    scenario = make_scenario()
    headers = {"HTTP_IDEMPOTENCY_KEY": "one-body-only"}
    first = api_client.post(
        "/api/runs/", {"scenario": scenario.id, "payload": {"n": 1}}, format="json", **headers
    )

    other = api_client.post(
        "/api/runs/", {"scenario": scenario.id, "payload": {"n": 2}}, format="json", **headers
    )

    assert first.status_code == 201
    assert "one-body-only" in assert_error(other, 409, "conflict")["message"]
    assert TestRun.objects.filter(scenario=scenario).count() == 1
    finished_run(first.json()["id"])


@pytest.mark.parametrize("url", ["/api/queue/", "/api/runs/{run}/rerun/"])
def test_idempotency_key_also_makes_enqueue_and_rerun_safe_to_repeat(api_client, stored, url):
    body = {"scenario": stored["scenario"], "payload": {}} if url == "/api/queue/" else None
    url = url.format(**stored)
    runs_before = TestRun.objects.count()

    responses = [
        api_client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="again") for _ in range(3)
    ]

    assert [r.status_code for r in responses] == [201, 201, 201]
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert TestRun.objects.count() == runs_before + 1
    finished_run(TestRun.objects.latest("id").id)


# --- reports ------------------------------------------------------------------------------------


def test_junit_and_html_report_of_a_failed_run(api_client, target_url):
    scenario = make_scenario(
        [
            http_step("service is up", f"{target_url}/health", 200),
            http_step("answers like a teapot", f"{target_url}/health", 418),
        ]
    )
    run = api_client.post("/api/runs/", {"scenario": scenario.id}, format="json").json()
    assert finished_run(run["id"]).status == "FAILED"

    junit = api_client.get(f"/api/runs/{run['id']}/junit/")
    report = api_client.get(f"/api/runs/{run['id']}/report/")

    assert junit.status_code == 200 and junit["Content-Type"].startswith("application/xml")
    suite = ElementTree.fromstring(junit.content).find("testsuite")
    cases = suite.findall("testcase")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert [case.get("name") for case in cases] == ["service is up", "answers like a teapot"]
    assert [len(case.findall("failure")) for case in cases] == [0, 1]
    assert report.status_code == 200 and report["Content-Type"].startswith("text/html")
    html = report.content.decode()
    assert "service is up" in html and "answers like a teapot" in html


# --- dead letters -------------------------------------------------------------------------------


def test_message_for_an_unknown_run_becomes_a_dead_letter_that_can_be_redriven_once(api_client):
    execute_run.apply_async(args=[987654321])

    def collected():
        dead_letters_collect()
        return DeadLetter.objects.filter(run_id_hint=987654321, received=True).first()

    letter = wait_for(collected, message="the dead letter to be collected")
    listed = api_client.get("/api/dead-letters/", {"status": "WAITING"}).json()
    (shown,) = [item for item in listed["results"] if item["id"] == letter.id]
    assert shown["run_id"] == 987654321 and shown["task"] == "runs.execute_run"
    assert "987654321" in shown["reason"]

    redriven = api_client.post(f"/api/dead-letters/{letter.id}/redrive/")
    assert redriven.status_code == 200 and redriven.json()["status"] == "REDRIVEN"
    assert redriven.json()["redriven_at"]
    assert_error(api_client.post(f"/api/dead-letters/{letter.id}/redrive/"), 409, "conflict")
