"""Whatever a plugin returns is stored (runs.storable), and a step or final status the database
refuses all the same ends the run ERROR once, with the database's reason (runs.executor)."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from decimal import Decimal

import httpx
import psycopg2
import pytest
from django.db import OperationalError, connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.base import PluginResult, ProtocolPlugin
from plugins.bodies import binary_summary, decode_text, summarize_text
from plugins.http import HttpPlugin
from runs import executor
from runs.executor import Outcome, run_execute
from runs.models import StepResult, TestRun
from runs.storable import MAX_DEPTH, storable, storable_text
from tests.factories import make_scenario

# --- storable, case by case ---


class Opaque:
    def __str__(self) -> str:
        return "opaque\x00thing"


class Broken:
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("a\x00b", "a\\u0000b"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        (float("nan"), "NaN"),
        ([float("inf"), float("-inf")], ["Infinity", "-Infinity"]),
        (Decimal("1.5"), 1.5),
        (Decimal("NaN"), "NaN"),
        ({3, 1, 2}, [1, 2, 3]),
        ((1, "x"), [1, "x"]),
        (
            {1: "a", None: "b", False: "c", b"k\xff": "d"},
            {"1": "a", "null": "b", "false": "c", "k\\xff": "d"},
        ),
        ({1: "int", "1": "text"}, {"1": "int", "1'": "text"}),
        (datetime.date(2026, 1, 2), "2026-01-02"),
        (2**2000, "[integer of 2001 bits]"),
        (Opaque(), "opaque\\u0000thing"),
        (Broken(), "<Broken object>"),
        (b"text bytes", "text bytes"),
        (b"\x89PNG\x00", binary_summary(b"\x89PNG\x00")),
    ],
    ids=lambda value: type(value).__name__,
)
def test_a_value_becomes_plain_json_that_postgresql_accepts(value, stored):
    assert storable(value) == stored


def test_nesting_is_bounded_and_cycles_end():
    deep: list = []
    for _ in range(MAX_DEPTH * 3):
        deep = [deep]
    cycle: list = []
    cycle.append(cycle)

    for value in (deep, cycle):
        text = json.dumps(storable(value))
        assert text.count("[") == MAX_DEPTH + 1  # the marker's own
        assert f"nested deeper than {MAX_DEPTH} levels" in text


def test_size_is_bounded_across_the_whole_value():
    huge = {"list": list(range(10**6)), "text": "x" * 10**7}

    stored = storable(huge, max_chars=10_000)

    assert len(json.dumps(stored)) < 20_000
    assert stored["list"][-1].startswith("[truncated: ")


# --- storable, for any value: the PostgreSQL round trip ---

unstorable_text = st.text(alphabet=st.characters(codec=None), max_size=30) | st.sampled_from(
    ["\x00", "\ud800", "a\x00\udfffb", "\\u0000"]
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**60, max_value=2**1100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.decimals(allow_nan=True)
    | unstorable_text
    | st.binary(max_size=64)
    | st.datetimes()
)
keys = unstorable_text | st.integers() | st.none() | st.booleans() | st.binary(max_size=8)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.frozensets(st.integers() | unstorable_text, max_size=4)
        | st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=30,
)


def _texts(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def _numbers_as_floats(value):
    # jsonb keeps numbers as numeric: 1e300 comes back spelled out, as an integer.
    if isinstance(value, dict):
        return {key: _numbers_as_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers_as_floats(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=values)
def test_any_value_is_stored_by_postgresql_as_jsonb_and_read_back_the_same(db, value):
    stored = storable(value)

    document = json.dumps(stored, allow_nan=False)
    for text in _texts(stored):
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogate
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::jsonb::text, %s::text", [document, storable_text(document)])
        read_back, _ = cursor.fetchone()
    assert _numbers_as_floats(json.loads(read_back)) == _numbers_as_floats(stored)


# --- any bytes in as a response body: a stored StepResult out ---


class OneStepAfter(ProtocolPlugin):
    """A second step, so the http step is stored on its own (store_step), not with the finish."""

    name = "after"

    def execute(self, params, context):
        return PluginResult()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | unstorable_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(unstorable_text, children),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=600),
    unstorable_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
    json_values.map(
        lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ),
)
content_types = st.sampled_from(
    [
        "",
        "text/plain",
        "application/json",
        "image/png",
        "text/html; charset=ISO-8859-1",
        "application/json; charset=utf-16",
        "not a type",
        "text/plain; charset=\x00",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=bodies, content_type=content_types)
def test_any_response_body_ends_in_a_stored_step(
    transactional_db, monkeypatch, content, content_type
):
    http = HttpPlugin()
    http._client = httpx.Client(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(
                200, content=content, headers={"content-type": content_type}
            )
        )
    )
    monkeypatch.setattr(
        executor, "get_plugin", lambda name: http if name == "http" else OneStepAfter()
    )
    definition = {
        "steps": [
            {
                "name": "answer",
                "plugin": "http",
                "with": {"url": "http://t.test/"},
                "capture": {"doc": "$"},
            },
            {"name": "after", "plugin": "after"},
        ]
    }
    run = TestRun.objects.create(scenario=make_scenario(), definition=definition, context={})

    assert run_execute(run_id=run.id, worker="test:1") == Outcome.EXECUTED

    run.refresh_from_db()
    step = StepResult.objects.get(run=run, position=0)
    assert run.status in ("PASSED", "FAILED") and step.status in ("PASSED", "FAILED"), step.error
    text = decode_text(content, content_type)
    if text is None:
        assert step.response["body"] == storable(binary_summary(content, content_type))
        assert step.response["body"]["sha256"] == hashlib.sha256(content).hexdigest()
    else:
        assert step.response["body"] == storable_text(summarize_text(text))
    assert StepResult.objects.filter(run=run).count() == 2


# --- the database refuses a step all the same ---

REFUSING_TRIGGER = """
CREATE FUNCTION test_refuse_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name LIKE 'refused-always%%'
       OR (NEW.name LIKE 'refused%%' AND NEW.error NOT LIKE 'its result could not be stored%%') THEN
        RAISE EXCEPTION 'refused by the test trigger' USING ERRCODE = '22000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_refuse_step BEFORE INSERT ON runs_stepresult
    FOR EACH ROW EXECUTE FUNCTION test_refuse_step();
