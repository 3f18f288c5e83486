"""/api/rate-keys/: configuration through the API, the throttle's state shown read-only with the
use derived on the database's clock, unblock, roles and field errors; against PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from orchestra.metrics import OrchestraCollector
from plugins.base import Pushback
from targets.models import RateKey
from targets.throttle import permit_take, pushback_record
from tests.integration.test_api import assert_error, call
from tests.integration.test_metrics import scrape

pytestmark = pytest.mark.integration

URL = "/api/rate-keys/"


def ahead(seconds: float):
    """The database's clock plus ``seconds``, as the throttle writes it."""
    return Now() + timedelta(seconds=seconds)


@pytest.fixture
def keys(transactional_db) -> dict[str, RateKey]:
    """A key in each state: never configured, configured and idle, mid-burst, blocked."""
    made = {
        "unlimited": RateKey.objects.create(name="http://127.0.0.1:8081"),
        "idle": RateKey.objects.create(
            name="https://api.example.com:443", requests=20, interval_seconds=1, burst=5
        ),
        "busy": RateKey.objects.create(name="payments", requests=6, interval_seconds=60, burst=4),
        "blocked": RateKey.objects.create(
            name="http://slow.example.com:80",
            requests_total=120,
            pushbacks_total=2,
            throttled_waits_total=7,
            wait_seconds_total=31.5,
            learned_interval_seconds=0.5,
            recent_pushbacks=[{"status": 429, "retry_after": 60}],
        ),
    }
    RateKey.objects.filter(name="payments").update(tat=ahead(25))  # 2.5 of 4 spent
    RateKey.objects.filter(name="http://slow.example.com:80").update(blocked_until=ahead(60))
    return made


def columns_written(captured: CaptureQueriesContext) -> set[str]:
    """The rate key columns that the captured UPDATE statements set."""
    written = set()
    for query in captured.captured_queries:
        if query["sql"].startswith('UPDATE "targets_ratekey"'):
            assignments = query["sql"].split(" SET ", 1)[1].split(" WHERE ", 1)[0]
            written |= set(re.findall(r'"(\w+)" = ', assignments))
    return written


CONFIG_COLUMNS = {"requests", "interval_seconds", "burst", "max_concurrent", "updated_at"}


def by_name(client, query: str = "") -> dict[str, dict]:
    response = client.get(URL + query)
    assert response.status_code == 200, response.content
    return {key["name"]: key for key in response.json()["results"]}


def test_the_list_shows_configuration_state_and_use_of_every_key(viewer_client, keys):
    listed = by_name(viewer_client)

    assert list(listed) == sorted(key.name for key in keys.values())
    idle = listed["https://api.example.com:443"]
    assert (idle["requests"], idle["interval_seconds"], idle["burst"]) == (20, 1.0, 5)
    assert idle["use"] == {
        "emission_interval_seconds": 0.05,
        "requests_per_second": 20.0,
        "burst_used": 0.0,
        "next_request_in_seconds": 0.0,
        "blocked": False,
        "blocked_for_seconds": 0.0,
    }
    busy = listed["payments"]["use"]
    # tat was 25 s ahead when written; the request reads it a little later.
    assert 2.4 < busy["burst_used"] <= 2.5 and busy["next_request_in_seconds"] == 0
    assert listed["http://127.0.0.1:8081"]["use"]["requests_per_second"] is None
    blocked = listed["http://slow.example.com:80"]
    assert blocked["blocked_until"] is not None
    assert blocked["use"]["blocked"] is True and 55 < blocked["use"]["blocked_for_seconds"] <= 60
    assert blocked["use"]["requests_per_second"] == 2.0  # learned from its 429s
    assert (blocked["requests_total"], blocked["pushbacks_total"]) == (120, 2)
    assert (blocked["throttled_waits_total"], blocked["wait_seconds_total"]) == (7, 31.5)
    assert blocked["recent_pushbacks"] == [{"status": 429, "retry_after": 60}]


def test_the_list_filters_by_name_and_by_blocked_and_pages(viewer_client, keys):
    assert list(by_name(viewer_client, "?blocked=true")) == ["http://slow.example.com:80"]
    assert "http://slow.example.com:80" not in by_name(viewer_client, "?blocked=false")
    assert set(by_name(viewer_client, "?name=EXAMPLE")) == {
        "https://api.example.com:443",
        "http://slow.example.com:80",
    }
    page = viewer_client.get(URL + "?limit=1&offset=1").json()
    assert page["count"] == 4 and [key["name"] for key in page["results"]] == [
        "http://slow.example.com:80"
    ]
    assert_error(viewer_client.get(URL + "?blocked=maybe"), 400, "invalid")


