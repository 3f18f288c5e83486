"""The execution engine under faults: killed workers, lost messages, lapsed leases, cancelling,
a database that drops its connections. Real worker processes, RabbitMQ and PostgreSQL.

Every test starts its own workers (``worker_factory``), so that no shared worker steals the
messages of a run whose worker the test kills.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

import celeryconfig
from celeryconfig import RUNS_QUEUE
from runs.models import StepResult, TestRun
from runs.services import RunConflict, run_cancel, run_start, runs_sweep
from runs.states import RunStatus
from tests.conftest import broker_connection, dead_letters
from tests.factories import delay_step, make_scenario
from tests.support import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db")]


def finished(run: TestRun, timeout: float = 30) -> TestRun:
    def done():
        run.refresh_from_db()
        return run.is_finished

    wait_for(done, timeout=timeout, message=f"run {run.id} to finish")
    return run


def executing_pid(run: TestRun, *, attempt: int, worker: WorkerProcess) -> int:
    """Wait until ``attempt`` of ``run`` executes; return the pid of the pool child running it."""

    def running():
        return (
            TestRun.objects.filter(id=run.id, status=RunStatus.IN_PROGRESS, attempt=attempt)
            .values_list("worker", flat=True)
            .first()
        )

    owner = wait_for(running, message=f"attempt {attempt} of run {run.id} to start")
    pid = int(owner.rpartition(":")[2])
    # Only ever signal a process this test started.
    assert pid in worker.child_pids(), (pid, worker.child_pids())
    return pid


def executing_pid_of(run: TestRun) -> int:
    return int(run.worker.rpartition(":")[2])


def step_committed(run: TestRun, *, attempt: int, position: int) -> None:
    wait_for(
        lambda: StepResult.objects.filter(run=run, attempt=attempt, position=position).exists(),
        message=f"step {position} of attempt {attempt} of run {run.id} to be committed",
    )


def recorded_steps(run: TestRun) -> dict[int, list[int]]:
    """attempt -> positions of the step results stored for it."""
    steps: dict[int, list[int]] = {}
    for attempt, position in run.steps.order_by("attempt", "position").values_list(
        "attempt", "position"
    ):
        steps.setdefault(attempt, []).append(position)
    return steps


def ready_messages() -> int:
    with broker_connection() as conn:
        _, count, _ = conn.default_channel.queue_declare(queue=RUNS_QUEUE, passive=True)
    return count


def three_steps_with_a_slow_middle():
    return make_scenario(
        [delay_step("quick start"), delay_step("slow middle", 3), delay_step("quick end")]
    )


def test_run_of_a_killed_worker_is_finished_by_another_worker_as_attempt_two(worker_factory):
    first = worker_factory("doomed")
    run = run_start(scenario=three_steps_with_a_slow_middle())
    executing_pid(run, attempt=1, worker=first)
    # Step 0 is committed when step 1 (3 s) starts: the kill lands in the middle of the slow step.
    step_committed(run, attempt=1, position=0)
    first.kill()

    second = worker_factory("rescuer")
    finished(run)

    assert run.status == RunStatus.PASSED, run.error
    assert run.attempt == 2
    assert executing_pid_of(run) in second.child_pids()
    # Attempt 1 left only complete rows behind; attempt 2 ran everything.
    assert recorded_steps(run) == {1: [0], 2: [0, 1, 2]}
    assert run.steps.filter(attempt=2).exclude(status="PASSED").count() == 0
    # Executed to completion once: one final step, nothing more left to deliver.
    assert run.steps.filter(position=2).count() == 1
    assert ready_messages() == 0
    assert "succeeded in" not in first.output()
    assert second.output().count(": 'executed'") == 1


def test_run_of_a_killed_pool_child_is_requeued_and_finished_on_attempt_two(worker_factory):
    worker = worker_factory("survivor")
    run = run_start(scenario=three_steps_with_a_slow_middle())
    child = executing_pid(run, attempt=1, worker=worker)
    step_committed(run, attempt=1, position=0)
    os.kill(child, signal.SIGKILL)

    finished(run)

    assert run.status == RunStatus.PASSED, run.error
    assert run.attempt == 2
    # The worker's main process survived and a fresh pool child executed attempt 2.
    assert worker.process.poll() is None
    assert executing_pid_of(run) != child
    assert executing_pid_of(run) in worker.child_pids()
    assert recorded_steps(run) == {1: [0], 2: [0, 1, 2]}
    assert ready_messages() == 0


def test_run_whose_worker_keeps_dying_is_given_up_and_its_message_dead_lettered(worker_factory):
    worker = worker_factory("cursed")
    limit = settings.ORCHESTRA_MAX_DELIVERY_ATTEMPTS
    run = run_start(scenario=make_scenario([delay_step("never ends", 25)]))
    for attempt in range(1, limit + 1):
        os.kill(executing_pid(run, attempt=attempt, worker=worker), signal.SIGKILL)

    finished(run)

    assert run.status == RunStatus.ERROR
    assert run.attempt == limit + 1
    assert f"gave up after {limit} deliveries" in run.error
    assert not run.steps.exists()
    (message,) = dead_letters()
    assert message.headers["task"] == "runs.execute_run"
    assert message.payload[0] == [run.id]
    assert message.headers["x-death"][0]["reason"] == "rejected"
    assert worker.process.poll() is None


def test_run_whose_message_was_never_published_is_republished_by_the_sweep(worker_factory):
    assert "runs.sweep_runs" in {entry["task"] for entry in celeryconfig.beat_schedule.values()}
    scenario = make_scenario([delay_step("only step")])
    # As if the producer crashed between the commit and the publish.
    run = TestRun.objects.create(
        scenario=scenario, definition=scenario.definition, context={"payload": {}}
    )
    TestRun.objects.filter(id=run.id).update(queued_at=timezone.now() - timedelta(minutes=1))
    worker_factory("swept")

    assert runs_sweep() == {"republished": 1, "requeued": 0, "cancelled": 0, "timed_out": 0}
    # Published now: left alone.
    assert runs_sweep() == {"republished": 0, "requeued": 0, "cancelled": 0, "timed_out": 0}
    finished(run)

    assert run.status == RunStatus.PASSED, run.error
    assert run.attempt == 1
    assert run.dispatched_at is not None
    assert recorded_steps(run) == {1: [0]}


def test_run_with_a_lapsed_lease_on_another_host_is_requeued_by_the_sweep(worker_factory):
    scenario = make_scenario([delay_step("first"), delay_step("second")])
    now = timezone.now()
    claimed = {
        "scenario": scenario,
        "definition": scenario.definition,
        "context": {"payload": {}},
        "status": RunStatus.IN_PROGRESS,
        "attempt": 1,
        "started_at": now - timedelta(minutes=1),
        "dispatched_at": now - timedelta(minutes=1),
    }
    lapsed = TestRun.objects.create(
        **claimed, worker="otherhost:1234", lease_expires_at=now - timedelta(seconds=30)
    )
    alive = TestRun.objects.create(
        **claimed, worker="otherhost:5678", lease_expires_at=now + timedelta(minutes=10)
    )
    worker = worker_factory("heir")

    assert runs_sweep() == {"republished": 0, "requeued": 1, "cancelled": 0, "timed_out": 0}
    finished(lapsed)

    assert lapsed.status == RunStatus.PASSED, lapsed.error
    assert lapsed.attempt == 2
    assert executing_pid_of(lapsed) in worker.child_pids()
    assert recorded_steps(lapsed) == {2: [0, 1]}
    # A run whose owner elsewhere still renews its lease is not touched.
    alive.refresh_from_db()
    assert (alive.status, alive.worker, alive.attempt) == (
        RunStatus.IN_PROGRESS,
        "otherhost:5678",
        1,
    )
    # Let the live_db fixture see every run settled: a cancel its "owner" never confirms is
    # finished by the sweep once the lease lapses.
    assert run_cancel(run_id=alive.id).status == RunStatus.IN_PROGRESS
    TestRun.objects.filter(id=alive.id).update(lease_expires_at=now - timedelta(seconds=1))
    assert runs_sweep()["cancelled"] == 1


def test_cancelled_queued_run_never_starts(worker_factory):
    scenario = make_scenario([delay_step("must not run")])
    run = run_start(scenario=scenario)
    assert run_cancel(run_id=run.id).status == RunStatus.CANCELLED

    worker_factory("late")
    # One worker, one message at a time, same priority: the cancelled run's message is consumed
    # before this one's.
    sentinel = finished(run_start(scenario=scenario))

    assert sentinel.status == RunStatus.PASSED
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert (run.attempt, run.started_at, run.worker) == (0, None, "")
    assert not run.steps.exists()
    assert ready_messages() == 0


def test_cancelled_running_run_is_cancelled_only_once_its_worker_stopped_it(worker_factory):
    worker = worker_factory("stopper")
    run = run_start(scenario=make_scenario([delay_step("slow", 20), delay_step("never")]))
    executing_pid(run, attempt=1, worker=worker)

    requested = run_cancel(run_id=run.id)
    # Asked, not yet done: the worker is still inside the delay.
    assert requested.status == RunStatus.IN_PROGRESS
    assert requested.cancel_requested_at is not None
    finished(run, timeout=10)

    assert run.status == RunStatus.CANCELLED
    assert run.error == "cancelled"
    assert run.attempt == 1
    assert run.finished_at - requested.cancel_requested_at < timedelta(seconds=5)
    slow, never = run.steps.order_by("position")
    assert (slow.status, slow.error) == ("ERROR", "interrupted: cancelled")
    assert slow.duration_ms < 5000
    assert (never.status, never.error) == ("SKIPPED", "skipped: run stopped (cancelled)")
    # The worker executes one message at a time: the sentinel runs once the cancelled run let go.
    assert finished(run_start(scenario=make_scenario())).status == RunStatus.PASSED


def test_cancelling_a_finished_run_is_a_conflict(worker_factory):
    worker_factory("finisher")
    run = finished(run_start(scenario=make_scenario()))
    assert run.status == RunStatus.PASSED

    with pytest.raises(RunConflict, match="PASSED"):
        run_cancel(run_id=run.id)

    run.refresh_from_db()
    assert run.status == RunStatus.PASSED


def terminate_other_database_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return sum(1 for (terminated,) in cursor.fetchall() if terminated)


def test_worker_reconnects_after_its_database_connections_are_terminated(worker_factory):
    worker = worker_factory("resilient")
    scenario = make_scenario([delay_step("one"), delay_step("two")])
    first = finished(run_start(scenario=scenario))
    assert first.status == RunStatus.PASSED
    child = executing_pid_of(first)

    assert terminate_other_database_connections() >= 1

    runs = [finished(run_start(scenario=scenario)) for _ in range(3)]
    assert [run.status for run in runs] == [RunStatus.PASSED] * 3
    assert all(recorded_steps(run) == {1: [0, 1]} for run in runs)
    # Recovered in place: no crashed pool child, no redelivery.
    assert executing_pid_of(runs[-1]) == child
    assert worker.process.poll() is None


def test_run_whose_database_connection_drops_mid_run_stores_on_a_new_one_and_passes(
    worker_factory,
):
    worker = worker_factory("retrier")
    run = run_start(scenario=make_scenario([delay_step("slow", 1.5), delay_step("fast")]))
    executing_pid(run, attempt=1, worker=worker)

    # Storing step 0 meets the dropped connection and is written once more on a new one: the
    # steps that ran are not run again, and the task is not retried.
    assert terminate_other_database_connections() >= 1
    finished(run)

    assert run.status == RunStatus.PASSED, run.error
    assert run.attempt == 1
    assert recorded_steps(run) == {1: [0, 1]}
    assert "Retry in" not in worker.output()
