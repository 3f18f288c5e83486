"""Whatever a target returns, a real worker stores its run with an honest status, once; and
whatever reaches the dead-letter queue is collected without holding up what is behind it."""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid
from decimal import Decimal

import httpx
import pytest
from django.db import connection
from kombu import Producer

from celeryconfig import DEAD_LETTER_QUEUE, dead_letter_exchange, dead_letter_queue
from examples.target import BODIES
from plugins.bodies import binary_summary
from runs.deadletters import dead_letters_collect
from runs.models import DeadLetter, TestRun
from runs.services import run_start
from tests.conftest import broker_connection
from tests.factories import make_scenario
from tests.support import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration]

LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def storage_worker(django_db_setup):
    """One worker whose responses are capped at 1 MiB."""
    worker = WorkerProcess("storage", env={"ORCHESTRA_MAX_RESPONSE_BYTES": str(LIMIT)}).start()
    yield worker
    worker.stop()


def finished(run: TestRun, timeout: float = 60) -> TestRun:
    def done():
        run.refresh_from_db()
        return run.is_finished

    wait_for(done, timeout=timeout, message=f"run {run.id} to finish")
    return run


def hits(target_url: str, key: str) -> int:
    """How often the target served ``key``: its own count, not orchestra's."""
    return httpx.get(f"{target_url}/hits/{key}").json()["hits"]


def dead_letters_waiting() -> int:
    with broker_connection() as conn:
        queue = dead_letter_queue(conn.default_channel)
        return queue.queue_declare(passive=True).message_count


def http_step(name: str, url: str, **extra) -> dict:
    return {"name": name, "plugin": "http", "with": {"url": url}, **extra}


EXPECTED_BODY = {
    "nul-text": "before\\u0000after",
    "nan-json": BODIES["nan-json"][1].decode(),
    **{
        kind: binary_summary(BODIES[kind][1], BODIES[kind][0]) for kind in ("png", "gzip", "random")
    },
}


@pytest.mark.usefixtures("live_db", "storage_worker")
@pytest.mark.parametrize("kind", sorted(BODIES))
def test_any_body_a_target_returns_is_stored_once_with_an_honest_status(target_url, kind):
    key = uuid.uuid4().hex
    step = http_step("hard body", f"{target_url}/bodies/{kind}?key={key}", expect={"status": 200})
    if kind == "nan-json":
        step["capture"] = {"doc": "$"}
    run = finished(run_start(scenario=make_scenario([step]), payload={}))

    assert (run.status, run.attempt, run.error) == ("PASSED", 1, "")
    stored = run.steps.get()
    assert stored.status == "PASSED"
    assert stored.response["body"] == EXPECTED_BODY[kind]
    if kind in ("png", "gzip", "random"):
        content = BODIES[kind][1]
        assert stored.response["body"]["sha256"] == hashlib.sha256(content).hexdigest()
        assert stored.response["body"]["size"] == len(content)
    if kind == "nan-json":
        assert stored.captures == {
            "doc": {"value": "NaN", "big": "Infinity", "text": "a\\u0000b", "lone": "\\ud800"}
        }
    assert hits(target_url, key) == 1
    assert dead_letters_waiting() == 0


@pytest.mark.usefixtures("live_db", "storage_worker")
@pytest.mark.parametrize("length", [0, 1], ids=["chunked", "content-length"])
def test_a_body_over_the_limit_ends_the_run_error_with_a_clear_reason(target_url, length):
    key = uuid.uuid4().hex
    url = f"{target_url}/bodies/huge?key={key}&bytes={5 * LIMIT}&length={length}"
    run = finished(run_start(scenario=make_scenario([http_step("huge", url)]), payload={}))

    assert (run.status, run.attempt) == ("ERROR", 1)
    assert f"exceeds ORCHESTRA_MAX_RESPONSE_BYTES ({LIMIT} bytes)" in run.steps.get().error
    assert hits(target_url, key) == 1


@pytest.mark.usefixtures("live_db", "storage_worker")
def test_a_dripping_body_ends_the_run_at_the_step_timeout(target_url):
    key = uuid.uuid4().hex
    url = f"{target_url}/bodies/drip?key={key}&bytes=100&interval=1"
    run = finished(
        run_start(scenario=make_scenario([http_step("drip", url, timeout=2)]), payload={})
    )

    step = run.steps.get()
    assert (run.status, step.status) == ("ERROR", "ERROR")
    assert "timed out after 2s" in step.error
    assert 1900 < step.duration_ms < 3000
    assert hits(target_url, key) == 1


REFUSING_TRIGGER = """
CREATE FUNCTION test_refuse_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name LIKE 'refused%%' AND NEW.error NOT LIKE 'its result could not be stored%%' THEN
        RAISE EXCEPTION 'refused by the test trigger' USING ERRCODE = '22000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_refuse_step BEFORE INSERT ON runs_stepresult
    FOR EACH ROW EXECUTE FUNCTION test_refuse_step();
"""


@pytest.fixture
def refusing_database(live_db):
    """The database refuses (a DataError) the result of any step named ``refused...``."""
    with connection.cursor() as cursor:
        cursor.execute(REFUSING_TRIGGER)
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_refuse_step ON runs_stepresult")
        cursor.execute("DROP FUNCTION test_refuse_step()")