def test_a_block_that_has_passed_on_the_database_clock_is_not_blocked(viewer_client, keys):
    RateKey.objects.filter(id=keys["blocked"].id).update(blocked_until=ahead(-1))

    shown = viewer_client.get(f"{URL}{keys['blocked'].id}/").json()

    assert shown["use"]["blocked"] is False and shown["use"]["blocked_for_seconds"] == 0
    assert by_name(viewer_client, "?blocked=true") == {}


def test_an_operator_creates_a_key_and_its_state_starts_empty(api_client, transactional_db):
    response = api_client.post(
        URL,
        {"name": "https://api.example.com:443", "requests": 20, "burst": 5, "max_concurrent": 3},
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["requests"], body["interval_seconds"], body["burst"], body["max_concurrent"]) == (
        20,
        1.0,
        5,
        3,
    )
    assert body["requests_total"] == 0 and body["blocked_until"] is None
    stored = RateKey.objects.get(id=body["id"])
    assert (stored.name, stored.requests, stored.burst, stored.max_concurrent) == (
        "https://api.example.com:443",
        20,
        5,
        3,
    )


def test_a_name_taken_already_is_a_400_naming_the_key_to_change(api_client, keys):
    error = assert_error(api_client.post(URL, {"name": "payments"}, format="json"), 400, "invalid")

    assert "already exists" in error["fields"]["name"][0]
    assert str(keys["busy"].id) in error["fields"]["name"][0]
    assert RateKey.objects.count() == 4


INVALID = [
    ({"requests": 0}, "requests"),
    ({"requests": -3}, "requests"),
    ({"requests": "many"}, "requests"),
    ({"requests": 2**31}, "requests"),
    ({"interval_seconds": 0}, "interval_seconds"),
    ({"interval_seconds": -1}, "interval_seconds"),
    ({"interval_seconds": 86_401}, "interval_seconds"),
    ({"interval_seconds": None}, "interval_seconds"),
    ({"interval_seconds": "NaN"}, "interval_seconds"),
    ({"interval_seconds": "Infinity"}, "interval_seconds"),
    ({"burst": 0}, "burst"),
    ({"burst": None}, "burst"),
    ({"max_concurrent": 0}, "max_concurrent"),
    ({"max_concurrent": 1.5}, "max_concurrent"),
    ({"blocked_until": None}, "blocked_until"),
    ({"requests_total": 0}, "requests_total"),
    ({"tat": None}, "tat"),
]


@pytest.mark.parametrize(("body", "field"), INVALID, ids=lambda v: str(v))
def test_bad_configuration_is_a_400_naming_the_field_and_changes_nothing(
    api_client, keys, body, field
):
    key = keys["idle"]
    before = RateKey.objects.values().get(id=key.id)

    for method, url, sent in [
        ("post", URL, {"name": "new-key", **body}),
        ("put", f"{URL}{key.id}/", body),
        ("patch", f"{URL}{key.id}/", body),
    ]:
        error = assert_error(call(api_client, method, url, sent), 400, "invalid")
        assert list(error["fields"]) == [field], (method, error)

    assert RateKey.objects.values().get(id=key.id) == before
    assert not RateKey.objects.filter(name="new-key").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "blank"),
        ("   ", "blank"),
        ("x" * 301, "300"),
        ("a\x00b", "null"),
        ("a\ud800b", "surrogate"),
        (None, "null"),
    ],
    ids=["empty", "whitespace", "too-long", "nul", "unpaired-surrogate", "null"],
)
def test_a_bad_name_is_a_400_naming_it(api_client, transactional_db, name, message):
    # Escaped JSON, as a client sends an unpaired surrogate.
    body = json.dumps({"name": name})
    response = api_client.post(URL, body, content_type="application/json")

    error = assert_error(response, 400, "invalid")
    assert list(error["fields"]) == ["name"]
    assert message in error["fields"]["name"][0].lower() or message == "300"
    assert not RateKey.objects.exists()


def test_the_name_cannot_change_on_update(api_client, keys):
    key = keys["idle"]

    error = assert_error(call(api_client, "patch", f"{URL}{key.id}/", {"name": "x"}), 400)

    assert list(error["fields"]) == ["name"]
    assert RateKey.objects.get(id=key.id).name == key.name


