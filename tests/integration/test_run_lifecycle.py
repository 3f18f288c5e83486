"""Cancel, lease loss and time limits end runs honestly: real worker processes, RabbitMQ and
PostgreSQL, and a target that keeps its own log of what it was sent (the independent evidence).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import psycopg2
import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

import celeryconfig
from runs.models import TestRun
from runs.services import run_cancel, run_start, runs_sweep
from runs.states import RunStatus
from runs.tasks import execute_run
from tests.factories import delay_step, make_scenario
from tests.integration.test_engine_faults import (
    executing_pid,
    finished,
    ready_messages,
    recorded_steps,
    terminate_other_database_connections,
)
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db")]


@dataclass
class TargetLog:
    """What the target saw: every request, and how each drip response ended."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: list[dict] = field(default_factory=list)
    drips: list[dict] = field(default_factory=list)

    def hits_of(self, tag: str) -> list[dict]:
        with self.lock:
            return [hit for hit in self.hits if hit["tag"] == tag]


class _Handler(BaseHTTPRequestHandler):
    log: TargetLog
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        with self.log.lock:
            self.log.hits.append({**query, "path": url.path, "at": time.monotonic()})
        if url.path == "/drip":
            return self._drip(query)
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, query: dict) -> None:
        """One byte every 0.2 s for ``seconds``; notes whether the client hung up first."""
        seconds = float(query.get("seconds", 20))
        entry = {"tag": query.get("tag"), "started": time.monotonic(), "closed_early": False}
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(int(seconds / 0.2)))
        self.end_headers()
        try:
            for _ in range(int(seconds / 0.2)):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            entry["closed_early"] = True
        entry["ended"] = time.monotonic()
        with self.log.lock:
            self.log.drips.append(entry)