@pytest.mark.usefixtures("refusing_database", "storage_worker")
@pytest.mark.parametrize("last", [False, True], ids=["stored-alone", "stored-with-the-finish"])
def test_a_step_the_database_refuses_ends_the_run_error_once_never_executed_again(target_url, last):
    key = uuid.uuid4().hex
    steps = [http_step("refused", f"{target_url}/bodies/png?key={key}")]
    if not last:
        steps.append(http_step("after", f"{target_url}/bodies/gzip?key={key}"))
    run = finished(run_start(scenario=make_scenario(steps), payload={}))

    assert (run.status, run.attempt) == ("ERROR", 1)
    assert "could not be stored: DataError: refused by the test trigger" in run.error
    refused = run.steps.get(position=0)
    assert refused.status == "ERROR"
    assert refused.error.startswith("its result could not be stored: DataError: refused")
    assert hits(target_url, key) == len(steps)
    assert dead_letters_waiting() == 0


# --- poison in the dead-letter queue ---


def publish_dead_letter(body: bytes, *, headers: dict, content_type: str = "application/json"):
    with broker_connection() as conn:
        dead_letter_queue(conn.default_channel).declare()
        Producer(conn.default_channel).publish(
            body,
            exchange=dead_letter_exchange,
            routing_key=DEAD_LETTER_QUEUE,
            headers=headers,
            content_type=content_type,
            content_encoding="binary",
            delivery_mode=2,
        )


POISON = {
    "nul-body": (b"[[1], {}, {}]\x00", {}, "application/json"),
    "nul-header": (b"[[2], {}, {}]", {"note": "a\x00b"}, "application/json"),
    "not-json-headers": (
        b"[[3], {}, {}]",
        {
            b"\xff\xfe": "a key JSON cannot spell",
            "raw": b"\xff\x00",
            "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
            "amount": Decimal("1.5"),
            "nested": {"deep": [b"\x00", "x\x00"]},
        },
        "application/json",
    ),
    "undecodable-body": (b"\xff\xfe\x00\x01", {}, "application/data"),
    "huge-run-id": (b"[[99999999999999999999999], {}, {}]", {}, "application/json"),
    "long-fields": (b"[[4], {}, {}]", {"task": "t" * 1000}, "c" * 250),
}


REFUSING_DEAD_LETTERS = """
CREATE FUNCTION test_refuse_letter() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.task_id = 'refused' THEN
        RAISE EXCEPTION 'refused by the test trigger' USING ERRCODE = '22000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_refuse_letter BEFORE INSERT ON runs_deadletter
    FOR EACH ROW EXECUTE FUNCTION test_refuse_letter();
"""


@pytest.fixture
def refusing_dead_letters(transactional_db):
    """The database refuses (a DataError) a dead letter whose task id is ``refused``."""
    with connection.cursor() as cursor:
        cursor.execute(REFUSING_DEAD_LETTERS)
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_refuse_letter ON runs_deadletter")
        cursor.execute("DROP FUNCTION test_refuse_letter()")


def test_a_dead_letter_the_database_refuses_is_kept_as_a_stand_in(refusing_dead_letters):
    publish_dead_letter(b"[[7], {}, {}]\x00", headers={"id": "refused"})
    publish_dead_letter(b"[[8], {}, {}]", headers={"id": "good", "task": "runs.execute_run"})

    assert dead_letters_collect() == 2

    assert dead_letters_waiting() == 0
    stand_in, good = DeadLetter.objects.order_by("id")
    assert stand_in.task_id == "" and stand_in.received
    assert stand_in.reason.startswith("stored as a stand-in: DataError: refused by the test")
    assert stand_in.body == "[[7], {}, {}]\\x00"
    assert (good.task_id, good.run_id_hint) == ("good", 8)


@pytest.mark.django_db(transaction=True)
def test_poison_dead_letters_are_all_collected_and_never_hold_up_a_good_one():
    for name, (body, headers, content_type) in POISON.items():
        publish_dead_letter(body, headers={"id": name, **headers}, content_type=content_type)
    long_id = "i" * 500
    publish_dead_letter(b"[[5], {}, {}]", headers={"id": long_id, "task": "runs.execute_run"})
    publish_dead_letter(b"[[6], {}, {}]", headers={"id": "good", "task": "runs.execute_run"})

    assert dead_letters_collect() == len(POISON) + 2

    assert dead_letters_waiting() == 0
    letters = {letter.task_id: letter for letter in DeadLetter.objects.all()}
    assert set(letters) == {*POISON, long_id[:64], "good"}
    good = letters["good"]
    assert (good.body, good.run_id_hint, good.task, good.received) == (
        "[[6], {}, {}]",
        6,
        "runs.execute_run",
        True,
    )
    assert letters["nul-body"].body == "[[1], {}, {}]\\u0000"
    assert letters["nul-header"].headers["note"] == "a\\u0000b"
    stored_headers = letters["not-json-headers"].headers
    assert stored_headers["raw"] == binary_summary(b"\xff\x00")
    assert stored_headers["when"] == "2026-01-02T03:04:05" and stored_headers["amount"] == 1.5
    assert stored_headers["nested"] == {"deep": ["\\u0000", "x\\u0000"]}
    assert letters["not-json-headers"].headers["\\xff\\xfe"] == "a key JSON cannot spell"
    assert letters["undecodable-body"].body == "\\xff\\xfe\\u0000\x01"
    assert letters["huge-run-id"].run_id_hint is None
    assert letters["long-fields"].task == "t" * 200
    assert letters["long-fields"].content_type == "c" * 100
    assert letters[long_id[:64]].run_id_hint == 5
    json.dumps([letter.headers for letter in letters.values()], allow_nan=False)