def test_patch_changes_only_named_configuration_and_keeps_the_throttle_state(api_client, keys):
    key = keys["blocked"]
    # The throttle counts on while the operator edits.
    RateKey.objects.filter(id=key.id).update(requests_total=F("requests_total") + 5)

    with CaptureQueriesContext(connection) as captured:
        response = call(api_client, "patch", f"{URL}{key.id}/", {"requests": 4, "burst": 2})

    assert response.status_code == 200, response.content
    # Only its own columns: a worker's concurrent update of the state is never overwritten.
    assert columns_written(captured) == {"requests", "burst", "updated_at"}
    stored = RateKey.objects.get(id=key.id)
    assert (stored.requests, stored.interval_seconds, stored.burst) == (4, 1.0, 2)
    assert stored.requests_total == 125 and stored.pushbacks_total == 2
    assert stored.blocked_until is not None and stored.recent_pushbacks == key.recent_pushbacks
    assert response.json()["use"]["requests_per_second"] == 2.0  # learned 0.5 s is stricter


def test_put_replaces_the_configuration_and_what_it_leaves_out_is_unlimited(api_client, keys):
    key = keys["idle"]
    RateKey.objects.filter(id=key.id).update(max_concurrent=4)

    with CaptureQueriesContext(connection) as captured:
        response = call(
            api_client, "put", f"{URL}{key.id}/", {"requests": 100, "interval_seconds": 60}
        )

    assert response.status_code == 200, response.content
    assert columns_written(captured) == CONFIG_COLUMNS
    stored = RateKey.objects.get(id=key.id)
    assert (stored.requests, stored.interval_seconds, stored.burst, stored.max_concurrent) == (
        100,
        60.0,
        1,
        None,
    )
    assert response.json()["use"]["emission_interval_seconds"] == 0.6


def test_unblock_lifts_the_targets_block_for_everyone_and_keeps_the_rest(api_client, keys):
    key = keys["blocked"]

    with CaptureQueriesContext(connection) as captured:
        response = api_client.post(f"{URL}{key.id}/unblock/")

    assert response.status_code == 200, response.content
    assert columns_written(captured) == {"blocked_until", "tat", "release_tat", "updated_at"}
    assert response.json()["blocked_until"] is None
    assert response.json()["use"]["blocked"] is False
    stored = RateKey.objects.get(id=key.id)
    assert stored.blocked_until is None
    assert (stored.pushbacks_total, stored.learned_interval_seconds) == (2, 0.5)
    # Unblocking a key that is not blocked is nothing to do.
    assert api_client.post(f"{URL}{key.id}/unblock/").status_code == 200


def test_after_unblock_the_throttle_gives_the_next_request_a_permit_at_once(api_client):
    key = "http://unblock.example.com:80"
    first = permit_take(key=key)
    pushback_record(key=key, pushback=Pushback(429, 120.0, "120"), given_at=first.given_at)
    held = permit_take(key=key, reserve_within=0)
    assert not held.reserved and held.release_in > 100  # parked until the block ends
    key_id = RateKey.objects.get(name=key).id
    assert api_client.get(f"{URL}{key_id}/").json()["use"]["blocked"] is True

    response = api_client.post(f"{URL}{key_id}/unblock/")

    assert response.status_code == 200
    assert response.json()["use"]["next_request_in_seconds"] == 0
    permit = permit_take(key=key, reserve_within=0)
    assert permit.reserved and permit.wait == 0
    stored = RateKey.objects.get(id=key_id)
    assert stored.pushbacks_total == 1 and stored.recent_pushbacks[0]["retry_after"] == "120"


@pytest.mark.parametrize(
    ("config", "taken", "expected_wait"),
    [
        ({"requests": 1, "interval_seconds": 1, "burst": 3}, 5, 3.0),
        ({"requests": 1, "interval_seconds": 1, "burst": 3}, 2, 0.0),
        ({"requests": 1, "interval_seconds": 2, "burst": 1}, 2, 4.0),
        ({"learned_interval_seconds": 1.0, "burst": 2}, 3, 2.0),
    ],
    ids=["burst-spent", "burst-left", "no-burst", "learned-limit"],
)
def test_the_use_shown_agrees_with_the_throttles_next_permit(
    viewer_client, transactional_db, config, taken, expected_wait
):
    """The selector reads GCRA's state the way targets.throttle decides on it."""
    key = RateKey.objects.create(name="http://agree.example.com:80", **config)
    for _ in range(taken):
        permit_take(key=key.name)

    shown = viewer_client.get(f"{URL}{key.id}/").json()["use"]
    permit = permit_take(key=key.name)

    # Seconds apart, so that the time the permits and the read take does not decide; the
    # wait only shrinks while they run.
    assert expected_wait - 0.6 <= shown["next_request_in_seconds"] <= expected_wait
    assert permit.wait == pytest.approx(shown["next_request_in_seconds"], abs=0.2)
    assert shown["emission_interval_seconds"] == pytest.approx(permit.interval, abs=0.01)