@pytest.fixture
def target():
    log = TargetLog()
    handler = type("Handler", (_Handler,), {"log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", log
    server.shutdown()


def hit_step(name: str, url: str, tag: str, **extra) -> dict:
    return {
        "name": name,
        "plugin": "http",
        "with": {"url": f"{url}/hit", "query": {"tag": tag, "attempt": "{{ run.attempt }}"}},
        **extra,
    }


def test_cancel_stops_a_running_delay_at_once_runs_finally_and_ends_cancelled(worker_factory):
    worker = worker_factory("canceller")
    scenario = make_scenario(
        [delay_step("long wait", 60, timeout=90), delay_step("after")],
        **{"finally": [delay_step("clean up", 0.3)]},
    )
    run = run_start(scenario=scenario)
    executing_pid(run, attempt=1, worker=worker)

    asked = time.monotonic()
    assert run_cancel(run_id=run.id).status == RunStatus.IN_PROGRESS
    finished(run, timeout=15)
    took = time.monotonic() - asked

    assert run.status == RunStatus.CANCELLED
    assert took < 10, took  # the delay was 60 s
    print(f"cancel of a running delay confirmed {took:.2f} s after it was asked")
    steps = {step.name: step for step in run.steps.all()}
    assert (steps["long wait"].status, steps["long wait"].error) == (
        "ERROR",
        "interrupted: cancelled",
    )
    assert steps["after"].status == "SKIPPED"
    assert steps["clean up"].status == "PASSED"
    assert steps["clean up"].is_cleanup


def test_finally_steps_after_a_cancel_get_only_the_grace(worker_factory):
    worker = worker_factory("graceful", env={"ORCHESTRA_FINALLY_GRACE_SECONDS": "1"})
    scenario = make_scenario(
        [delay_step("long wait", 60, timeout=90)],
        **{"finally": [delay_step("slow clean up", 20, timeout=30), delay_step("next")]},
    )
    run = run_start(scenario=scenario)
    executing_pid(run, attempt=1, worker=worker)

    run_cancel(run_id=run.id)
    finished(run, timeout=15)

    assert run.status == RunStatus.CANCELLED
    slow, after = run.steps.filter(is_cleanup=True).order_by("position")
    assert slow.status == "ERROR" and "deadline" in slow.error
    assert slow.duration_ms < 3000  # 1 s of grace, not its 20 s
    assert (after.status, after.error) == (
        "SKIPPED",
        "skipped: no time left for finally steps (cancelled)",
    )


def test_cancel_during_http_to_a_slow_target_closes_the_connection_early(worker_factory, target):
    url, log = target
    worker = worker_factory("http-canceller")
    step = {
        "name": "drip",
        "plugin": "http",
        "with": {"url": f"{url}/drip", "query": {"tag": "cancel-me", "seconds": "20"}},
        "timeout": 40,
    }
    run = run_start(scenario=make_scenario([step]))
    executing_pid(run, attempt=1, worker=worker)
    wait_for(lambda: log.hits_of("cancel-me"), message="the target to see the request")

    run_cancel(run_id=run.id)
    finished(run, timeout=15)

    assert run.status == RunStatus.CANCELLED
    (drip,) = wait_for(lambda: list(log.drips), timeout=25, message="the drip to end")
    # The target's own account: the client hung up long before the 20 s body was sent.
    assert drip["closed_early"] is True
    assert drip["ended"] - drip["started"] < 12


def test_a_worker_paused_past_its_lease_sends_and_writes_nothing_after_it_resumes(
    worker_factory, target
):
    url, log = target
    first = worker_factory("paused")
    scenario = make_scenario(
        [delay_step("slow start", 3), hit_step("call", url, "paused-run"), delay_step("end", 1)]
    )
    run = run_start(scenario=scenario)
    child = executing_pid(run, attempt=1, worker=first)
    os.kill(child, signal.SIGSTOP)
    try:
        # The lease lapses (6 s in tests); the sweep hands the run to a second worker.
        wait_for(lambda: runs_sweep()["requeued"] == 1, timeout=20, message="the lease to lapse")
        second = worker_factory("heir")
        executing_pid(run, attempt=2, worker=second)
    finally:
        # Resume while attempt 2 still runs: the paused worker thinks it is inside step 0.
        os.kill(child, signal.SIGCONT)
    finished(run, timeout=30)

    assert run.status == RunStatus.PASSED, run.error
    assert run.attempt == 2
    assert executing_pid_of_run(run) in second.child_pids()
    # Stored steps come only from the new owner; the target saw only attempt 2.
    assert recorded_steps(run) == {2: [0, 1, 2]}
    wait_for(lambda: "'lost'" in first.output(), timeout=15, message="the paused worker to stop")
    assert [hit["attempt"] for hit in log.hits_of("paused-run")] == ["2"]
    assert first.output().count("succeeded in") == 1


def executing_pid_of_run(run: TestRun) -> int:
    return int(run.worker.rpartition(":")[2])


def test_an_autoretry_taken_by_another_process_is_executed_not_dropped(worker_factory):
    # A long lease: the retry must not find the first claim lapsed.
    env = {"ORCHESTRA_RUN_LEASE_SECONDS": "120"}
    first = worker_factory("failing", env=env)
    run = run_start(scenario=make_scenario([delay_step("slow", 1.5), delay_step("fast")]))
    executing_pid(run, attempt=1, worker=first)
    # Queued behind it: once the first try fails, its worker is busy with this one.
    blocker = run_start(scenario=make_scenario([delay_step("blocker", 8)]))

    # Storing step 0 fails on the dropped connection and on the new one it tries once more (the
    # database admits nobody for a moment): the task's retry is published.
    with database_closed_to_new_connections():
        assert terminate_other_database_connections() >= 1
        wait_for(lambda: "Retry in" in first.output(), message="the autoretry")
    executing_pid(blocker, attempt=1, worker=first)
    second = worker_factory("sibling", env=env)
    finished(run, timeout=20)

    assert run.status == RunStatus.PASSED, run.error
    assert run.attempt == 2
    # Which process takes the retry is the broker's choice (the blocker may be delayed by the
    # closed database too); whichever it is, the retry's claim wins over the live first claim
    # (tests/unit/test_run_claims.py pins the rule for any process).
    assert executing_pid_of_run(run) in [*first.child_pids(), *second.child_pids()]
    assert recorded_steps(run) == {2: [0, 1]}
    finished(blocker, timeout=60)


@contextmanager
def database_closed_to_new_connections():
    """No new connection to the test database (superusers included) inside the block; the
    setting is changed from another database, as PostgreSQL requires."""
    name = connection.settings_dict["NAME"]
    params = connection.get_connection_params()
    admin = psycopg2.connect(**{**params, "dbname": "postgres"})
    admin.autocommit = True
    try:
        admin.cursor().execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        yield
    finally:
        admin.cursor().execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()


def time_limits(monkeypatch, *, soft: int, hard: int) -> dict[str, str]:
    """Small time limits for the publisher (this process: Celery stamps its limits into each
    message) and, by the environment returned, for the workers."""
    options = {**execute_run._get_exec_options(), "soft_time_limit": soft, "time_limit": hard}
    monkeypatch.setattr(execute_run, "_exec_options", options)
    return {"CELERY_TASK_SOFT_TIME_LIMIT": str(soft), "CELERY_TASK_TIME_LIMIT": str(hard)}


def test_soft_time_limit_ends_the_run_error_runs_finally_and_it_never_runs_again(
    worker_factory, target, monkeypatch
):
    url, log = target
    worker = worker_factory("soft", env=time_limits(monkeypatch, soft=3, hard=15))
    scenario = make_scenario(
        [hit_step("start", url, "soft-run"), delay_step("too long", 30, timeout=60)],
        **{"finally": [hit_step("clean up", url, "soft-cleanup")]},
    )
    run = run_start(scenario=scenario)
    executing_pid(run, attempt=1, worker=worker)
    finished(run, timeout=20)

    assert run.status == RunStatus.ERROR
    assert "time limit" in run.error
    steps = {step.name: step for step in run.steps.all()}
    assert (steps["too long"].status, steps["too long"].error) == (
        "ERROR",
        "interrupted: time limit",
    )
    assert steps["clean up"].status == "PASSED"
    assert len(log.hits_of("soft-cleanup")) == 1

    # Nothing is left to execute it again: no message, and the sweep leaves a finished run be.
    assert ready_messages() == 0
    TestRun.objects.filter(id=run.id).update(lease_expires_at=None)
    assert runs_sweep()["requeued"] == 0
    run.refresh_from_db()
    assert (run.status, run.attempt) == (RunStatus.ERROR, 1)
    assert [hit["attempt"] for hit in log.hits_of("soft-run")] == ["1"]
    assert worker.output().count(": 'executed'") == 1
    assert "Soft time limit (3s) exceeded" in worker.output()


def test_a_run_killed_by_the_hard_time_limit_is_not_executed_again(
    worker_factory, target, monkeypatch
):
    url, log = target
    worker = worker_factory("hard", env=time_limits(monkeypatch, soft=2, hard=4))
    scenario = make_scenario([delay_step("first", 1.5), hit_step("after", url, "hard-run")])
    run = run_start(scenario=scenario)
    child = executing_pid(run, attempt=1, worker=worker)
    # A database stall: storing step 0 waits on the run's row lock, where the soft limit cannot
    # interrupt it, until the hard limit kills the pool child.
    with transaction.atomic():
        TestRun.objects.select_for_update().get(id=run.id)
        wait_for(lambda: child not in worker.child_pids(), timeout=20, message="the hard kill")
    finished(run, timeout=20)

    assert "Hard time limit (4s) exceeded" in worker.output()
    assert run.status == RunStatus.ERROR
    assert "time limit" in run.error
    # The message came back and was recognised as out of time: nothing executed again.
    assert run.attempt == 2
    assert not run.steps.filter(attempt=2).exists()
    assert log.hits_of("hard-run") == []
    assert ready_messages() == 0


def test_sweep_finishes_a_run_whose_worker_never_confirms_a_cancel():
    scenario = make_scenario([delay_step("first")])
    now = timezone.now()
    run = TestRun.objects.create(
        scenario=scenario,
        definition=scenario.definition,
        context={"payload": {}},
        status=RunStatus.IN_PROGRESS,
        attempt=1,
        worker="otherhost:1",
        started_at=now,
        dispatched_at=now,
        lease_expires_at=now + timedelta(minutes=5),
    )

    assert run_cancel(run_id=run.id).status == RunStatus.IN_PROGRESS
    assert runs_sweep()["cancelled"] == 0  # its lease is alive: the worker may still confirm
    TestRun.objects.filter(id=run.id).update(lease_expires_at=now - timedelta(seconds=1))
    assert runs_sweep()["cancelled"] == 1

    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert "did not confirm" in run.error


def in_progress_run(**fields) -> TestRun:
    scenario = make_scenario([delay_step("first")])
    now = timezone.now()
    return TestRun.objects.create(
        scenario=scenario,
        definition=scenario.definition,
        context={"payload": {}},
        status=RunStatus.IN_PROGRESS,
        attempt=1,
        worker="otherhost:1",
        started_at=now,
        dispatched_at=now,
        lease_expires_at=now + timedelta(seconds=1),
        **fields,
    )


def test_api_cancel_of_a_running_run_is_accepted_and_shows_the_request(api_client):
    run = in_progress_run()

    response = api_client.post(f"/api/runs/{run.id}/cancel/")

    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["status"] == "IN_PROGRESS" and body["cancel_requested_at"]
    detail = api_client.get(f"/api/runs/{run.id}/").json()
    assert detail["cancel_requested_at"] == body["cancel_requested_at"]
    # Asked again: still accepted, the first request stands.
    again = api_client.post(f"/api/runs/{run.id}/cancel/")
    assert again.status_code == 202
    assert again.json()["cancel_requested_at"] == body["cancel_requested_at"]
    wait_for(lambda: runs_sweep()["cancelled"], message="the lease to lapse")  # settle it


def test_api_cancel_of_a_queued_run_cancels_it_at_once(api_client):
    scenario = make_scenario([delay_step("never")])
    run = TestRun.objects.create(
        scenario=scenario, definition=scenario.definition, context={"payload": {}}
    )

    response = api_client.post(f"/api/runs/{run.id}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "CANCELLED"


def test_api_refuses_a_definition_that_could_outlast_the_time_limit(api_client, monkeypatch):
    monkeypatch.setattr(celeryconfig, "RUN_TIME_BUDGET", 60.0)
    definition = {"steps": [delay_step("ok", 1, timeout=30), delay_step("slow", 1, timeout=31)]}

    response = api_client.post(
        "/api/scenarios/", {"name": "too-slow", "definition": definition}, format="json"
    )

    assert response.status_code == 400
    text = json.dumps(response.json())
    assert "steps[1]" in text and "timeout" in text and "time limit of 60s" in text


def test_admin_cancel_of_a_running_run_says_it_was_asked_to_stop(admin_client):
    run = in_progress_run()

    page = admin_client.post(
        reverse("admin:runs_testrun_changelist"),
        {"action": "cancel_runs", "_selected_action": [run.id]},
        follow=True,
    )

    assert page.status_code == 200
    assert "asked to stop" in page.content.decode()
    run.refresh_from_db()
    assert run.status == RunStatus.IN_PROGRESS and run.cancel_requested_at is not None
    detail = admin_client.get(reverse("admin:runs_testrun_change", args=[run.id]))
    assert detail.status_code == 200
    wait_for(lambda: runs_sweep()["cancelled"], message="the lease to lapse")  # settle it
