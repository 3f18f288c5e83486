"""Cancelling a running queue record never lets two launches of its scenario overlap: the lane
moves on only when the cancelled run has really stopped. The evidence is the target's own log
of the calls it received, not the times orchestra writes itself."""

from __future__ import annotations

import threading

import pytest

from queue_catalog.models import QueueRecord
from queue_catalog.services import queue_record_create
from runs.models import TestRun
from tests.factories import make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers", "beat")]


@pytest.fixture(scope="module")
def target():
    """The local target (examples/target.py), whose ``/tick`` log is read by the test."""
    from examples.target import make_server

    server = make_server()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def seen(target, record: QueueRecord) -> list[tuple[float, str]]:
    """(time, step) of every call the target received from the record's runs."""
    with target.RequestHandlerClass.state.lock:
        ticks = list(target.RequestHandlerClass.state.ticks)
    return [(at, query["step"]) for at, query in ticks if query.get("record") == str(record.id)]


def polling_scenario(target):
    """Calls the target about every 0.1 s for seconds within one step, then once in ``finally``:
    a run still executing leaves calls in the target's log."""
    url = f"http://127.0.0.1:{target.server_port}/tick?record={{{{ queueRecordId }}}}"

    def call(name: str, step: str, **extra) -> dict:
        return {
            "name": name,
            "plugin": "http",
            "with": {"url": f"{url}&step={step}"},
            "timeout": 2,
            **extra,
        }

    return make_scenario(
        [
            call("begin", "begin", expect={"status": 200}),
            # Never 418: every try fails, so the step keeps calling until its tries run out.
            call("poll", "poll", expect={"status": 418}, retry={"attempts": 40, "interval": 0.1}),
        ],
        **{"finally": [call("clean up", "finally", expect={"status": 200})]},
    )


def test_the_next_record_starts_only_after_the_cancelled_run_has_really_stopped(target, api_client):
    scenario = polling_scenario(target)
    first = queue_record_create(scenario=scenario, payload={})
    second = queue_record_create(scenario=scenario, payload={}, max_attempts=1)
    wait_for(
        lambda: sum(step == "poll" for _, step in seen(target, first)) >= 3,
        message="the first record's run to be polling the target",
    )

    response = api_client.post(f"/api/queue/{first.id}/cancel/")

    assert response.status_code == 200, response.json()
    assert response.json()["cancel_requested"] is True
    assert response.json()["status"] == "RUNNING"  # it holds the lane while its run stops
    wait_for(
        lambda: (
            not QueueRecord.objects.filter(status__in=["SCHEDULED", "RUNNING"]).exists()
            and not TestRun.objects.filter(status__in=["QUEUED", "IN_PROGRESS"]).exists()
        ),
        timeout=90,
        message="both records and their runs to end",
    )
    first.refresh_from_db()
    assert first.status == "CANCELLED"
    first_calls, second_calls = seen(target, first), seen(target, second)
    assert max(at for at, _ in first_calls) < min(at for at, _ in second_calls), (
        "the second launch reached the target while the cancelled one was still calling it"
    )
    run = TestRun.objects.get(id=first.current_run_id)
    assert run.status == "CANCELLED" and first.start_count == 1
    assert first.attempts.count() == 1  # never run again
