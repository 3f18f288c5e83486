"""The mqtt plugin against the real Mosquitto (127.0.0.1:1883), on topics under a unique prefix."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from django.core.exceptions import ValidationError
from paho.mqtt.enums import CallbackAPIVersion

from plugins.base import PluginError, StepContext
from plugins.mqtt import MqttPlugin
from runs.services import scenario_save
from tests.support import wait_for

pytestmark = [pytest.mark.integration]

plugin = MqttPlugin()
HOST, PORT = "127.0.0.1", 1883


@pytest.fixture
def prefix():
    """A topic prefix of this test's own; retained messages under it are cleared afterwards."""
    prefix = f"orchestra-test/{uuid.uuid4().hex}"
    yield prefix
    client = connected_client()
    for topic in (f"{prefix}/retained",):
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def connected_client() -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    client.connect(HOST, PORT)
    client.loop_start()
    return client


def context(timeout: float = 5, **kwargs) -> StepContext:
    return StepContext(run_id=1, step_name="mqtt step", timeout=timeout, **kwargs)


def subscriber(topic: str) -> tuple[mqtt.Client, list[mqtt.MQTTMessage]]:
    """A paho client subscribed (SUBACK received) to ``topic``, collecting what arrives."""
    received: list[mqtt.MQTTMessage] = []
    subscribed: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda _c, _u, message: received.append(message)
    client.on_subscribe = lambda _c, _u, mid, _r, _p: subscribed.append(mid)
    client.connect(HOST, PORT)
    client.loop_start()
    _, mid = client.subscribe(topic, qos=2)
    wait_for(lambda: mid in subscribed, timeout=5, message="the SUBACK")
    return client, received


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_reaches_a_subscriber_at_each_qos(prefix, qos):
    client, received = subscriber(f"{prefix}/#")
    try:
        result = plugin.execute(
            {"host": HOST, "topic": f"{prefix}/orders", "json": {"order_id": qos}, "qos": qos},
            context(),
        )
        wait_for(lambda: received, timeout=5, message="the published message")
    finally:
        client.disconnect()
        client.loop_stop()

    assert result.response["acknowledged"] is (qos > 0)
    assert received[0].topic == f"{prefix}/orders"
    assert received[0].payload == f'{{"order_id": {qos}}}'.encode()


def test_subscribe_gets_a_retained_message_and_checks_topic_and_json(prefix):
    plugin.execute(
        {
            "host": HOST,
            "topic": f"{prefix}/retained",
            "payload": '{"v": 1}',
            "qos": 1,
            "retain": True,
        },
        context(),
    )

    result = plugin.execute({"host": HOST, "topic": f"{prefix}/+", "qos": 1}, context())
    assertions = plugin.check(
        {"count": 1, "json": {"$[0].v": 1}, "topic": f"{prefix}/retained"}, result
    )

    assert all(a.passed for a in assertions), assertions
    assert result.response["messages"][0]["retain"] is True


def test_subscribe_fails_when_the_messages_that_arrive_do_not_match(prefix):
    plugin.execute(
        {
            "host": HOST,
            "topic": f"{prefix}/retained",
            "payload": '{"v": 1}',
            "qos": 1,
            "retain": True,
        },
        context(),
    )

    result = plugin.execute(
        {"host": HOST, "topic": f"{prefix}/retained", "match": {"$.v": 2}}, context(timeout=1)
    )
    assertions = plugin.check({"topic": [f"{prefix}/other"]}, result)

    assert [(a.name, a.passed) for a in assertions] == [("match", False), ("topic", False)]
    assert "0 of 1 messages matched (1 received)" in assertions[0].message


def test_subscribe_with_nothing_arriving_is_a_retryable_error_at_the_deadline(prefix):
    started = time.monotonic()
    with pytest.raises(PluginError, match="no message arrived") as raised:
        plugin.execute({"host": HOST, "topic": f"{prefix}/silent"}, context(timeout=0.5))
    assert raised.value.retryable
    assert time.monotonic() - started < 2


