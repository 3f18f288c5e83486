"""Broker passwords never reach storage: a real worker run publishes and consumes with an AMQP
URL and an MQTT password that come from ORCHESTRA_CREDENTIAL_* variables of the worker."""

from __future__ import annotations

import subprocess
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from runs.services import run_start
from tests.factories import make_scenario
from tests.integration.test_secrets import every_row_as_text, finished

pytestmark = [pytest.mark.integration]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=True)


@pytest.fixture
def broker_user():
    """A vhost and a user of this test's own; the password is the canary."""
    vhost = f"orchestra_secret_{uuid.uuid4().hex[:10]}"
    user = f"canary-{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("add_user", user, password)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    yield vhost, user, password
    rabbitmqctl("delete_user", user)
    rabbitmqctl("delete_vhost", vhost)


def test_amqp_url_and_mqtt_password_from_credentials_leave_no_trace(
    live_db, worker_factory, broker_user
):
    vhost, user, password = broker_user
    amqp_url = f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"
    mqtt_password = f"mqtt-{uuid.uuid4().hex}"
    topic = f"orchestra-test/{uuid.uuid4().hex}/retained"
    worker = worker_factory(
        "brokers",
        env={
            "ORCHESTRA_CREDENTIAL_AMQP_URL": amqp_url,
            "ORCHESTRA_CREDENTIAL_MQTT_PASSWORD": mqtt_password,
            "ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE": "127.0.0.1:5672",
        },
    )
    url = "{{ credentials.AMQP_URL }}"
    scenario = make_scenario(
        [
            {
                "name": "mqtt publish",
                "plugin": "mqtt",
                "with": {
                    "host": "127.0.0.1",
                    "topic": topic,
                    "json": {"id": 1},
                    "qos": 1,
                    "retain": True,
                    "username": "orchestra",
                    "password": "{{ credentials.MQTT_PASSWORD }}",
                },
            },
            {
                "name": "amqp publish",
                "plugin": "amqp",
                "with": {
                    "url": url,
                    "routing_key": "orders",
                    "json": {"order": 1},
                    "declare": {"queue": "orders", "passive": False},
                },
            },
            {
                # Fails on purpose: its error and assertions are stored too.
                "name": "amqp consume",
                "plugin": "amqp",
                "with": {"url": url, "queue": "orders"},
                "expect": {"json": {"$[0].order": 2}},
            },
        ]
    )

    run = finished(run_start(scenario=scenario).id)
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)  # clear the retained one
    client.disconnect()
    client.loop_stop()

    steps = list(run.steps.order_by("position"))
    assert [s.status for s in steps] == ["PASSED", "PASSED", "FAILED"], [s.error for s in steps]
    assert steps[2].response["messages"][0]["body"] == '{"order": 1}'
    assert ":***@" in steps[1].request["url"]
    stored = every_row_as_text()
    log = worker.log.read_text()
    for secret in (password, amqp_url, mqtt_password):
        assert secret not in stored
        assert secret not in log
