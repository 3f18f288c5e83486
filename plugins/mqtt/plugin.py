from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from plugins.base import Assertion, PluginError, PluginResult, ProtocolPlugin, StepContext
from plugins.messages import COUNT_SCHEMA, check_messages, message_result, parse_body
from plugins.pushback import host_rate_target
from plugins.resources import AWAIT_SCHEMA, Listener, message_matches

#: What a stored message shows besides its body.
MESSAGE_KEYS = ("topic", "qos", "retain")
#: CONNACK reasons that may pass: the broker is unavailable or busy, or over its quota.
RETRYABLE_REFUSALS = {136, 137, 151}

_CONNECTION = {
    "host": {"type": "string", "minLength": 1, "maxLength": 253},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 1883},
    "username": {"type": "string"},
    "password": {"type": "string"},
    "client_id": {"type": "string", "minLength": 1, "maxLength": 200},
    "qos": {"enum": [0, 1, 2], "default": 0},
}
_FILTER = {"type": "string", "minLength": 1, "maxLength": 65535}
PUBLISH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["host", "topic"],
    "additionalProperties": False,
    "properties": {
        **_CONNECTION,
        # A topic name, not a filter: no wildcards.
        "topic": {**_FILTER, "pattern": "^[^#+]*$"},
        "payload": {"type": "string"},
        "json": {},
        "retain": {"type": "boolean", "default": False},
    },
    "not": {"required": ["payload", "json"]},
}
LISTEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["host", "topic"],
    "additionalProperties": False,
    "properties": {**_CONNECTION, "topic": _FILTER},
}
SUBSCRIBE_SCHEMA: dict[str, Any] = {
    **LISTEN_SCHEMA,
    "properties": {
        **LISTEN_SCHEMA["properties"],
        "count": {**COUNT_SCHEMA, "minimum": 1, "default": 1},
        "match": {"type": "object"},
    },
}


def _message(raw: mqtt.MQTTMessage) -> dict[str, Any]:
    data, body = parse_body(raw.payload)
    return {"data": data, "body": body, "topic": raw.topic, "qos": raw.qos, "retain": raw.retain}


def _loop_until(
    client: mqtt.Client, done: Callable[[], bool], context: StepContext, what: str
) -> None:
    """Run the client's network loop in this thread until ``done()``, the deadline or a stop."""
    while not done():
        remaining = context.remaining()
        if remaining <= 0 or context.stop.is_set():
            raise PluginError(f"{what} timed out", retryable=True)
        code = client.loop(timeout=min(remaining, 0.05))
        if code != mqtt.MQTT_ERR_SUCCESS and not done():
            raise PluginError(
                f"{what} failed: connection lost ({mqtt.error_string(code)})", retryable=True
            )


def _close(client: mqtt.Client) -> None:
    # Without a loop thread, disconnect() writes DISCONNECT and closes the socket at once.
    with contextlib.suppress(Exception):
        client.disconnect()


def connect(params: dict[str, Any], context: StepContext) -> mqtt.Client:
    """A client connected (CONNACK received) to an address the outbound policy returned."""
    host, port = params["host"], params.get("port", 1883)
    where = f"mqtt://{host}:{port}"
    addresses = context.check_outbound(host, port)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=params.get("client_id") or f"orchestra-{uuid.uuid4().hex[:16]}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if "username" in params:
        client.username_pw_set(params["username"], params.get("password"))
    answer: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _flags, reason, _props: answer.append(reason)
    failure: Exception | None = None
    sent = False  # CONNECT written: the broker's CONNACK is awaited below
    for address in addresses:
        remaining = context.remaining()
        if remaining <= 0:
            break
        client.connect_timeout = remaining
        try:
            client.connect(str(address), port, keepalive=60)
        except (OSError, ValueError) as exc:
            failure = exc
            continue
        sent = True
        break
    if not sent:
        detail = f": {failure}" if failure else " timed out"
        raise PluginError(f"connecting to {where} failed{detail}", retryable=True)
    try:
        _loop_until(client, lambda: bool(answer), context, f"connecting to {where}")
    except PluginError:
        _close(client)
        raise
    if answer[0].is_failure:
        _close(client)
        raise PluginError(
            f"{where} refused the connection: {answer[0]}",
            retryable=answer[0].value in RETRYABLE_REFUSALS,
        )
    return client


def subscribe(client: mqtt.Client, params: dict[str, Any], context: StepContext) -> None:
    """Subscribe to ``params['topic']`` and wait for the SUBACK that confirms it."""
    granted: list[list[ReasonCode]] = []
    client.on_subscribe = lambda _c, _u, _mid, reasons, _props: granted.append(reasons)
    code, _ = client.subscribe(params["topic"], qos=params.get("qos", 0))
    if code != mqtt.MQTT_ERR_SUCCESS:
        raise PluginError(f"subscribing failed: {mqtt.error_string(code)}", retryable=True)
    _loop_until(client, lambda: bool(granted), context, f"subscribing to {params['topic']!r}")
    if any(reason.is_failure for reason in granted[0]):
        raise PluginError(f"the broker refused the subscription to {params['topic']!r}")


