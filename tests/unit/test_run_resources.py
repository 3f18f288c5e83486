"""The executor's side of plugins/resources.py: a step's ``listen`` subscribes before the step
runs, later steps await it, and every resource is closed at the end of the run, whatever the
ending."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from plugins import registry
from plugins.base import PluginError, PluginResult, ProtocolPlugin
from plugins.resources import AWAIT_SCHEMA, Listener
from runs.definition import DefinitionError, validate_definition
from runs.executor import run_execute
from runs.models import TestRun
from runs.services import run_cancel
from runs.states import RunStatus
from tests.factories import make_scenario
from tests.support import wait_for

pytestmark = pytest.mark.django_db

EVENTS: list[str] = []


class BusListener(Listener):
    def close(self) -> None:
        EVENTS.append("closed")
        BUS.listeners.remove(self)


class Bus:
    """An in-process message bus: what a broker would be to a real plugin."""

    def __init__(self) -> None:
        self.listeners: list[BusListener] = []

    def publish(self, message: dict) -> None:
        for listener in self.listeners:
            listener.deliver({"data": message})


BUS = Bus()


class BusPlugin(ProtocolPlugin):
    """``publish`` a message, or ``await`` a listener's; listens to every publication."""

    name = "bus"
    params_schema = {
        "oneOf": [
            {
                "type": "object",
                "required": ["publish"],
                "additionalProperties": False,
                "properties": {"publish": {"type": "object"}, "crash": {"type": "boolean"}},
            },
            AWAIT_SCHEMA,
        ]
    }
    expect_schema = {"type": "object", "properties": {"json": {"type": "object"}}}
    listen_schema = {"type": "object", "additionalProperties": False, "properties": {}}

    def listen(self, params, context):
        listener = BusListener()
        BUS.listeners.append(listener)
        EVENTS.append("listening")
        return listener

    def execute(self, params, context):
        if "publish" in params:
            EVENTS.append("step")
            BUS.publish(params["publish"])
            if params.get("crash"):
                raise PluginError("the step failed after publishing")
            return PluginResult(data=params["publish"])
        listener = context.resources.get(params["await"], Listener)
        messages = listener.wait(
            count=params.get("count", 1), match=params.get("match", {}), context=context
        )
        return PluginResult(data=[message["data"] for message in messages])


@pytest.fixture(autouse=True)
def bus_plugin(monkeypatch):
    plugins = {**registry.installed_plugins(), "bus": BusPlugin()}
    monkeypatch.setattr(registry, "installed_plugins", lambda: plugins)
    EVENTS.clear()
    yield
    BUS.listeners.clear()


def run(definition: dict) -> TestRun:
    validate_definition(definition)
    scenario = make_scenario(definition["steps"])
    test_run = TestRun.objects.create(scenario=scenario, definition=definition, context={})
    run_execute(run_id=test_run.id, worker="host:1")
    test_run.refresh_from_db()
    return test_run


def test_a_message_published_by_the_listening_step_itself_is_caught():
    result = run(
        {
            "steps": [
                {
                    "name": "place order",
                    "plugin": "bus",
                    "listen": {"as": "events", "plugin": "bus"},
                    "with": {"publish": {"order": 7}},
                },
                {
                    "name": "order event",
                    "plugin": "bus",
                    "with": {"await": "events", "match": {"$.order": 7}},
                    "expect": {"json": {"$[0].order": 7}},
                    "timeout": 2,
                },
            ]
        }
    )

    assert result.status == RunStatus.PASSED, result.error
    assert EVENTS == ["listening", "step", "closed"]


def test_messages_between_steps_are_kept_and_the_listener_is_closed_after_a_failure():
    result = run(
        {
            "steps": [
                {
                    "name": "subscribe",
                    "plugin": "delay",
                    "with": {"seconds": 0},
                    "listen": {"as": "events", "plugin": "bus"},
                },
                {"name": "first", "plugin": "bus", "with": {"publish": {"n": 1}}},
                {"name": "second", "plugin": "bus", "with": {"publish": {"n": 2}, "crash": True}},
                {"name": "never", "plugin": "bus", "with": {"await": "events", "count": 2}},
            ]
        }
    )

    assert result.status == RunStatus.ERROR
    assert EVENTS == ["listening", "step", "step", "closed"]
    assert BUS.listeners == []


@pytest.mark.django_db(transaction=True)
def test_a_listener_is_closed_when_the_run_is_cancelled_while_a_step_awaits_it():
    steps = [
        {
            "name": "subscribe",
            "plugin": "delay",
            "with": {"seconds": 0},
            "listen": {"as": "events", "plugin": "bus"},
        },
        {"name": "wait", "plugin": "bus", "with": {"await": "events"}, "timeout": 60},
    ]
    scenario = make_scenario(steps)
    test_run = TestRun.objects.create(scenario=scenario, definition=scenario.definition, context={})

    def execute() -> None:
        try:
            run_execute(run_id=test_run.id, worker="h:1")
        finally:
            connection.close()  # the thread's own connection, before the test database goes

    worker = threading.Thread(target=execute)
    worker.start()
    wait_for(lambda: BUS.listeners, timeout=10, message="the listener to subscribe")

    started = time.monotonic()
    run_cancel(run_id=test_run.id)
    worker.join(timeout=30)

    test_run.refresh_from_db()
    assert test_run.status == RunStatus.CANCELLED
    assert time.monotonic() - started < 10  # the await was interrupted, not waited out
    assert EVENTS == ["listening", "closed"]
    assert BUS.listeners == []
    wait_for(no_other_session, timeout=30, message="the lease keeper to close its connection")


def no_other_session() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0] == 0


@pytest.mark.parametrize(
    ("steps", "path", "message"),
    [
        (
            [{"name": "a", "plugin": "bus", "with": {"await": "nobody"}}],
            "steps[0] (a): with.await",
            "no earlier step listens as 'nobody'",
        ),
        (
            [
                {
                    "name": "a",
                    "plugin": "delay",
                    "with": {"seconds": 0},
                    "listen": {"as": "x", "plugin": "delay"},
                }
            ],
            "steps[0] (a): listen.plugin",
            "plugin delay cannot listen",
        ),
        (
            [
                {
                    "name": "a",
                    "plugin": "delay",
                    "with": {"seconds": 0},
                    "listen": {"as": "x", "plugin": "bus", "with": {"topic": "t"}},
                }
            ],
            "steps[0] (a): listen.with",
            "unexpected field",
        ),
        (
            [
                {
                    "name": "a",
                    "plugin": "delay",
                    "with": {"seconds": 0},
                    "listen": {"as": "x", "plugin": "bus"},
                },
                {
                    "name": "b",
                    "plugin": "delay",
                    "with": {"seconds": 0},
                    "listen": {"as": "x", "plugin": "bus"},
                },
            ],
            "steps[1] (b): listen.as",
            "a listener 'x' exists already",
        ),
    ],
)
def test_a_bad_listener_is_refused_when_saved_naming_the_step_and_field(steps, path, message):
    with pytest.raises(DefinitionError) as caught:
        validate_definition({"steps": steps})
    assert any(
        str(problem).startswith(path) and message in problem.message
        for problem in caught.value.problems
    ), caught.value.problems
