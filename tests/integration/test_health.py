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
