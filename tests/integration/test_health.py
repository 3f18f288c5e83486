"""/api/health/ checks the broker at most once per window for all callers, and is throttled."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import caches
from django.db import connection
from django.test import Client, override_settings

from orchestra import health
from orchestra.api.throttling import AnonRateThrottle

WINDOW = 2


@pytest.fixture
def broker_checks(monkeypatch):
    """Every broker check made, counted where it opens its connection."""
    checks: list[float] = []
    check = health._broker_status

    def counted(ping_timeout: float):
        checks.append(time.time())
        return check(ping_timeout)

    monkeypatch.setattr(health, "_broker_status", counted)
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "100000/minute"})
    health._local.clear()
    return checks


def _call_health_concurrently(calls: int) -> list[int]:
    def call(_: int) -> int:
        try:
            return Client().get("/api/health/").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(call, range(calls)))


def _windows_between(start: float, end: float) -> int:
    return int(end // WINDOW) - int(start // WINDOW) + 1


@override_settings(ORCHESTRA_HEALTH_CACHE_SECONDS=WINDOW)
def test_many_anonymous_calls_make_one_broker_check_per_window(transactional_db, broker_checks):
    caches["default"].delete(health.CACHE_KEY)
    start = time.time()
    statuses = _call_health_concurrently(40)
    end = time.time()

    assert set(statuses) <= {200, 503}
    assert 1 <= len(broker_checks) <= _windows_between(start, end)


@override_settings(ORCHESTRA_HEALTH_CACHE_SECONDS=WINDOW)
def test_the_answer_is_checked_again_in_the_next_window(transactional_db, broker_checks):
    caches["default"].delete(health.CACHE_KEY)
    Client().get("/api/health/")
    first_window = int(broker_checks[0] // WINDOW)

    wait_until = (first_window + 1) * WINDOW
    while time.time() < wait_until:
        time.sleep(wait_until - time.time())
    Client().get("/api/health/")

    assert len(broker_checks) == 2


@override_settings(
    ORCHESTRA_HEALTH_CACHE_SECONDS=WINDOW,
    CACHES={
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        }
    },
)
def test_without_its_shared_store_health_answers_and_still_checks_once_per_window(
    transactional_db, broker_checks
):
    start = time.time()
    statuses = _call_health_concurrently(20)
    end = time.time()

    assert set(statuses) <= {200, 503}
    assert 1 <= len(broker_checks) <= _windows_between(start, end)


def test_anonymous_calls_past_the_anon_rate_are_a_429_with_retry_after(
    transactional_db, monkeypatch
):
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "3/minute"})
    client = Client(REMOTE_ADDR="192.0.2.7")

    statuses = [client.get("/api/health/").status_code for _ in range(3)]
    refused = client.get("/api/health/")

    assert set(statuses) <= {200, 503}
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "throttled"
    assert 1 <= int(refused["Retry-After"]) <= 60
    # Another address has its own allowance; a forged X-Forwarded-For does not give one.
    assert Client(REMOTE_ADDR="192.0.2.8").get("/api/health/").status_code in (200, 503)
    forged = client.get("/api/health/", HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert forged.status_code == 429


# --- messages of another deployment ---------------------------------------------------------------


@pytest.mark.integration
def test_a_message_naming_a_run_this_database_lacks_warns_in_the_worker_log_and_health(
    live_db, worker_factory
):
    from runs.deadletters import dead_letters_collect
    from runs.models import DeadLetter
    from runs.tasks import execute_run
    from tests.support import wait_for

    worker = worker_factory("foreign")
    assert health.health_check()["foreign_run_messages"] == 0
    # What a second orchestra sharing this vhost publishes: a run of its own database.
    execute_run.apply_async(args=[987654321])

    wait_for(
        lambda: "run 987654321 is not in this worker's database" in worker.output(),
        message="the worker's warning",
    )
    wait_for(
        lambda: dead_letters_collect() or DeadLetter.objects.filter(received=True).exists(),
        message="the dead letter to be collected",
    )
    line = next(line for line in worker.output().splitlines() if "987654321 is not" in line)
    assert "WARNING" in line and "another orchestra deployment" in line and "vhost" in line
    checked = health.health_check()
    assert checked["status"] == "ok"
    assert checked["foreign_run_messages"] == 1
    assert "another orchestra deployment may share this RabbitMQ vhost" in checked["warnings"][0]


@pytest.mark.django_db
def test_only_recent_dead_letters_of_runs_this_database_lacks_count_as_foreign():
    from datetime import timedelta

    from django.utils import timezone

    from runs.models import DeadLetter
    from runs.selectors import foreign_run_dead_letter_count
    from tests.factories import make_scenario

    run = make_scenario().runs.create(definition={"steps": []})
    DeadLetter.objects.create(run_id_hint=run.id, reason="given up after 3 deliveries")
    DeadLetter.objects.create(run_id_hint=None, reason="malformed run id 'x'")
    old = DeadLetter.objects.create(run_id_hint=run.id + 1000, reason="run does not exist")
    DeadLetter.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(hours=2))
    since = timezone.now() - timedelta(hours=1)

    assert foreign_run_dead_letter_count(since=since) == 0
    DeadLetter.objects.create(run_id_hint=run.id + 1001, reason="run does not exist")
    assert foreign_run_dead_letter_count(since=since) == 1