"""


@pytest.fixture
def refusing_database(transactional_db):
    """A trigger that refuses (SQLSTATE 22000, a DataError) the results of steps named
    ``refused...`` unless they are the stand-in, and of ``refused-always...`` steps always."""
    with connection.cursor() as cursor:
        cursor.execute(REFUSING_TRIGGER)
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_refuse_step ON runs_stepresult")
        cursor.execute("DROP FUNCTION test_refuse_step()")


class Counting(ProtocolPlugin):
    name = "counting"
    calls: list[str] = []

    def execute(self, params, context):
        Counting.calls.append(context.step_name)
        return PluginResult(response={"body": "fine"})


def execute(monkeypatch, *names: str, finally_names: tuple[str, ...] = ()) -> TestRun:
    Counting.calls = []
    monkeypatch.setattr(executor, "get_plugin", lambda name: Counting())
    definition = {
        "steps": [{"name": name, "plugin": "counting"} for name in names],
        "finally": [{"name": name, "plugin": "counting"} for name in finally_names],
    }
    run = TestRun.objects.create(scenario=make_scenario(), definition=definition, context={})
    outcome = run_execute(run_id=run.id, worker="test:1")
    run.refresh_from_db()
    assert outcome == Outcome.EXECUTED and run.status == "ERROR"
    return run


def steps_of(run: TestRun) -> list[tuple[str, str, str]]:
    return [(s.name, s.status, s.error) for s in run.steps.order_by("position")]


REFUSED = "its result could not be stored: DataError: refused by the test trigger"


def test_a_refused_step_is_stored_as_its_stand_in_and_the_run_goes_on(
    refusing_database, monkeypatch
):
    run = execute(monkeypatch, "refused", "next", finally_names=("clean up",))

    assert steps_of(run) == [
        ("refused", "ERROR", REFUSED),
        ("next", "PASSED", ""),
        ("clean up", "PASSED", ""),
    ]
    assert Counting.calls == ["refused", "next", "clean up"]
    assert run.error == f"refused: {REFUSED}" and run.attempt == 1


def test_a_refused_last_step_ends_the_run_error_with_its_stand_in(refusing_database, monkeypatch):
    run = execute(monkeypatch, "first", "refused")

    assert steps_of(run) == [("first", "PASSED", ""), ("refused", "ERROR", REFUSED)]
    assert run.error.startswith("the final status could not be stored: DataError: refused")
    assert run.finished_at is not None and run.lease_expires_at is None


def test_a_step_refused_even_as_stand_in_ends_the_run_at_once(refusing_database, monkeypatch):
    run = execute(monkeypatch, "first", "refused-always", "never")

    assert steps_of(run) == [("first", "PASSED", "")]
    assert Counting.calls == ["first", "refused-always"]
    assert (
        run.error
        == "refused-always: its result could not be stored: DataError: refused by the test trigger"
    )


def test_a_last_step_refused_even_as_stand_in_still_ends_the_run(refusing_database, monkeypatch):
    run = execute(monkeypatch, "refused-always")

    assert steps_of(run) == []
    assert run.error.startswith("the final status could not be stored: DataError: refused")


class NulPlugin(ProtocolPlugin):
    name = "nul"

    def execute(self, params, context):
        return PluginResult(response={"body": "a\x00b"})


def test_a_value_postgresql_refuses_ends_the_run_error_with_its_reason(
    transactional_db, monkeypatch
):
    # Without runs.storable, PostgreSQL's own refusal of a NUL takes the refused path.
    monkeypatch.setattr(executor, "storable", lambda value: value)
    monkeypatch.setattr(executor, "get_plugin", lambda name: NulPlugin())
    definition = {"steps": [{"name": "nul", "plugin": "nul"}, {"name": "again", "plugin": "nul"}]}
    run = TestRun.objects.create(scenario=make_scenario(), definition=definition, context={})

    assert run_execute(run_id=run.id, worker="test:1") == Outcome.EXECUTED

    run.refresh_from_db()
    assert run.status == "ERROR"
    [first, last] = run.steps.order_by("position")
    assert first.status == "ERROR" and "unsupported Unicode escape sequence" in first.error
    assert last.status == "ERROR" and "unsupported Unicode escape sequence" in last.error
    assert math.isfinite(first.duration_ms)


# --- the connection is lost while storing ---


def terminate_own_backend() -> None:
    """Drop this process's database connection as a server restart would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [pid] = cursor.fetchone()
    other = psycopg2.connect(**connection.get_connection_params())
    try:
        other.autocommit = True
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()


