"""The claim fences a run's writes in the database: owner and attempt, not pid; a retry of the
same message takes the claim over, a redelivery of it does not; raw SQL status rules come from
the state machine's table."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import StepResult, TestRun
from runs.states import (
    ALLOWED_SOURCES,
    RAW_SQL_TRANSITIONS,
    STEP_COLUMNS,
    LeaseState,
    RunStatus,
    claim_run,
    finish_run,
    renew_lease,
    store_step,
)
from tests.factories import make_scenario


def new_run() -> TestRun:
    scenario = make_scenario()
    return TestRun.objects.create(
        scenario=scenario, definition=scenario.definition, context={"payload": {}}
    )


def claim(run: TestRun, worker: str, **delivery):
    return claim_run(run.id, worker=worker, lease_seconds=60, budget_seconds=60, **delivery)


def step(position: int = 0) -> dict:
    values = {name: None for name in STEP_COLUMNS}
    values.update(position=position, name="s", plugin="delay", is_cleanup=False, status="PASSED")
    values.update(request={}, response={}, captures={}, assertions=[], tries=[], error="")
    return values


def lapse(run: TestRun) -> None:
    TestRun.objects.filter(id=run.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_stale_owner_is_refused_by_the_database_once_another_worker_took_over(db):
    run = new_run()
    old = claim(run, "host:1")
    lapse(run)  # paused past its lease
    new = claim(run, "host:2")
    assert (old.attempt, new.attempt) == (1, 2)

    assert store_step(run.id, worker="host:1", attempt=1, step=step()) is LeaseState.LOST
    assert (
        renew_lease(run.id, worker="host:1", attempt=1, lease_seconds=60, cancel_grace=30)
        is LeaseState.LOST
    )
    assert finish_run(run.id, to=RunStatus.PASSED, worker="host:1", attempt=1, error="") is None
    assert not StepResult.objects.exists()

    assert store_step(run.id, worker="host:2", attempt=2, step=step()) is LeaseState.HELD
    assert finish_run(run.id, to=RunStatus.PASSED, worker="host:2", attempt=2, error="") == (
        RunStatus.PASSED
    )
    assert list(StepResult.objects.values_list("attempt", flat=True)) == [2]


def test_the_same_owner_with_an_older_attempt_is_refused_too(db):
    # One pid can hold two claims one after the other (a thread pool, a retry in place).
    run = new_run()
    claim(run, "host:1")
    lapse(run)
    claim(run, "host:1")

    assert store_step(run.id, worker="host:1", attempt=1, step=step()) is LeaseState.LOST
    assert store_step(run.id, worker="host:1", attempt=2, step=step()) is LeaseState.HELD


def test_a_retry_of_the_message_takes_over_its_live_claim_a_redelivery_does_not(db):
    run = new_run()
    assert claim(run, "host:1", delivery_id="task-1", delivery_retries=0).attempt == 1

    # The broker handing the same message out again: the first try may still be running.
    assert claim(run, "host:2", delivery_id="task-1", delivery_retries=0) is None
    # Another message of the same run (the sweep's republish): a duplicate.
    assert claim(run, "host:2", delivery_id="task-2", delivery_retries=1) is None
    # Celery's retry of it, published after that try ended, in whichever process it lands.
    assert claim(run, "host:2", delivery_id="task-1", delivery_retries=1).attempt == 2


def test_a_cancel_request_shows_in_the_lease_and_is_confirmed_by_the_worker(db):
    from runs.services import run_cancel

    run = new_run()
    claim(run, "host:1")
    assert run_cancel(run_id=run.id).status == RunStatus.IN_PROGRESS

    state = renew_lease(run.id, worker="host:1", attempt=1, lease_seconds=60, cancel_grace=30)
    assert state is LeaseState.CANCEL_REQUESTED
    # Storing a step answers the same question in the same round trip, and still stores it.
    assert store_step(run.id, worker="host:1", attempt=1, step=step()) is (
        LeaseState.CANCEL_REQUESTED
    )
    assert StepResult.objects.filter(run=run).count() == 1
    assert finish_run(run.id, to=RunStatus.CANCELLED, worker="host:1", attempt=1, error="x")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


def test_a_run_whose_cancel_was_requested_before_its_end_finishes_cancelled(db):
    from runs.services import run_cancel

    run = new_run()
    claim(run, "host:1")
    run_cancel(run_id=run.id)

    # The worker saw the cancel too late (its last step had passed): the database decides.
    finished = finish_run(run.id, to=RunStatus.PASSED, worker="host:1", attempt=1, error="")

    run.refresh_from_db()
    assert finished == run.status == RunStatus.CANCELLED
    assert run.error == "cancelled"


def test_a_claim_after_the_attempts_deadline_passed_is_out_of_time(db):
    run = new_run()
    claim(run, "host:1")
    TestRun.objects.filter(id=run.id).update(deadline_at=timezone.now() - timedelta(seconds=1))

    taken = claim(run, "host:2", takeover_from="host:1")

    assert taken.out_of_time
    # A fresh claim of a queued run gets a fresh budget.
    fresh = claim(new_run(), "host:2")
    assert not fresh.out_of_time and fresh.budget_seconds == pytest.approx(60, abs=1)


_STATUS = re.compile(r"'([A-Z_]+)'")
_IN = re.compile(r"status IN \(([^)]*)\)")


@pytest.mark.parametrize(("sql", "to"), RAW_SQL_TRANSITIONS)
def test_raw_sql_status_conditions_agree_with_the_transitions_table(sql, to):
    allowed = ALLOWED_SOURCES[to]
    conditions = [set(_STATUS.findall(clause)) for clause in _IN.findall(sql)]
    assert conditions, "every statement states its status condition as status IN (...)"
    assert all(statuses <= allowed for statuses in conditions), (conditions, allowed)
    # Besides its sources, a statement may name only statuses its sources may move to (a
    # finish becomes CANCELLED when a cancel was requested).
    sources = set().union(*conditions)
    reachable = {status for status, froms in ALLOWED_SOURCES.items() if sources <= froms}
    mentioned = set(_STATUS.findall(sql)) & set(RunStatus.values)
    assert to in reachable
    assert mentioned <= allowed | reachable, mentioned - allowed - reachable
