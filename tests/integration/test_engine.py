"""The execution engine end to end: real RabbitMQ, real PostgreSQL, two real worker processes."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Producer

from celeryconfig import RUNS_QUEUE, runs_exchange
from runs.models import Priority, StepResult, TestRun
from runs.services import run_start, runs_start
from runs.tasks import execute_run
from tests.conftest import broker_connection, dead_letters
from tests.factories import delay_step, make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers")]


def finished(run: TestRun, timeout: float = 30) -> TestRun:
    def done():
        run.refresh_from_db()
        return run.is_finished

    wait_for(done, timeout=timeout, message=f"run {run.id} to finish")
    return run


def http_scenario(target_url: str, **overrides):
    steps = [
        {
            "name": "create user",
            "plugin": "http",
            "with": {
                "method": "POST",
                "url": f"{target_url}/users",
                "json": {"name": "{{ payload.name }}"},
            },
            "expect": {"status": 201},
            "capture": {"user_id": "$.id"},
        },
        {
            "name": "fetch user",
            "plugin": "http",
            "with": {"url": f"{target_url}/users/{{{{ user_id }}}}"},
            "expect": overrides.get(
                "fetch_expect",
                {"status": 200, "json": {"$.name": "{{ payload.name }}", "$.id": "{{ user_id }}"}},
            ),
        },
    ]
    return make_scenario(steps)


def test_http_scenario_passes_and_captures_flow_into_later_steps(target_url):
    run = finished(run_start(scenario=http_scenario(target_url), payload={"name": "Ada"}))

    assert run.status == "PASSED", run.error
    steps = list(run.steps.order_by("position"))
    assert [s.status for s in steps] == ["PASSED", "PASSED"]
    user_id = steps[0].captures["user_id"]
    assert isinstance(user_id, int)
    assert steps[1].request["url"].endswith(f"/users/{user_id}")
    assert run.attempt == 1 and run.worker and run.started_at and run.finished_at


def test_failed_expectation_marks_run_failed_with_reason_on_the_step(target_url):
    scenario = http_scenario(target_url, fetch_expect={"status": 200, "json": {"$.name": "Bob"}})
    run = finished(run_start(scenario=scenario, payload={"name": "Ada"}))

    assert run.status == "FAILED"
    failing = run.steps.get(position=1)
    assert failing.status == "FAILED"
    assert "$.name is 'Ada', expected 'Bob'" in failing.error
    assert [a["passed"] for a in failing.assertions] == [True, False]


def test_unreachable_host_gives_error():
    scenario = make_scenario(
        [
            {"name": "call nowhere", "plugin": "http", "with": {"url": "http://127.0.0.1:9/x"}},
            delay_step("never reached"),
        ]
    )
    run = finished(run_start(scenario=scenario))

    assert run.status == "ERROR"
    steps = list(run.steps.order_by("position"))
    assert steps[0].status == "ERROR" and "failed" in steps[0].error
    assert steps[1].status == "SKIPPED"


def test_finally_steps_run_after_a_failure_and_retries_poll_until_expectations_hold(target_url):
    key = uuid.uuid4().hex
    scenario = make_scenario(
        [
            {
                "name": "poll flaky",
                "plugin": "http",
                "with": {"url": f"{target_url}/flaky/{key}?fail=2"},
                "expect": {"status": 200},
                "retry": {"attempts": 4, "interval": 0.05, "backoff": 2},
            },
            {
                "name": "must fail",
                "plugin": "http",
                "with": {"url": f"{target_url}/health"},
                "expect": {"status": 418},
            },
        ],
        **{"finally": [delay_step("clean up")]},
    )
    run = finished(run_start(scenario=scenario))

    assert run.status == "FAILED"
    poll, failing, cleanup = run.steps.order_by("position")
    assert [t["status"] for t in poll.tries] == ["FAILED", "FAILED", "PASSED"]
    assert poll.status == "PASSED" and failing.status == "FAILED"
    assert cleanup.is_cleanup and cleanup.status == "PASSED"


def test_same_message_delivered_twice_executes_the_run_once():
    scenario = make_scenario([delay_step("slow", 1.0), delay_step("fast")])
    run = run_start(scenario=scenario)
    wait_for(
        lambda: TestRun.objects.filter(id=run.id, status="IN_PROGRESS").exists(),
        message="the run to start",
    )
    execute_run.apply_async(args=[run.id])  # a duplicate while it runs on the other worker
    finished(run)
    execute_run.apply_async(args=[run.id])  # and one after it finished

    wait_for(lambda: not TestRun.objects.filter(status="QUEUED").exists())
    run.refresh_from_db()
    assert run.status == "PASSED"
    assert run.attempt == 1
    assert StepResult.objects.filter(run=run).count() == 2


def test_unknown_run_id_goes_to_the_dead_letter_queue():
    execute_run.apply_async(args=[987654321])

    (message,) = dead_letters()
    assert message.headers["task"] == "runs.execute_run"
    assert message.headers["x-death"][0]["reason"] == "rejected"


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"{this is not json", "application/json"),
        (json.dumps([["x"], {}, {}]).encode(), "application/json"),
    ],
    ids=["undecodable", "malformed-run-id"],
)
def test_malformed_message_goes_to_the_dead_letter_queue(body, content_type):
    with broker_connection() as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange=runs_exchange,
            routing_key=RUNS_QUEUE,
            content_type=content_type,
            content_encoding="utf-8",
            headers={
                "task": "runs.execute_run",
                "id": str(uuid.uuid4()),
                "lang": "py",
                "argsrepr": "",
                "kwargsrepr": "",
            },
            declare=[],
        )

    (message,) = dead_letters()
    assert message.body in (body, body.decode())


def test_urgent_run_starts_before_a_backlog_of_background_runs(capsys):
    background = make_scenario([delay_step("busy", 0.01)])
    urgent_scenario = make_scenario()
    backlog = runs_start(scenario=background, payloads=[{}] * 1000, priority=Priority.BACKGROUND)
    urgent = finished(run_start(scenario=urgent_scenario, priority=Priority.URGENT))

    started_before = TestRun.objects.filter(
        id__in=[run.id for run in backlog], started_at__lt=urgent.started_at
    ).count()
    started_after = len(backlog) - started_before
    waited = (urgent.started_at - urgent.queued_at).total_seconds()
    with capsys.disabled():
        print(
            f"\nurgent run waited {waited * 1000:.0f} ms; {started_before} background runs "
            f"started before it, {started_after} after"
        )
    # Two workers with prefetch 1 hold at most one reserved message each besides the running one.
    urgent_queued_before = TestRun.objects.filter(
        id__in=[run.id for run in backlog], started_at__lt=urgent.queued_at
    ).count()
    assert started_before - urgent_queued_before <= 4
    assert started_after >= 900
    wait_for(
        lambda: not TestRun.objects.filter(status__in=["QUEUED", "IN_PROGRESS"]).exists(),
        timeout=120,
        message="the backlog to drain",
    )