@pytest.mark.parametrize("when", ["before", "after"], ids=["write-lost", "answer-lost"])
@pytest.mark.parametrize("path", ["store_step", "finish_run"])
def test_a_connection_lost_while_storing_does_not_execute_the_steps_again(
    transactional_db, monkeypatch, path, when
):
    real = getattr(executor, path)
    lost = []

    def losing(*args, **kwargs):
        if lost:
            return real(*args, **kwargs)
        lost.append(path)
        if when == "before":
            terminate_own_backend()
            return real(*args, **kwargs)
        real(*args, **kwargs)  # committed, then the answer never arrives
        terminate_own_backend()
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(executor, path, losing)
    Counting.calls = []
    monkeypatch.setattr(executor, "get_plugin", lambda name: Counting())
    definition = {
        "steps": [{"name": "one", "plugin": "counting"}, {"name": "two", "plugin": "counting"}]
    }
    run = TestRun.objects.create(scenario=make_scenario(), definition=definition, context={})

    assert run_execute(run_id=run.id, worker="test:1") == Outcome.EXECUTED

    run.refresh_from_db()
    assert lost == [path]
    assert (run.status, run.attempt) == ("PASSED", 1)
    assert steps_of(run) == [("one", "PASSED", ""), ("two", "PASSED", "")]
    assert Counting.calls == ["one", "two"]
