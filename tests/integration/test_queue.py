"""The scenario queue ("Очередь") with two real workers, a real beat, RabbitMQ and PostgreSQL."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict

import pytest
from django.core.exceptions import ValidationError

from queue_catalog.models import QueueRecord, QueueRun
from queue_catalog.services import (
    queue_record_cancel,
    queue_record_create,
    queue_record_retry,
    queue_sweep,
)
from runs.models import TestRun
from runs.services import scenario_set_active
from tests.factories import delay_step, make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers", "beat")]


def settled(record: QueueRecord, timeout: float = 60) -> QueueRecord:
    def done():
        record.refresh_from_db()
        return record.status in ("DONE", "ERROR", "CANCELLED")

    wait_for(done, timeout=timeout, message=f"record {record.id} to settle")
    return record


def flaky_scenario(target_url: str):
    """Fails (503) the first ``payload.fail`` calls for ``payload.key``, then passes."""
    return make_scenario(
        [
            {
                "name": "call flaky service",
                "plugin": "http",
                "with": {
                    "url": f"{target_url}/flaky/{{{{ payload.key }}}}?fail={{{{ payload.fail }}}}"
                },
                "expect": {"status": 200},
            }
        ]
    )


def test_second_record_of_same_scenario_waits_until_first_is_done():
    scenario = make_scenario([delay_step("timer", 1.5)])
    first = queue_record_create(scenario=scenario, payload={})
    assert first.status == "RUNNING" and first.start_count == 1

    second = queue_record_create(scenario=scenario, payload={})
    assert second.status == "SCHEDULED"
    wait_for(lambda: TestRun.objects.filter(id=first.current_run_id, status="IN_PROGRESS").exists())
    second.refresh_from_db()
    assert second.status == "SCHEDULED"

    assert settled(first).status == "DONE"
    settled(second)
    first_run = first.current_run
    second_run = TestRun.objects.get(id=second.current_run_id)
    assert second_run.started_at >= first_run.finished_at
    assert second.status == "DONE" and second.start_count == 1


def test_record_that_fails_twice_then_passes_is_done_after_three_starts(target_url):
    record = queue_record_create(
        scenario=flaky_scenario(target_url), payload={"key": uuid.uuid4().hex, "fail": 2}
    )

    settled(record)
    assert record.status == "DONE"
    assert record.start_count == 3
    assert [e["attempt"] for e in record.errors] == [1, 2]
    assert all("503" in e["message"] for e in record.errors), record.errors
    runs = [a.run for a in record.attempts.select_related("run").order_by("start_number")]
    assert [run.status for run in runs] == ["FAILED", "FAILED", "PASSED"]
    assert [run.context["queueStartCount"] for run in runs] == [1, 2, 3]
    assert {run.context["queueRecordId"] for run in runs} == {record.id}
    assert record.process_code == str(runs[-1].id)


def test_always_failing_record_stops_after_five_starts_and_the_lane_moves_on(target_url):
    scenario = make_scenario(
        [
            {
                "name": "wrong status",
                "plugin": "http",
                "with": {"url": f"{target_url}/health"},
                "expect": {"status": 418},
            }
        ]
    )
    failing = queue_record_create(scenario=scenario, payload={})
    behind = queue_record_create(scenario=scenario, payload={})

    settled(failing)
    assert failing.status == "ERROR"
    assert failing.start_count == 5
    assert len(failing.errors) == 5
    assert QueueRun.objects.filter(record=failing).count() == 5
    settled(behind)
    assert behind.start_count == 5  # the same scenario fails again, but it did get its turn

    retried = queue_record_retry(record_id=failing.id)
    assert retried.status in ("SCHEDULED", "RUNNING")
    assert settled(retried).status == "ERROR" and retried.start_count == 10


def test_a_deactivated_scenario_takes_no_new_records_and_its_lane_waits_until_reactivated():
    scenario = make_scenario([delay_step("timer", 0.5)])
    first = queue_record_create(scenario=scenario, payload={})
    second = queue_record_create(scenario=scenario, payload={})
    scenario_set_active(scenario=scenario, is_active=False)
    with pytest.raises(ValidationError, match="not active"):
        queue_record_create(scenario=scenario, payload={})
    assert QueueRecord.objects.filter(scenario=scenario).count() == 2

    assert settled(first).status == "DONE"
    assert queue_sweep()["started"] == 0
    second.refresh_from_db()
    assert second.status == "SCHEDULED" and second.start_count == 0

    scenario_set_active(scenario=scenario, is_active=True)
    assert settled(second).status == "DONE" and second.start_count == 1


def test_a_cancelled_waiting_record_never_starts_and_a_running_one_frees_its_lane_once_stopped():
    scenario = make_scenario([delay_step("long", 3), delay_step("after")])
    running = queue_record_create(scenario=scenario, payload={})
    waiting = queue_record_create(scenario=scenario, payload={})
    last = queue_record_create(scenario=scenario, payload={})

    assert queue_record_cancel(record_id=waiting.id).status == "CANCELLED"
    wait_for(
        lambda: TestRun.objects.filter(id=running.current_run_id, status="IN_PROGRESS").exists()
    )
    stopping = queue_record_cancel(record_id=running.id)
    assert stopping.status == "RUNNING" and stopping.cancel_requested_at is not None
    last.refresh_from_db()
    assert last.status == "SCHEDULED"  # the lane waits for the run to stop

    assert settled(running).status == "CANCELLED"
    run = TestRun.objects.get(id=running.current_run_id)
    assert run.status == "CANCELLED"
    assert not run.steps.filter(name="after").exclude(status="SKIPPED").exists()
    assert settled(last).status == "DONE"
    assert TestRun.objects.get(id=last.current_run_id).started_at >= run.finished_at
    waiting.refresh_from_db()
    assert waiting.start_count == 0 and waiting.current_run_id is None


def test_lanes_never_overlap_and_finish_in_order_while_different_lanes_run_in_parallel(
    target_url,
):
    rng = random.Random(20261122)
    flaky = [flaky_scenario(target_url) for _ in range(4)]
    steady = [make_scenario([delay_step("work", 0.02)]) for _ in range(8)]
    records = []
    for index in range(240):
        scenario = rng.choice(flaky + steady)
        if scenario in flaky:
            fail = rng.choice([0, 0, 1, 2, 9])  # 9 never recovers within 3 attempts
            payload = {"key": uuid.uuid4().hex, "fail": fail, "n": index}
            records.append(queue_record_create(scenario=scenario, payload=payload, max_attempts=3))
        else:
            records.append(queue_record_create(scenario=scenario, payload={"n": index}))

    wait_for(
        lambda: not QueueRecord.objects.filter(status__in=["SCHEDULED", "RUNNING"]).exists(),
        timeout=240,
        message="every record to settle",
    )

    statuses = dict(QueueRecord.objects.values_list("id", "status"))
    assert set(statuses.values()) <= {"DONE", "ERROR"}
    assert "ERROR" in statuses.values() and "DONE" in statuses.values()

    lane_runs = defaultdict(list)
    for attempt in QueueRun.objects.select_related("run", "record"):
        lane_runs[attempt.record.scenario_id].append(attempt)
    for record in QueueRecord.objects.all():
        runs_of_record = TestRun.objects.filter(context__queueRecordId=record.id).count()
        assert record.start_count == runs_of_record == record.attempts.count()

    for scenario_id, attempts in lane_runs.items():
        attempts.sort(key=lambda a: a.run.started_at)
        for earlier, later in zip(attempts, attempts[1:], strict=False):
            assert later.run.started_at >= earlier.run.finished_at, f"overlap in lane {scenario_id}"
        # Records of one lane finish in creation order.
        finishing_order = [a.record_id for a in sorted(attempts, key=lambda a: a.run.finished_at)]
        last_seen = list(dict.fromkeys(reversed(finishing_order)))[::-1]
        assert last_seen == sorted(last_seen), f"lane {scenario_id} finished out of order"

    all_runs = [a.run for attempts in lane_runs.values() for a in attempts]
    overlapping_lanes = any(
        a.scenario_id != b.scenario_id
        and a.started_at < b.finished_at
        and b.started_at < a.finished_at
        for a in all_runs[:200]
        for b in all_runs[:200]
    )
    assert overlapping_lanes, "different lanes should run in parallel"