def test_delete_forgets_the_key(api_client, keys):
    key = keys["idle"]

    assert api_client.delete(f"{URL}{key.id}/").status_code == 204

    assert not RateKey.objects.filter(id=key.id).exists()
    assert_error(api_client.get(f"{URL}{key.id}/"), 404, "not_found")
    assert_error(api_client.delete(f"{URL}{key.id}/"), 404, "not_found")


OPERATIONS = [
    ("get", URL),
    ("post", URL),
    ("get", URL + "{id}/"),
    ("put", URL + "{id}/"),
    ("patch", URL + "{id}/"),
    ("delete", URL + "{id}/"),
    ("post", URL + "{id}/unblock/"),
]


@pytest.mark.parametrize(("method", "url"), OPERATIONS)
def test_without_credentials_every_operation_is_a_401(keys, method, url):
    response = call(APIClient(), method, url.format(id=keys["blocked"].id), {"name": "anon"})

    assert_error(response, 401, "not_authenticated")


@pytest.mark.parametrize(("method", "url"), [op for op in OPERATIONS if op[0] != "get"])
def test_a_viewer_writing_gets_a_403_and_nothing_changes(viewer_client, keys, method, url):
    before = list(RateKey.objects.order_by("id").values())

    response = call(
        viewer_client, method, url.format(id=keys["blocked"].id), {"name": "by-a-viewer"}
    )

    assert_error(response, 403, "permission_denied")
    assert list(RateKey.objects.order_by("id").values()) == before


@pytest.mark.parametrize(("method", "url"), [op for op in OPERATIONS if "{id}" in op[1]])
def test_an_unknown_or_malformed_id_is_a_404(api_client, transactional_db, method, url):
    for key_id in (987654, "abc", 2**70):
        assert_error(call(api_client, method, url.format(id=key_id), {}), 404, "not_found")


def test_the_schema_documents_the_operations_with_examples(viewer_client):
    schema = viewer_client.get("/api/schema/?format=json").json()

    paths = schema["paths"]
    assert set(paths[URL]) == {"get", "post"}
    assert set(paths[URL + "{id}/"]) == {"get", "put", "patch", "delete"}
    assert "post" in paths[URL + "{id}/unblock/"]
    create = paths[URL]["post"]["requestBody"]["content"]["application/json"]
    assert create["examples"]
    config = schema["components"]["schemas"]["RateKeyConfigRequest"]["properties"]
    assert config["requests"]["minimum"] == 1 and config["requests"]["nullable"] is True
    assert config["interval_seconds"]["exclusiveMinimum"] is True


# --- Prometheus ---------------------------------------------------------------------------------


def test_metrics_expose_each_keys_waits_pushbacks_seconds_and_block(viewer_client, keys):
    RateKey.objects.filter(name="payments").update(
        throttled_waits_total=9, wait_seconds_total=4.25, blocked_until=ahead(-5)
    )
    samples = scrape(viewer_client)
    text = viewer_client.get("/metrics").content.decode()

    def sample(name: str, key: str) -> float:
        return samples[(name, (("rate_key", key),))]

    slow, payments, idle = "http://slow.example.com:80", "payments", "http://127.0.0.1:8081"
    assert sample("orchestra_rate_key_blocked", slow) == 1
    assert sample("orchestra_rate_key_blocked", payments) == 0  # its block has passed
    assert sample("orchestra_rate_key_blocked", idle) == 0  # never blocked
    assert sample("orchestra_pushbacks_total", slow) == 2
    assert sample("orchestra_throttled_waits_total", slow) == 7
    assert sample("orchestra_throttle_wait_seconds_total", slow) == 31.5
    assert sample("orchestra_throttled_waits_total", payments) == 9
    assert sample("orchestra_throttle_wait_seconds_total", payments) == 4.25
    assert sample("orchestra_pushbacks_total", idle) == 0
    for family in ("throttled_waits", "pushbacks", "throttle_wait_seconds"):
        assert f"# TYPE orchestra_{family}_total counter" in text
    assert "# TYPE orchestra_rate_key_blocked gauge" in text
    # One statement for every key, however many there are.
    with CaptureQueriesContext(connection) as captured:
        list(OrchestraCollector().collect())
    reads = [q["sql"] for q in captured.captured_queries if "targets_ratekey" in q["sql"]]
    assert len(reads) == 1, reads
