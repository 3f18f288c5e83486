"""The queue survives a worker killed mid-run: the record still ends correctly, no overlap."""

from __future__ import annotations

import pytest

from queue_catalog.models import QueueRecord
from queue_catalog.services import queue_record_create
from runs.models import TestRun
from tests.factories import delay_step, make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "beat")]


def test_record_whose_worker_is_killed_mid_run_still_finishes_once_without_overlap(
    worker_factory,
):
    scenario = make_scenario([delay_step("first"), delay_step("slow", 2), delay_step("last")])
    victim = worker_factory("victim")
    record = queue_record_create(scenario=scenario, payload={})
    waiting = queue_record_create(scenario=scenario, payload={})
    run_id = record.current_run_id
    wait_for(
        lambda: (
            TestRun.objects.filter(id=run_id, status="IN_PROGRESS").exists()
            and TestRun.objects.get(id=run_id).steps.exists()
        ),
        message="the first step to be recorded",
    )

    victim.kill()
    worker_factory("rescuer")

    wait_for(
        lambda: not QueueRecord.objects.filter(status__in=["SCHEDULED", "RUNNING"]).exists(),
        timeout=60,
        message="both records to settle",
    )
    record.refresh_from_db()
    waiting.refresh_from_db()
    run = TestRun.objects.get(id=run_id)
    assert record.status == "DONE" and record.start_count == 1
    assert run.status == "PASSED" and run.attempt == 2
    assert list(run.steps.filter(attempt=2).values_list("status", flat=True)) == ["PASSED"] * 3
    second_run = TestRun.objects.get(id=waiting.current_run_id)
    assert waiting.status == "DONE"
    assert second_run.started_at >= run.finished_at
