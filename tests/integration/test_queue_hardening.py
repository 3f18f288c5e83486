"""The queue's own logic against the real database, without workers: a cancelled record keeps its
lane until its run has ended, "move to front" on every kind of record, backoff on the database's
clock, lane locks for any id, one definition of a new run, and raw status rules from the table."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orchestra.transitions import sources_sql
from queue_catalog import services as queue_services
from queue_catalog import states
from queue_catalog.models import QueueRecord
from queue_catalog.policies import rerun_delay
from queue_catalog.services import (
    queue_on_run_finished,
    queue_record_cancel,
    queue_record_create,
    queue_record_move_to_front,
    queue_record_retry,
    queue_sweep,
)
from queue_catalog.states import ALLOWED_SOURCES, RecordStatus, transition_record
from runs.models import Scenario, TestRun
from runs.services import run_start, scenario_set_active
from runs.signals import run_finished
from runs.states import RunStatus, transition_run
from tests.conftest import purge_queues
from tests.factories import delay_step, make_scenario

pytestmark = pytest.mark.integration


def lane_of_two(scenario: Scenario | None = None) -> tuple[QueueRecord, QueueRecord, TestRun]:
    """A running record (its run claimed by a worker) and one waiting behind it."""
    scenario = scenario or make_scenario([delay_step("wait", 1)])
    running = queue_record_create(scenario=scenario, payload={"n": 1})
    waiting = queue_record_create(scenario=scenario, payload={"n": 2})
    TestRun.objects.filter(id=running.current_run_id).update(
        status=RunStatus.IN_PROGRESS,
        attempt=1,
        worker="elsewhere:1",
        started_at=timezone.now(),
        lease_expires_at=timezone.now() + timedelta(minutes=5),
    )
    assert (running.status, waiting.status) == ("RUNNING", "SCHEDULED")
    return running, waiting, TestRun.objects.get(id=running.current_run_id)


def end_run(run: TestRun, status: str, error: str = "") -> None:
    TestRun.objects.filter(id=run.id).update(
        status=status, finished_at=timezone.now(), lease_expires_at=None, error=error
    )


def request_cancel(record: QueueRecord) -> None:
    """What a cancel leaves behind while the run is still stopping."""
    QueueRecord.objects.filter(id=record.id).update(cancel_requested_at=timezone.now())


# --- cancel: the lane moves on only when the run has ended ----------------------------------------


@pytest.mark.parametrize("run_status", ["CANCELLED", "FAILED", "ERROR"])
def test_a_cancel_requested_record_is_never_re_run_and_its_lane_moves_on_when_its_run_ends(
    db, run_status
):
    running, waiting, run = lane_of_two()
    request_cancel(running)
    assert queue_sweep()["started"] == 0  # the lane is still held

    end_run(run, run_status, error="boom")
    queue_on_run_finished(run_id=run.id, status=run_status, context=run.context)

    running.refresh_from_db()
    waiting.refresh_from_db()
    assert running.status == "CANCELLED" and running.start_count == 1
    assert running.next_attempt_at is None and running.attempts.count() == 1
    assert waiting.status == "RUNNING" and waiting.start_count == 1
    assert queue_sweep()["started"] == 0
    running.refresh_from_db()
    assert running.status == "CANCELLED" and running.attempts.count() == 1


def test_a_cancel_requested_record_whose_run_passed_before_it_stopped_is_done(db):
    running, waiting, run = lane_of_two()
    request_cancel(running)

    end_run(run, RunStatus.PASSED)
    queue_on_run_finished(run_id=run.id, status=RunStatus.PASSED, context=run.context)

    running.refresh_from_db()
    waiting.refresh_from_db()
    assert (running.status, waiting.status) == ("DONE", "RUNNING")


@pytest.mark.parametrize("run_status", ["CANCELLED", "FAILED"])
def test_the_sweep_settles_a_cancel_requested_record_whose_news_was_lost(db, run_status):
    running, waiting, run = lane_of_two()
    request_cancel(running)
    end_run(run, run_status)  # and run_finished never reached the queue

    assert queue_sweep() == {"settled": 1, "started": 0}

    running.refresh_from_db()
    waiting.refresh_from_db()
    assert running.status == "CANCELLED" and running.attempts.count() == 1
    assert waiting.status == "RUNNING"


@pytest.mark.parametrize("run_status", ["FAILED", "ERROR", "PASSED"])
def test_cancelling_a_record_whose_run_just_ended_settles_it_at_once(db, run_status):
    running, waiting, run = lane_of_two()
    end_run(run, run_status)  # its news is still on the way

    cancelled = queue_record_cancel(record_id=running.id)

    waiting.refresh_from_db()
    assert cancelled.status == ("DONE" if run_status == "PASSED" else "CANCELLED")
    assert cancelled.attempts.count() == 1 and cancelled.next_attempt_at is None
    assert waiting.status == "RUNNING"
    queue_on_run_finished(run_id=run.id, status=run_status, context=run.context)  # late news
    cancelled.refresh_from_db()
    assert cancelled.status == ("DONE" if run_status == "PASSED" else "CANCELLED")


@pytest.fixture
def no_broker_leftovers(transactional_db):
    yield
    purge_queues()


def test_cancelling_a_running_record_holds_its_lane_until_the_run_confirms(
    no_broker_leftovers, api_client
):
    """Against the contract of ``runs.services.run_cancel``: on an IN_PROGRESS run it only
    requests the stop; the run ends (and ``run_finished`` fires) when its worker confirms."""
    running, waiting, run = lane_of_two()

    response = api_client.post(f"/api/queue/{running.id}/cancel/")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "RUNNING" and body["cancel_requested"] is True
    assert body["cancel_requested_at"] is not None
    waiting.refresh_from_db()
    assert waiting.status == "SCHEDULED"
    run.refresh_from_db()
    assert run.status == RunStatus.IN_PROGRESS and run.cancel_requested_at is not None
    assert queue_sweep()["started"] == 0
    again = api_client.post(f"/api/queue/{running.id}/cancel/")  # changes nothing
    assert again.status_code == 200 and again.json()["status"] == "RUNNING"
    listed = api_client.get("/api/queue/", {"status": "RUNNING"}).json()["results"]
    assert [(r["id"], r["cancel_requested"]) for r in listed] == [(running.id, True)]

    # The worker confirms the stop.
    with transaction.atomic():
        assert transition_run(run.id, to=RunStatus.CANCELLED, finished_at=timezone.now())
        transaction.on_commit(
            lambda: run_finished.send(
                sender=TestRun, run_id=run.id, status=RunStatus.CANCELLED, context=run.context
            )
        )

    running.refresh_from_db()
    waiting.refresh_from_db()
    assert (running.status, waiting.status) == ("CANCELLED", "RUNNING")
    assert api_client.post(f"/api/queue/{running.id}/cancel/").status_code == 409


def test_the_admin_shows_a_record_whose_cancel_was_requested(admin_client, db):
    running, _, _ = lane_of_two()
    request_cancel(running)

    page = admin_client.get(reverse("admin:queue_catalog_queuerecord_changelist")).content
    detail = admin_client.get(reverse("admin:queue_catalog_queuerecord_change", args=[running.pk]))

    assert "Running, cancel requested" in page.decode()
    assert detail.status_code == 200 and "Cancel requested" in detail.content.decode()


def test_the_admin_cancel_action_says_a_running_record_was_only_asked_to_stop(db):
    running, waiting, _ = lane_of_two()

    response = operator_admin().post(
        reverse("admin:queue_catalog_queuerecord_changelist"),
        {"action": "cancel_records", "_selected_action": [running.id, waiting.id]},
        follow=True,
    )

    shown = [str(message) for message in response.context["messages"]]
    assert "1 cancelled" in shown, shown
    assert any(m.startswith("1 running: cancel requested") for m in shown), shown
    running.refresh_from_db()
    waiting.refresh_from_db()
    assert running.is_stopping and waiting.status == "CANCELLED"


# --- move to the front ----------------------------------------------------------------------------


def lane_order(scenario: Scenario) -> list[int]:
    return list(
        QueueRecord.objects.filter(scenario=scenario, status__in=["SCHEDULED", "RUNNING"])
        .order_by("lane_position")
        .values_list("id", flat=True)
    )


def build_lane(case: str) -> tuple[Scenario, QueueRecord]:
    """A lane, and the record of ``case`` to move to the front."""
    scenario = make_scenario()
    backoff = {"start_count": 2, "next_attempt_at": timezone.now() + timedelta(minutes=5)}

    def add(status: str = "SCHEDULED", **fields) -> QueueRecord:
        return QueueRecord.objects.create(scenario=scenario, payload={}, status=status, **fields)

    if case == "running head":
        target = add("RUNNING", start_count=1)
        add()
    elif case == "head in backoff":
        target = add(**backoff)
        add()
        add()
    elif case == "only record, in backoff":
        target = add(**backoff)
    elif case == "first behind a running head":
        add("RUNNING", start_count=1)
        target = add()
        add()
    elif case == "first behind a head in backoff":
        add(**backoff)
        target = add()
    elif case == "head of an inactive lane":
        target = add()
        add()
        scenario_set_active(scenario=scenario, is_active=False)
    elif case == "only record of an inactive lane":
        target = add()
        scenario_set_active(scenario=scenario, is_active=False)
    else:  # a finished record
        add("RUNNING", start_count=1)
        add()
        target = add(case.split()[0].upper(), start_count=1)
    return scenario, target


STAYS = [
    "head in backoff",
    "only record, in backoff",
    "first behind a running head",
    "first behind a head in backoff",
    "head of an inactive lane",
    "only record of an inactive lane",
]
CONFLICTS = ["running head", "done record", "error record", "cancelled record"]


@pytest.mark.parametrize("case", STAYS)
def test_move_to_front_of_a_record_already_at_the_front_keeps_the_lane_as_it_is(api_client, case):
    scenario, record = build_lane(case)
    before = list(QueueRecord.objects.filter(scenario=scenario).values().order_by("id"))

    response = api_client.post(f"/api/queue/{record.id}/move-to-front/")

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "SCHEDULED"
    assert list(QueueRecord.objects.filter(scenario=scenario).values().order_by("id")) == before
    assert not TestRun.objects.filter(scenario=scenario).exists()  # the backoff still holds


@pytest.mark.parametrize("case", CONFLICTS)
def test_move_to_front_of_a_running_or_finished_record_is_a_conflict(api_client, case):
    scenario, record = build_lane(case)
    order = lane_order(scenario)

    response = api_client.post(f"/api/queue/{record.id}/move-to-front/")

    assert response.status_code == 409
    assert "only a waiting record can move" in response.json()["error"]["message"]
    assert lane_order(scenario) == order


def test_move_to_front_of_an_unknown_record_is_not_found(api_client):
    assert api_client.post("/api/queue/987654321/move-to-front/").status_code == 404
    assert api_client.post("/api/queue/x/move-to-front/").status_code == 404


def test_move_to_front_past_a_head_in_backoff_keeps_the_head_first(db):
    scenario, _ = build_lane("first behind a head in backoff")
    head, first = lane_order(scenario)
    last = QueueRecord.objects.create(scenario=scenario, payload={})

    queue_record_move_to_front(record_id=last.id)

    assert lane_order(scenario) == [head, last.id, first]


def operator_admin() -> Client:
    user = User.objects.create_user("operator-admin", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="operators"))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("case", STAYS + CONFLICTS)
def test_the_admin_move_to_front_action_answers_every_case_with_a_message(db, case):
    scenario, record = build_lane(case)
    before = list(QueueRecord.objects.filter(scenario=scenario).values().order_by("id"))

    response = operator_admin().post(
        reverse("admin:queue_catalog_queuerecord_changelist"),
        {"action": "move_records_to_front", "_selected_action": [record.id]},
        follow=True,
    )

    assert response.status_code == 200
    shown = [str(message) for message in response.context["messages"]]
    expected = "only a waiting record can move" if case in CONFLICTS else "1 moved to the front"
    assert any(expected in message for message in shown), shown
    assert list(QueueRecord.objects.filter(scenario=scenario).values().order_by("id")) == before


# --- backoff on the database's clock --------------------------------------------------------------


@pytest.fixture(params=[timedelta(hours=1), -timedelta(hours=1)], ids=["ahead", "behind"])
def skewed_clock(request, monkeypatch):
    """This process's clock is off by an hour; the database's is not."""
    import time

    real_now, real_time = timezone.now, time.time
    monkeypatch.setattr(timezone, "now", lambda: real_now() + request.param)
    monkeypatch.setattr(time, "time", lambda: real_time() + request.param.total_seconds())
    return request.param


def database_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")  # the transaction's time, as the statements see it
        return cursor.fetchone()[0]


def test_a_re_run_backoff_is_set_on_the_database_clock(db, skewed_clock):
    running, _, run = lane_of_two()
    end_run(run, RunStatus.FAILED)

    queue_on_run_finished(run_id=run.id, status=RunStatus.FAILED, context=run.context)

    running.refresh_from_db()
    delay = timedelta(
        seconds=rerun_delay(
            start_count=1,
            base_seconds=settings.ORCHESTRA_QUEUE_RETRY_BASE_SECONDS,
            max_seconds=settings.ORCHESTRA_QUEUE_RETRY_MAX_SECONDS,
        )
    )
    assert running.status == "SCHEDULED"
    # The statement's time, a moment after the transaction's; this process is an hour off.
    assert abs(running.next_attempt_at - database_now() - delay) < timedelta(seconds=30)


def test_the_sweep_starts_a_re_run_when_the_database_clock_says_it_is_due(db, skewed_clock):
    running, _, run = lane_of_two()
    end_run(run, RunStatus.FAILED)
    queue_on_run_finished(run_id=run.id, status=RunStatus.FAILED, context=run.context)
    QueueRecord.objects.filter(id=running.id).update(
        next_attempt_at=database_now() + timedelta(minutes=10)
    )
    assert queue_sweep()["started"] == 0  # not due, whatever this process's clock says

    QueueRecord.objects.filter(id=running.id).update(
        next_attempt_at=database_now() - timedelta(seconds=1)
    )
    assert queue_sweep()["started"] == 1
    running.refresh_from_db()
    assert running.status == "RUNNING" and running.start_count == 2


# --- lane locks for any id ------------------------------------------------------------------------


def big_scenario(scenario_id: int) -> Scenario:
    scenario = Scenario(
        id=scenario_id, name=f"big-{scenario_id}", definition={"steps": [delay_step("wait")]}
    )
    scenario.save()
    return scenario


def test_a_lane_of_a_scenario_whose_id_is_past_2_to_the_31_works_end_to_end(db):
    scenario = big_scenario(2**40)
    first = queue_record_create(scenario=scenario, payload={})
    second = queue_record_create(scenario=scenario, payload={})
    third = queue_record_create(scenario=scenario, payload={})

    queue_record_move_to_front(record_id=third.id)
    queue_record_cancel(record_id=second.id)
    run = TestRun.objects.get(id=first.current_run_id)
    end_run(run, RunStatus.FAILED)
    QueueRecord.objects.filter(id=first.id).update(max_attempts=1)
    queue_on_run_finished(run_id=run.id, status=RunStatus.FAILED, context=run.context)
    queue_record_retry(record_id=first.id)
    third.refresh_from_db()
    end_run(third.current_run, RunStatus.PASSED)
    queue_on_run_finished(
        run_id=third.current_run_id, status=RunStatus.PASSED, context=third.current_run.context
    )
    queue_sweep()

    first.refresh_from_db()
    third.refresh_from_db()
    assert (first.status, third.status) == ("RUNNING", "DONE")
    assert first.start_count == 2


def held_lane_lock_keys() -> list[tuple[int, int]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT classid::bigint << 32 | objid::bigint, objsubid FROM pg_locks"
            " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        return cursor.fetchall()


@pytest.mark.parametrize("scenario_id", [1, 2**31 - 1, 2**31, 2**32 + 1, 2**62 + 5])
def test_a_lane_lock_is_keyed_by_the_whole_scenario_id(db, scenario_id):
    scenario = big_scenario(scenario_id)
    record = QueueRecord.objects.create(scenario=scenario, payload={})

    with transaction.atomic():
        states.lock_lane(scenario_id)
        assert held_lane_lock_keys() == [(scenario_id, 1)]  # objsubid 1: the single-key form
    with transaction.atomic():
        assert states.lock_lane_of_record(record.id) == scenario_id
        assert held_lane_lock_keys() == [(scenario_id, 1)]


# --- one definition of a new run ------------------------------------------------------------------


def test_a_queue_launch_creates_the_same_run_as_any_other_launch(db):
    scenario = make_scenario([delay_step("wait")])
    record = queue_record_create(scenario=scenario, payload={"a": [1, "x"]}, priority="urgent")
    by_queue = TestRun.objects.get(id=record.current_run_id)
    by_service = run_start(
        scenario=scenario,
        payload={"a": [1, "x"]},
        priority="urgent",
        context={"queueRecordId": record.id, "queueStartCount": 1},
    )
    by_service.refresh_from_db()

    def columns(run: TestRun) -> dict:
        return {
            field.attname: getattr(run, field.attname)
            for field in TestRun._meta.concrete_fields
            if field.attname not in ("id", "queued_at")
        }

    assert columns(by_queue) == columns(by_service)
    assert abs(by_queue.queued_at - by_service.queued_at) < timedelta(minutes=1)


# --- status rules from the transition table -------------------------------------------------------

RAW_CONDITION = re.compile(r"(?:WHERE|AND|OR)\s+([\w.]*status\s+(?:IN\s*\([^)]*\)|=\s*'\w+'))")


def raw_statements() -> dict[str, str]:
    return {
        "start lane head": states._start_lane_head_statement()[0].sql,
        "record done": states._RECORD_DONE.sql,
        "active lane heads": queue_services._ACTIVE_LANE_HEADS_SQL,
    }


def test_every_raw_status_condition_of_the_queue_comes_from_the_transition_table():
    allowed = {
        sources_sql(ALLOWED_SOURCES, to, column)
        for to in ALLOWED_SOURCES
        for column in ("status", "q.status", "r.status", "head.status")
    }
    for name, sql in raw_statements().items():
        conditions = RAW_CONDITION.findall(sql)
        assert conditions, name
        strays = [c for c in conditions if " ".join(c.split()) not in allowed]
        assert not strays, f"{name}: {strays} are not written from ALLOWED_SOURCES"


@pytest.mark.parametrize("status", RecordStatus.values)
def test_the_raw_statements_and_the_orm_agree_on_every_status(db, status):
    scenario = make_scenario()
    run = TestRun.objects.create(scenario=scenario, definition=scenario.definition)
    record = QueueRecord.objects.create(
        scenario=scenario, payload={}, status=status, current_run=run
    )

    def rolled_back(action):
        with transaction.atomic():
            outcome = action()
            transaction.set_rollback(True)
        return outcome

    starts = rolled_back(lambda: states.start_lane_head(scenario.id) is not None)
    swept = rolled_back(lambda: queue_sweep()["started"] == 1)
    done = rolled_back(lambda: states.record_done_locking_lane(record.id, run_id=run.id))
    by_orm = {
        to: rolled_back(lambda to=to: transition_record(record.id, to=to))
        for to in (RecordStatus.RUNNING, RecordStatus.DONE)
    }

    assert starts == swept == by_orm[RecordStatus.RUNNING]
    assert starts == (status in ALLOWED_SOURCES[RecordStatus.RUNNING])
    assert (done is not None) == by_orm[RecordStatus.DONE]
    assert (done is not None) == (status in ALLOWED_SOURCES[RecordStatus.DONE])
