"""Listeners through a real worker: a ``listen`` subscribes before its step runs, so a message
that the step itself triggers is caught, and so is one published from outside between two steps;
the subscription is gone from the broker once the run ends, whatever the ending."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from kombu import Connection, Exchange, Producer

from runs.models import StepResult, StepStatus
from runs.services import run_start
from runs.states import RunStatus
from tests.factories import make_scenario
from tests.integration.test_secrets import finished
from tests.support import wait_for

pytestmark = [pytest.mark.integration]


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def vhost():
    name = f"orchestra_listen_{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    with Connection(f"amqp://guest:guest@127.0.0.1:5672/{name}") as connection:
        Exchange("orders", type="topic", durable=False)(connection.default_channel).declare()
    yield name
    rabbitmqctl("delete_vhost", name)


@pytest.fixture
def worker(worker_factory):
    return worker_factory(
        "listeners",
        env={"ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE": "127.0.0.1:5672,127.0.0.1:1883"},
    )


def publish_order(vhost: str, order: int) -> None:
    with Connection(f"amqp://guest:guest@127.0.0.1:5672/{vhost}") as connection:
        Producer(connection.default_channel).publish(
            {"order": order},
            exchange=Exchange("orders", type="topic", durable=False),
            routing_key="order.created",
            serializer="json",
        )


def amqp_steps(vhost: str, *, between: str) -> list[dict]:
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    return [
        {
            "name": "place order",
            "plugin": "amqp",
            "listen": {
                "as": "orders",
                "plugin": "amqp",
                "with": {"url": url, "exchange": "orders", "routing_key": "order.*"},
            },
            "with": {
                "url": url,
                "exchange": "orders",
                "routing_key": "order.created",
                "json": {"order": 1},
            },
        },
        # Until this step ends, the outside publisher (the test) sends order 2.
        {"name": "meanwhile", "plugin": "http", "with": {"url": between}, "timeout": 10},
        {
            "name": "both events",
            "plugin": "amqp",
            "with": {"await": "orders", "count": 2},
            "expect": {"count": 2, "json": {"$[0].order": 1, "$[1].order": 2}},
            "timeout": 10,
        },
    ]


def test_amqp_listener_catches_the_steps_own_message_and_one_from_between_the_steps(
    live_db, worker, vhost, target_url
):
    # The target holds the middle step for a second, long enough to publish in between.
    scenario = make_scenario(amqp_steps(vhost, between=f"{target_url}/slow?seconds=1"))
    run = run_start(scenario=scenario)

    wait_for(
        lambda: StepResult.objects.filter(run_id=run.id, name="place order").exists(),
        timeout=30,
        message="the first step to be stored",
    )
    publish_order(vhost, 2)

    run = finished(run.id)
    statuses = {step.name: (step.status, step.error) for step in run.steps.all()}
    assert run.status == RunStatus.PASSED, statuses
    assert statuses["both events"][0] == StepStatus.PASSED
    wait_for(
        lambda: "amq.gen" not in rabbitmqctl("list_queues", "-p", vhost, "name"),
        timeout=10,
        message="the listener's queue to be gone after the run",
    )


def test_mqtt_listener_is_subscribed_before_its_step_publishes(live_db, worker):
    topic = f"orchestra-test/{uuid.uuid4().hex}/events"
    scenario = make_scenario(
        [
            {
                "name": "publish",
                "plugin": "mqtt",
                "listen": {
                    "as": "events",
                    "plugin": "mqtt",
                    "with": {"host": "127.0.0.1", "topic": topic},
                },
                "with": {"host": "127.0.0.1", "topic": topic, "json": {"n": 1}, "qos": 1},
            },
            {
                "name": "the event, and one that never comes",
                "plugin": "mqtt",
                "with": {"await": "events", "count": 2},
                "timeout": 2,
            },
        ]
    )
    run = finished(run_start(scenario=scenario).id)

    steps = {step.name: step for step in run.steps.all()}
    awaited = steps["the event, and one that never comes"]
    assert run.status == RunStatus.ERROR
    # The step's own message was caught; the second never came, and the await says so.
    assert "1 of 2 matching messages arrived in time" in awaited.error
