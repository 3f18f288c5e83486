"""The amqp plugin against the real RabbitMQ, in a vhost of this module's own."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from jsonschema import Draft202012Validator
from kombu import Connection, Exchange, Producer, Queue

from plugins.amqp import AmqpPlugin
from plugins.base import PluginError, StepContext
from plugins.outbound import OutboundRefused
from runs.services import scenario_save
from tests.support import wait_for

pytestmark = [pytest.mark.integration]

plugin = AmqpPlugin()
BROKER = "127.0.0.1:5672"


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def vhost():
    name = f"orchestra_amqp_{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    rabbitmqctl("delete_vhost", name)


@pytest.fixture(autouse=True)
def open_broker(settings):
    """The broker address is infrastructure: opened here, as in a test environment."""
    settings.ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE = [BROKER]


@pytest.fixture
def url(vhost) -> str:
    return f"amqp://guest:guest@{BROKER}/{vhost}"


@pytest.fixture
def queue(url):
    """A fresh durable queue (and a topic exchange bound to it by ``orders.#``)."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    exchange = Exchange(f"x-{name}", type="topic", durable=True)
    with Connection(url) as connection:
        Queue(name, exchange, routing_key="orders.#", durable=True)(connection).declare()
    yield name
    with Connection(url) as connection:
        connection.default_channel.queue_delete(name)
        connection.default_channel.exchange_delete(exchange.name)


def context(timeout: float = 5, **kwargs) -> StepContext:
    return StepContext(run_id=1, step_name="amqp step", timeout=timeout, **kwargs)


def publish_directly(url: str, exchange: str, routing_key: str, body: dict, **headers) -> None:
    with Connection(url) as connection:
        Producer(connection.default_channel).publish(
            body, exchange=exchange, routing_key=routing_key, serializer="json", headers=headers
        )


def test_publish_is_confirmed_and_the_message_is_really_on_the_queue(url, queue):
    result = plugin.execute(
        {
            "url": url,
            "routing_key": queue,
            "json": {"order_id": 7},
            "headers": {"x-tenant": "acme"},
            "properties": {"correlation_id": "c-1", "message_id": "m-1", "timestamp": 1700000000},
            "declare": {"queue": queue},
        },
        context(),
    )

    assert result.response == {"confirmed": True}
    assert result.request["url"] == f"amqp://guest:***@{BROKER}/{url.rsplit('/', 1)[1]}"
    with Connection(url) as connection:
        message = connection.SimpleQueue(queue, no_ack=True).get(timeout=5)
    assert json.loads(message.body) == {"order_id": 7}
    assert message.headers == {"x-tenant": "acme"}
    assert message.properties["correlation_id"] == "c-1"
    assert message.properties["delivery_mode"] == 2  # persistent by default
    assert message.properties["timestamp"] == 1700000000
    assert message.content_type == "application/json"


def test_a_publish_nobody_can_receive_is_a_retryable_error(url):
    with pytest.raises(PluginError, match="no queue is bound") as raised:
        plugin.execute({"url": url, "routing_key": f"nowhere-{uuid.uuid4().hex}"}, context())
    assert raised.value.retryable


def test_a_passive_declare_of_a_missing_queue_is_a_permanent_error(url):
    with pytest.raises(PluginError, match="NOT_FOUND") as raised:
        plugin.execute(
            {"url": url, "routing_key": "x", "body": "hi", "declare": {"queue": "missing-q"}},
            context(),
        )
    assert not raised.value.retryable


def test_consume_takes_the_matching_messages_and_leaves_the_others(url, queue):
    publish_directly(url, f"x-{queue}", "orders.created", {"order_id": 1}, kind="a")
    publish_directly(url, f"x-{queue}", "orders.created", {"order_id": 2}, kind="b")

    result = plugin.execute({"url": url, "queue": queue, "match": {"$.order_id": 2}}, context())
    assertions = plugin.check(
        {"count": 1, "json": {"$[0].order_id": 2}, "headers": {"kind": "b"}}, result
    )

    assert all(a.passed for a in assertions), assertions
    assert result.data == [{"order_id": 2}]
    assert result.response["messages"][0]["routing_key"] == "orders.created"
    with Connection(url) as connection:
        left = connection.SimpleQueue(queue, no_ack=True).get(timeout=5)
        assert json.loads(left.body) == {"order_id": 1}  # not taken: requeued


def test_consume_fails_when_the_messages_that_arrive_do_not_match(url, queue):
    publish_directly(url, f"x-{queue}", "orders.created", {"order_id": 1})

    result = plugin.execute(
        {"url": url, "queue": queue, "match": {"$.order_id": 99}}, context(timeout=1)
    )
    assertions = plugin.check({}, result)

    assert [(a.name, a.passed) for a in assertions] == [("match", False)]
    assert "0 of 1 messages matched (1 received)" in assertions[0].message
    assert result.data == [{"order_id": 1}]  # what did arrive, to read in the report
    with Connection(url) as connection:  # nothing taken: a retry sees it again
        assert connection.SimpleQueue(queue, no_ack=True).get(timeout=5) is not None


def test_a_failed_expectation_on_a_consumed_message(url, queue):
    publish_directly(url, f"x-{queue}", "orders.created", {"order_id": 1})

    result = plugin.execute({"url": url, "queue": queue}, context())
    (assertion,) = plugin.check({"json": {"$[0].order_id": 2}}, result)

    assert not assertion.passed and "is 1, expected 2" in assertion.message


def test_consume_with_nothing_arriving_is_a_retryable_error_at_the_deadline(url, queue):
    started = time.monotonic()
    with pytest.raises(PluginError, match="no message arrived") as raised:
        plugin.execute({"url": url, "queue": queue}, context(timeout=0.5))
    assert raised.value.retryable
    assert time.monotonic() - started < 2


def test_a_listener_catches_the_message_the_triggering_step_publishes(url, queue):
    step = context()
    listener = plugin.listen(
        {"url": url, "exchange": f"x-{queue}", "routing_key": "orders.*"}, step
    )
    step.resources.add("events", listener)
    try:
        plugin.execute(
            {"url": url, "exchange": f"x-{queue}", "routing_key": "orders.paid", "json": {"id": 5}},
            step,
        )
        result = plugin.execute(
            {"await": "events", "match": {"$.id": 5}}, context(resources=step.resources)
        )
    finally:
        step.resources.close_all()

    assert result.data == [{"id": 5}]
    assert result.response["messages"][0]["routing_key"] == "orders.paid"


def test_a_listener_keeps_a_message_published_between_two_steps(url, queue, vhost):
    resources = context().resources
    listener = plugin.listen({"url": url, "queue": queue}, context(resources=resources))
    resources.add("orders", listener)
    try:
        publish_directly(url, f"x-{queue}", "orders.created", {"order_id": 3})
        wait_for(lambda: listener._messages, timeout=5, message="the message to arrive")
        result = plugin.execute(
            {"await": "orders", "count": 1, "match": {"$.order_id": 3}},
            context(resources=resources),
        )
        assert result.data == [{"order_id": 3}]
        assert queue in rabbitmqctl("list_consumers", "-p", vhost)
    finally:
        resources.close_all()

    wait_for(
        lambda: queue not in rabbitmqctl("list_consumers", "-p", vhost),
        timeout=10,
        message="the consumer to be cancelled",
    )
    wait_for(
        lambda: vhost not in rabbitmqctl("list_connections", "vhost"),
        timeout=10,
        message="the listener's connection to close",
    )


def test_an_unreachable_broker_is_a_retryable_error(vhost, settings):
    settings.ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE = []
    with pytest.raises(
        PluginError, match="connecting to amqp://guest:\\*\\*\\*@127.0.0.1:9/"
    ) as raised:
        plugin.execute({"url": f"amqp://guest:guest@127.0.0.1:9/{vhost}", "queue": "q"}, context())
    assert raised.value.retryable


def test_the_brokers_address_stays_refused_unless_opened(url, settings):
    settings.ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE = []
    with pytest.raises(OutboundRefused, match="the message broker's address"):
        plugin.execute({"url": url, "queue": "q"}, context())


def test_orchestras_own_vhost_is_refused_even_with_the_broker_opened(settings):
    own = f"amqp://guest:guest@{BROKER}/{django_settings.TEST_BROKER_VHOST}"
    with pytest.raises(OutboundRefused, match="orchestra's own vhost"):
        plugin.execute({"url": own, "queue": "test_runs_queue"}, context())
    with pytest.raises(OutboundRefused, match="orchestra's own vhost"):
        plugin.listen({"url": own.replace("127.0.0.1", "localhost"), "queue": "q"}, context())

    settings.ORCHESTRA_AMQP_ALLOW_OWN_VHOST = True
    with pytest.raises(PluginError, match="NOT_FOUND") as raised:  # it got in: no such queue
        plugin.execute({"url": own, "queue": f"missing-{uuid.uuid4().hex}"}, context())
    assert not isinstance(raised.value, OutboundRefused)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("step", "path", "message"),
    [
        (
            {"with": {"url": "amqp://h/v", "routing_key": "k", "properties": {"priority": 999}}},
            "with.properties.priority",
            "999 is greater than the maximum of 255",
        ),
        ({"with": {"url": "amqp://h/v", "queue": "q", "count": 0}}, "with.count", "minimum"),
        ({"with": {"url": "http://h/v", "queue": "q"}}, "with.url", "does not match"),
        (
            {"with": {"url": "amqp://h/v", "json": {}, "body": "x"}},
            "with",
            "json and body cannot be used together",
        ),
        ({"with": {"await": "ev", "queue": "q"}}, "with.queue", "unexpected field"),
        ({"with": {"url": "amqp://h/v"}, "expect": {"count": "1"}}, "expect.count", "not of type"),
    ],
)
def test_bad_parameters_are_refused_on_save_naming_step_and_field(step, path, message):
    definition = {"steps": [{"name": "publish order", "plugin": "amqp", **step}]}
    with pytest.raises(ValidationError) as raised:
        scenario_save(name=f"amqp-{uuid.uuid4().hex}", definition=definition)
    problems = raised.value.message_dict["definition"]
    assert any(
        problem.startswith(f"steps[0] (publish order): {path}:") and message in problem
        for problem in problems
    ), problems


@pytest.mark.parametrize(
    "params",
    [
        {"url": "amqp://h/v"},
        {"url": "amqp://h/v", "queue": "q", "exchange": "x"},
        {"url": "amqp://h/v", "queue": "q", "routing_key": "k"},
        {"url": "amqp://h/v", "exchange": "x", "count": 1},
    ],
)
def test_a_listen_block_needs_a_queue_or_an_exchange(params):
    assert not Draft202012Validator(AmqpPlugin.listen_schema).is_valid(params)


def test_a_message_the_broker_nacks_is_a_retryable_error(url):
    name = f"full-{uuid.uuid4().hex[:8]}"
    with Connection(url) as connection:
        Queue(name, queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"})(
            connection
        ).declare()
    try:
        with pytest.raises(PluginError, match="the broker refused the message") as raised:
            plugin.execute({"url": url, "routing_key": name, "body": "x"}, context())
        assert raised.value.retryable
    finally:
        with Connection(url) as connection:
            connection.default_channel.queue_delete(name)


def test_a_consume_stops_promptly_when_the_run_must_stop(url, queue):
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(PluginError, match="no message arrived"):
        plugin.execute({"url": url, "queue": queue}, context(timeout=30, stop=stop))
    assert time.monotonic() - started < 3