class MqttListener(Listener):
    """A subscription on its own client, whose network thread delivers every message."""

    def __init__(self, client: mqtt.Client, topic: str, qos: int) -> None:
        super().__init__()
        self.client = client
        self.topic = topic
        # Set before subscribing: a retained message may arrive right after the SUBACK.
        client.on_message = lambda _c, _u, raw: self.deliver(_message(raw))
        # paho's thread reconnects after a lost connection, to a clean session: subscribe again.
        client.on_connect = lambda _c, _u, _f, reason, _p: (
            None if reason.is_failure else client.subscribe(topic, qos=qos)
        )

    def start(self) -> None:
        """Hand the client to paho's network thread, once the subscription is confirmed."""
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class MqttPlugin(ProtocolPlugin):
    """Publishes to or subscribes on an MQTT 3.1.1 broker with paho-mqtt.

    ``with`` publishes (``host``, ``port``, ``topic``, ``payload`` or ``json``, ``qos``,
    ``retain``, ``username``/``password``, ``client_id``), subscribes (the same connection
    fields, ``topic`` as a filter, ``count``, ``match``) or awaits a listener (``await``).
    ``expect``: ``count``, ``json`` (JSONPath over the payloads), ``topic`` (of the first
    message, or a list: of each). ``listen``: the connection fields and ``topic``.
    """

    name = "mqtt"
    params_schema = {
        "type": "object",
        "if": {"required": ["await"]},
        "then": AWAIT_SCHEMA,
        "else": {
            "if": {"anyOf": [{"required": ["payload"]}, {"required": ["json"]}]},
            "then": PUBLISH_SCHEMA,
            "else": SUBSCRIBE_SCHEMA,
        },
    }
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "count": COUNT_SCHEMA,
            "json": {"type": "object"},
            "topic": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
            },
        },
    }
    listen_schema = LISTEN_SCHEMA
    example = {
        "name": "switch the lamp on",
        "plugin": "mqtt",
        "with": {"host": "broker.test", "topic": "home/lamp/set", "json": {"on": True}, "qos": 1},
    }

    def rate_target(self, params: dict[str, Any]) -> str | None:
        # An await step reads from a listener subscribed (and paced) before; it sends nothing.
        if "host" not in params:
            return None
        return host_rate_target("mqtt", params["host"], params.get("port", 1883))

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        if "await" in params:
            listener = context.resources.get(params["await"], MqttListener)
            count = params.get("count", 1)
            messages = listener.wait(count=count, match=params.get("match", {}), context=context)
            request = {"await": params["await"], "topic": listener.topic, "count": count}
            return message_result(messages, keys=MESSAGE_KEYS, request=request)
        if "payload" in params or "json" in params:
            return self._publish(params, context)
        return self._subscribe(params, context)

    def _publish(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        if "json" in params:
            try:
                payload = json.dumps(params["json"], ensure_ascii=False, allow_nan=False).encode()
            except ValueError as exc:
                raise PluginError(f"json cannot be sent: {exc}") from None
        else:
            payload = params["payload"].encode()
        qos, topic = params.get("qos", 0), params["topic"]
        request = {
            "host": params["host"],
            "port": params.get("port", 1883),
            "topic": topic,
            "qos": qos,
            "retain": params.get("retain", False),
            "body": parse_body(payload)[1],
        }
        client = connect(params, context)
        try:
            info = client.publish(topic, payload, qos=qos, retain=params.get("retain", False))
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise PluginError(
                    f"publishing to {topic!r} failed: {mqtt.error_string(info.rc)}",
                    retryable=True,
                )
            # QoS 1 and 2 end with the broker's PUBACK / PUBCOMP; QoS 0 once it is sent.
            _loop_until(client, info.is_published, context, f"publishing to {topic!r}")
        finally:
            _close(client)
        return PluginResult(
            data={"published": True},
            fields={"size": len(payload), "mid": info.mid},
            request=request,
            response={"acknowledged": qos > 0, "mid": info.mid},
        )

    def _subscribe(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        count, match = params.get("count", 1), params.get("match", {})
        request = {
            "host": params["host"],
            "port": params.get("port", 1883),
            "topic": params["topic"],
            "count": count,
            "match": match,
        }
        received: list[dict[str, Any]] = []
        matched: list[dict[str, Any]] = []

        def on_message(_client: Any, _userdata: Any, raw: mqtt.MQTTMessage) -> None:
            message = _message(raw)
            received.append(message)
            if len(matched) < count and message_matches(match, message["data"]):
                matched.append(message)

        client = connect(params, context)
        client.on_message = on_message
        try:
            subscribe(client, params, context)
            with contextlib.suppress(PluginError):  # the deadline: judged by what arrived
                _loop_until(
                    client,
                    lambda: len(matched) >= count,
                    context,
                    f"waiting on {params['topic']!r}",
                )
        finally:
            _close(client)
        if not received:
            raise PluginError(f"no message arrived on {params['topic']!r} in time", retryable=True)
        if len(matched) == count:
            return message_result(matched, keys=MESSAGE_KEYS, request=request)
        # Messages arrived but too few matched: a failed expectation (check_messages).
        result = message_result(
            received, keys=MESSAGE_KEYS, request=request, wanted=count, received=len(received)
        )
        result.fields["count"] = len(matched)
        return result

    def listen(self, params: dict[str, Any], context: StepContext) -> MqttListener:
        client = connect(params, context)
        listener = MqttListener(client, params["topic"], params.get("qos", 0))
        try:
            subscribe(client, params, context)
        except PluginError:
            _close(client)
            raise
        listener.start()
        return listener

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        assertions = check_messages(expect, result)
        if "topic" in expect:
            topics = [message["topic"] for message in result.fields.get("messages", [])]
            expected = expect["topic"]
            actual: Any = topics if isinstance(expected, list) else (topics or [None])[0]
            passed = actual == expected
            message = "" if passed else f"topic is {actual!r}, expected {expected!r}"
            assertions.append(Assertion("topic", passed, expected, actual, message))
        return assertions