def test_a_binary_payload_is_summarised(prefix):
    client = connected_client()
    try:
        listener = plugin.listen({"host": HOST, "topic": f"{prefix}/bin"}, context())
        client.publish(f"{prefix}/bin", bytes(range(256)), qos=1).wait_for_publish(5)
        (message,) = listener.wait(count=1, match={}, context=context())
    finally:
        listener.close()
        client.disconnect()
        client.loop_stop()

    assert message["data"] is None
    assert message["body"]["size"] == 256 and len(message["body"]["sha256"]) == 64


def test_a_listener_catches_the_message_the_triggering_step_publishes(prefix):
    step = context()
    step.resources.add("events", plugin.listen({"host": HOST, "topic": f"{prefix}/#"}, step))
    try:
        plugin.execute({"host": HOST, "topic": f"{prefix}/paid", "json": {"id": 5}, "qos": 1}, step)
        result = plugin.execute(
            {"await": "events", "match": {"$.id": 5}}, context(resources=step.resources)
        )
    finally:
        step.resources.close_all()

    assert result.data == [{"id": 5}]
    assert plugin.check({"topic": f"{prefix}/paid"}, result)[0].passed


def test_a_listener_keeps_a_message_published_between_two_steps_and_close_all_disconnects(
    prefix,
):
    resources = context().resources
    listener = plugin.listen(
        {"host": HOST, "topic": f"{prefix}/orders", "qos": 1}, context(resources=resources)
    )
    resources.add("orders", listener)
    client = connected_client()
    try:
        client.publish(f"{prefix}/orders", b'{"order_id": 3}', qos=1).wait_for_publish(5)
        client.publish(f"{prefix}/orders", b'{"order_id": 4}', qos=1).wait_for_publish(5)
        result = plugin.execute(
            {"await": "orders", "match": {"$.order_id": 4}}, context(resources=resources)
        )
        assert result.data == [{"order_id": 4}]
        assert listener.client.is_connected()

        resources.close_all()
        assert not listener.client.is_connected()
        # Closed on the broker's side too: nothing published now reaches the listener.
        client.publish(f"{prefix}/orders", b'{"order_id": 5}', qos=1).wait_for_publish(5)
        probe, received = subscriber(f"{prefix}/orders")
        client.publish(f"{prefix}/orders", b'{"order_id": 6}', qos=1).wait_for_publish(5)
        wait_for(lambda: received, timeout=5, message="the probe's message")
        probe.disconnect()
        probe.loop_stop()
        assert [m["data"]["order_id"] for m in listener._messages] == [3, 4]
    finally:
        resources.close_all()
        client.disconnect()
        client.loop_stop()


def test_an_unreachable_broker_is_a_retryable_error():
    with pytest.raises(PluginError, match="connecting to mqtt://127.0.0.1:9 failed") as raised:
        plugin.execute({"host": HOST, "port": 9, "topic": "t", "payload": "x"}, context())
    assert raised.value.retryable


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("step", "path", "message"),
    [
        ({"with": {"host": HOST, "topic": "t", "payload": "x", "qos": 3}}, "with.qos", "one of"),
        ({"with": {"host": HOST, "topic": "a/#", "payload": "x"}}, "with.topic", "does not match"),
        ({"with": {"host": HOST, "topic": "t", "count": 0}}, "with.count", "minimum"),
        ({"with": {"topic": "t", "payload": "x"}}, "with.host", "required field is missing"),
        (
            {"with": {"host": HOST, "topic": "t", "payload": "x", "json": {}}},
            "with",
            "payload and json cannot be used together",
        ),
        ({"with": {"host": HOST, "topic": "t"}, "expect": {"topic": 1}}, "expect.topic", "not"),
    ],
)
def test_bad_parameters_are_refused_on_save_naming_step_and_field(step, path, message):
    definition = {"steps": [{"name": "publish event", "plugin": "mqtt", **step}]}
    with pytest.raises(ValidationError) as raised:
        scenario_save(name=f"mqtt-{uuid.uuid4().hex}", definition=definition)
    problems = raised.value.message_dict["definition"]
    assert any(
        problem.startswith(f"steps[0] (publish event): {path}:") and message in problem
        for problem in problems
    ), problems


def test_a_subscribe_stops_promptly_when_the_run_must_stop(prefix):
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(PluginError, match="no message arrived"):
        plugin.execute({"host": HOST, "topic": f"{prefix}/x"}, context(timeout=30, stop=stop))
    assert time.monotonic() - started < 3
