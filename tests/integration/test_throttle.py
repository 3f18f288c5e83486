"""The API's rate limits hold for all web processes together, counted in a shared store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import caches
from django.db import connection
from django.test import RequestFactory, override_settings
from rest_framework.authtoken.models import Token

from orchestra.api.throttling import AnonRateThrottle
from orchestra.windows import count_in_window
from tests.support import ROOT, wait_for, worker_database_url

RATE = 20
REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_CACHE = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"orchestra-test-{os.environ['ORCHESTRA_TEST_ID']}-{os.getpid()}",
    }
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """``gunicorn -w 2 orchestra.wsgi`` against the test database; its access log names the
    worker (pid) that answered each request."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="gunicorn-"))
        self.access_log = self.directory / "access.log"
        self.log = self.directory / "error.log"
        command = [
            sys.executable, "-m", "gunicorn", "orchestra.wsgi:application",
            "-w", "2", "-b", f"127.0.0.1:{self.port}",
            "--access-logfile", str(self.access_log),
            "--access-logformat", "%(p)s %(s)s",
            "--error-logfile", str(self.log),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "DATABASE_URL": worker_database_url(),
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, timeout=60, message="gunicorn to answer")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{self.log.read_text()[-3000:]}")
        booted = self.log.exists() and self.log.read_text().count("Booting worker") >= 2
        try:
            return booted and httpx.get(f"{self.url}/api/", timeout=2).status_code == 401
        except httpx.HTTPError:
            return False

    def answering_pids(self) -> set[str]:
        return {line.split()[0] for line in self.access_log.read_text().splitlines() if line}

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def _token() -> str:
    user = User.objects.create_user(f"throttled-{User.objects.count()}")
    user.groups.add(Group.objects.get(name="operators"))
    return Token.objects.create(user=user).key


def _away_from_a_window_boundary(duration: int, margin: float) -> None:
    """Wait, if need be, until the current window of ``duration`` seconds has ``margin``
    seconds left, so that the burst below falls in one window."""
    wait_for(
        lambda: duration - time.time() % duration > margin,
        timeout=margin + 1,
        interval=0.2,
        message="the start of a throttle window",
    )


@pytest.mark.parametrize("store", ["postgresql", "redis"])
def test_two_gunicorn_workers_together_accept_at_most_the_rate(transactional_db, store):
    extra = {"ORCHESTRA_API_WRITE_RATE": f"{RATE}/minute"}
    if store == "redis":
        extra |= {
            "ORCHESTRA_REDIS_URL": REDIS_URL,
            "ORCHESTRA_CACHE_KEY_PREFIX": REDIS_CACHE["default"]["KEY_PREFIX"],
        }
    token = _token()
    server = Gunicorn(extra)
    body = {"definition": {"steps": [{"name": "a", "plugin": "delay", "with": {"seconds": 0}}]}}

    def write(_: int) -> httpx.Response:
        # A new connection each time, so that both workers take requests.
        return httpx.post(
            f"{server.url}/api/scenarios/validate/",
            json=body,
            headers={"Authorization": f"Token {token}", "Connection": "close"},
            timeout=30,
        )

    try:
        _away_from_a_window_boundary(60, margin=25)
        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(write, range(6 * RATE)))
        pids = server.answering_pids()
    finally:
        server.stop()

    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) == RATE
    assert len(pids) == 2, "both workers must have answered for the test to mean anything"
    for response in responses:
        if response.status_code == 429:
            assert 1 <= int(response.headers["Retry-After"]) <= 60
            assert response.json()["error"]["code"] == "throttled"


def _concurrent_counts(key: str, calls: int) -> list[int]:
    barrier = threading.Barrier(8)

    def count(index: int) -> int:
        if index < 8:
            barrier.wait()
        try:
            return count_in_window(key, 3600)[0]
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(count, range(calls)))


def test_concurrent_counting_in_postgresql_never_gives_two_callers_the_same_count(
    transactional_db,
):
    _away_from_a_window_boundary(3600, margin=30)
    assert sorted(_concurrent_counts("race-pg", 200)) == list(range(1, 201))


@override_settings(CACHES=REDIS_CACHE)
def test_concurrent_counting_in_redis_never_gives_two_callers_the_same_count(transactional_db):
    caches["default"].clear()
    _away_from_a_window_boundary(3600, margin=30)
    assert sorted(_concurrent_counts("race-redis", 200)) == list(range(1, 201))


def test_the_remaining_time_is_that_of_the_current_window(transactional_db):
    count, remaining = count_in_window("remaining", 60)
    assert count == 1 and 0 < remaining <= 60
    assert abs(remaining - (60 - time.time() % 60)) < 2


def test_a_client_cannot_choose_its_throttle_key_with_x_forwarded_for():
    request = RequestFactory().get("/api/health/", HTTP_X_FORWARDED_FOR="1.2.3.4")

    throttle = AnonRateThrottle()

    assert throttle.get_ident(request) == "127.0.0.1"
    assert throttle.get_cache_key(request, None) == "throttle_anon_127.0.0.1"
