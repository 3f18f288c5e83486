from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import amqp
from django.conf import settings
from kombu import Connection

from plugins.base import Assertion, PluginError, PluginResult, ProtocolPlugin, StepContext
from plugins.messages import COUNT_SCHEMA, check_messages, first_message, message_result, parse_body
from plugins.outbound import IPAddress, OutboundRefused, broker_urls, service_entries
from plugins.pushback import url_rate_target
from plugins.resources import AWAIT_SCHEMA, Listener, message_matches

logger = logging.getLogger(__name__)

SCHEMES = {"amqp": 5672, "amqps": 5671}
#: What a stored message shows besides its body.
MESSAGE_KEYS = ("exchange", "routing_key", "headers", "properties")
#: Unacknowledged messages a consuming step holds at once (those not matching included).
PREFETCH = 1000
PROPERTIES = {
    "content_type": {"type": "string"},
    "content_encoding": {"type": "string"},
    "correlation_id": {"type": "string"},
    "message_id": {"type": "string"},
    "reply_to": {"type": "string"},
    "expiration": {"type": "string", "pattern": "^[0-9]+$"},
    "priority": {"type": "integer", "minimum": 0, "maximum": 255},
    "type": {"type": "string"},
    "app_id": {"type": "string"},
    "user_id": {"type": "string"},
    "timestamp": {"type": "integer", "minimum": 0},
}
_URL = {"type": "string", "pattern": "^amqps?://", "minLength": 8}
_NAME = {"type": "string", "maxLength": 255}
_MATCH = {"type": "object"}

PUBLISH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": {
        "url": _URL,
        "exchange": {**_NAME, "default": ""},
        "routing_key": {**_NAME, "default": ""},
        "json": {},
        "body": {"type": "string"},
        "headers": {"type": "object"},
        "properties": {
            "type": "object",
            "additionalProperties": False,
            "properties": PROPERTIES,
        },
        "persistent": {"type": "boolean", "default": True},
        "declare": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "queue": {**_NAME, "minLength": 1},
                "exchange": {**_NAME, "minLength": 1},
                "exchange_type": {"enum": ["direct", "fanout", "topic", "headers"]},
                "passive": {"type": "boolean", "default": True},
            },
        },
    },
    "not": {"required": ["json", "body"]},
}
CONSUME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["url", "queue"],
    "additionalProperties": False,
    "properties": {
        "url": _URL,
        "queue": {**_NAME, "minLength": 1},
        "count": {**COUNT_SCHEMA, "minimum": 1, "default": 1},
        "match": _MATCH,
    },
}
LISTEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": {
        "url": _URL,
        "queue": {**_NAME, "minLength": 1},
        "exchange": {**_NAME, "minLength": 1},
        "routing_key": {**_NAME, "default": "#"},
    },
    # A queue of its own, or a new one bound to an exchange: one or the other.
    "if": {"not": {"required": ["queue"]}},
    "then": {"required": ["exchange"]},
    "allOf": [
        {"not": {"required": ["queue", "exchange"]}},
        {"not": {"required": ["queue", "routing_key"]}},
    ],
}


@dataclass(frozen=True)
class BrokerUrl:
    """An ``amqp://user:password@host:port/vhost`` URL, parsed as kombu reads it."""

    scheme: str
    host: str
    port: int
    userid: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, text: str) -> BrokerUrl:
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise PluginError(f"invalid AMQP URL: {exc}") from None
        scheme = "amqp" if parts.scheme == "pyamqp" else parts.scheme
        if scheme not in SCHEMES or not parts.hostname:
            raise PluginError("invalid AMQP URL: it needs amqp:// or amqps:// and a host")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            scheme=scheme,
            host=parts.hostname,
            port=port or SCHEMES[scheme],
            userid=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            vhost=unquote(path) or "/",
        )

    def masked(self) -> str:
        """The URL without its password, for summaries and messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = quote(self.userid, safe="")
        return f"{self.scheme}://{user}:***@{host}:{self.port}/{quote(self.vhost, safe='')}"


@lru_cache(maxsize=4)
def _own_brokers(urls: tuple[str, ...]) -> list[tuple[str, list]]:
    """Orchestra's own vhosts, each with the outbound entries of its broker's host:port."""
    own = []
    for url in urls:
        try:
            vhost = BrokerUrl.parse(url).vhost
        except PluginError:
            continue  # not AMQP: no vhost of ours to protect
        own.append((vhost, service_entries(url, SCHEMES["amqp"], "the message broker")))
    return own


def refuse_own_vhost(url: BrokerUrl, addresses: list[IPAddress]) -> None:
    """Refuse orchestra's own vhost on its own broker, even where the broker's address is open
    (a test environment that opened the broker still keeps its task queues out of reach)."""
    if settings.ORCHESTRA_AMQP_ALLOW_OWN_VHOST:
        return
    name = url.host.lower().rstrip(".")
    for vhost, entries in _own_brokers(tuple(broker_urls())):
        if vhost == url.vhost and any(e.matches(name, url.port, addresses) for e in entries):
            raise OutboundRefused(
                f"connection to {url.host}:{url.port} vhost {url.vhost!r} refused: it is "
                "orchestra's own vhost; ORCHESTRA_AMQP_ALLOW_OWN_VHOST=true allows it"
            )


def amqp_error(exc: Exception, what: str) -> PluginError:
    """A PluginError for a failure of ``what``: retryable unless the broker said it is final."""
    if isinstance(exc, PluginError):
        return exc
    if isinstance(exc, TimeoutError):
        return PluginError(f"{what} timed out", retryable=True)
    retryable = not isinstance(
        exc,
        (amqp.exceptions.IrrecoverableConnectionError, amqp.exceptions.IrrecoverableChannelError),
    )
    return PluginError(f"{what} failed: {exc or type(exc).__name__}", retryable=retryable)


def connect(url: BrokerUrl, context: StepContext, *, confirm: bool = False) -> Connection:
    """A connection to one of the addresses the outbound policy returned for ``url``."""
    addresses = context.check_outbound(url.host, url.port)
    refuse_own_vhost(url, addresses)
    failure: Exception | None = None
    for address in addresses:
        remaining = context.remaining()
        if remaining <= 0:
            break
        connection = Connection(
            hostname=f"[{address}]" if address.version == 6 else str(address),
            port=url.port,
            userid=url.userid,
            password=url.password,
            virtual_host=url.vhost,
            transport="pyamqp",
            # The host name, not the address, is what the certificate names.
            ssl={"server_hostname": url.host, "cert_reqs": ssl.CERT_REQUIRED}
            if url.scheme == "amqps"
            else False,
            connect_timeout=remaining,
            heartbeat=0,
            transport_options={"confirm_publish": confirm},
        )
        try:
            # No retries of kombu's own: the step's retry policy decides.
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        except Exception as exc:
            connection.release()
            failure = exc
            if isinstance(exc, OSError):
                continue  # the next address may answer
            break
        return connection
    if failure is None:
        raise PluginError(f"connecting to {url.masked()} timed out", retryable=True)
    raise amqp_error(failure, f"connecting to {url.masked()}")


def _message(raw: amqp.Message) -> dict[str, Any]:
    properties = dict(raw.properties)
    headers = properties.pop("application_headers", None) or {}
    data, body = parse_body(
        raw.body if isinstance(raw.body, bytes) else raw.body.encode(),
        properties.get("content_type") or "",
    )
    return {
        "data": data,
        "body": body,
        "exchange": raw.delivery_info.get("exchange", ""),
        "routing_key": raw.delivery_info.get("routing_key", ""),
        "headers": _plain(headers),
        "properties": _plain(properties),
    }


def _plain(value: Any) -> Any:
    """A header or property value as JSON can store it (AMQP has timestamps, bytes, decimals)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, bytes):
        return parse_body(value)[1]
    return str(value)


class AmqpListener(Listener):
    """A consumer on its own connection and thread, delivering every message it gets."""

    def __init__(self, connection: Connection, channel: Any, queue: str) -> None:
        super().__init__()
        self.queue = queue
        self._connection = connection
        self._channel = channel
        self._closing = threading.Event()
        channel.basic_qos(0, PREFETCH, False)
        self._tag = channel.basic_consume(queue, callback=self._on_message)
        self._thread = threading.Thread(
            target=self._drain, name=f"amqp-listen-{queue}", daemon=True
        )
        self._thread.start()

    def _on_message(self, raw: amqp.Message) -> None:
        self.deliver(_message(raw))
        # Taken once kept here: the listener holds it for the steps that await it.
        self._channel.basic_ack(raw.delivery_info["delivery_tag"])

    def _drain(self) -> None:
        try:
            while not self._closing.is_set():
                try:
                    self._connection.drain_events(timeout=0.1)
                except TimeoutError:
                    continue
        except Exception:  # the broker went away: what arrived stays readable
            if not self._closing.is_set():
                logger.warning("AMQP listener on %s stopped", self.queue, exc_info=True)
        finally:
            # The connection is closed next anyway; a failed cancel changes nothing.
            with contextlib.suppress(Exception):
                self._channel.basic_cancel(self._tag)
            self._connection.release()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)


class AmqpPlugin(ProtocolPlugin):
    """Publishes to or consumes from RabbitMQ (any AMQP 0-9-1 broker) with kombu.

    ``with`` publishes (``url``, ``exchange``, ``routing_key``, ``json`` or ``body``,
    ``headers``, ``properties``, ``persistent``, ``declare``), consumes (``url``, ``queue``,
    ``count``, ``match``) or awaits a listener (``await``, ``count``, ``match``).
    ``expect``: ``count``, ``json`` (JSONPath over the list of bodies), ``headers`` (of the
    first message). ``listen``: ``url`` and ``queue``, or ``exchange`` and ``routing_key``.
    """

    name = "amqp"
    params_schema = {
        "type": "object",
        "if": {"required": ["await"]},
        "then": AWAIT_SCHEMA,
        "else": {"if": {"required": ["queue"]}, "then": CONSUME_SCHEMA, "else": PUBLISH_SCHEMA},
    }
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "count": COUNT_SCHEMA,
            "json": {"type": "object"},
            "headers": {"type": "object"},
        },
    }
    listen_schema = LISTEN_SCHEMA
    example = {
        "name": "the order event arrives",
        "plugin": "amqp",
        "with": {
            "url": "{{ credentials.EVENTS_AMQP }}",
            "queue": "order-events",
            "match": {"$.order_id": "{{ payload.order_id }}"},
        },
        "expect": {"count": 1, "json": {"$[0].status": "created"}},
        "timeout": 10,
    }

    def rate_target(self, params: dict[str, Any]) -> str | None:
        return url_rate_target(params["url"]) if "url" in params else None

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        if "await" in params:
            listener = context.resources.get(params["await"], AmqpListener)
            count = params.get("count", 1)
            messages = listener.wait(count=count, match=params.get("match", {}), context=context)
            request = {"await": params["await"], "queue": listener.queue, "count": count}
            return message_result(messages, keys=MESSAGE_KEYS, request=request)
        url = BrokerUrl.parse(params["url"])
        if "queue" in params:
            return self._consume(url, params, context)
        return self._publish(url, params, context)

    def _publish(
        self, url: BrokerUrl, params: dict[str, Any], context: StepContext
    ) -> PluginResult:
        if "json" in params:
            try:
                content = json.dumps(params["json"], ensure_ascii=False, allow_nan=False).encode()
            except ValueError as exc:
                raise PluginError(f"json cannot be sent: {exc}") from None
            content_type = "application/json"
        else:
            content, content_type = params.get("body", "").encode(), "text/plain"
        properties = {"content_type": content_type, "content_encoding": "utf-8"}
        properties |= params.get("properties", {})
        exchange, routing_key = params.get("exchange", ""), params.get("routing_key", "")
        request = {
            "url": url.masked(),
            "exchange": exchange,
            "routing_key": routing_key,
            "headers": params.get("headers", {}),
            "properties": properties,
            "body": parse_body(content, properties["content_type"])[1],
        }
        returned: list[str] = []
        connection = connect(url, context, confirm=True)
        try:
            channel = connection.channel()
            if "declare" in params:
                _declare(channel, params["declare"], routing_key)
            channel.events["basic_return"].add(
                lambda exc, *args: returned.append(str(exc))  # an unroutable message
            )
            message = amqp.Message(
                content,
                application_headers=params.get("headers") or None,
                delivery_mode=2 if params.get("persistent", True) else 1,
                **properties,
            )
            remaining = context.remaining()
            if remaining <= 0:
                raise PluginError(f"publishing to {url.masked()} timed out", retryable=True)
            # Publisher confirms: this returns once the broker took the message.
            channel.basic_publish(
                message,
                exchange=exchange,
                routing_key=routing_key,
                mandatory=True,
                timeout=remaining,
            )
        except amqp.exceptions.MessageNacked:
            raise PluginError(
                f"the broker refused the message ({url.masked()})", retryable=True
            ) from None
        except Exception as exc:
            raise amqp_error(exc, f"publishing to {url.masked()}") from None
        finally:
            connection.release()
        if returned:
            raise PluginError(
                f"no queue is bound to exchange {exchange!r} with routing key {routing_key!r}: "
                f"{returned[0]}",
                retryable=True,
            )
        return PluginResult(
            data={"published": True},
            fields={"size": len(content)},
            request=request,
            response={"confirmed": True},
        )

    def _consume(
        self, url: BrokerUrl, params: dict[str, Any], context: StepContext
    ) -> PluginResult:
        count, match = params.get("count", 1), params.get("match", {})
        queue = params["queue"]
        request = {"url": url.masked(), "queue": queue, "count": count, "match": match}
        received: list[tuple[amqp.Message, dict[str, Any]]] = []
        matched: list[tuple[amqp.Message, dict[str, Any]]] = []
        done = threading.Event()

        def on_message(raw: amqp.Message) -> None:
            if done.is_set():
                return  # arrived while cancelling: unacked, the broker requeues it at close
            message = _message(raw)
            received.append((raw, message))
            if len(matched) < count and message_matches(match, message["data"]):
                matched.append((raw, message))

        connection = connect(url, context)
        try:
            channel = connection.channel()
            channel.basic_qos(0, PREFETCH, False)
            tag = channel.basic_consume(queue, callback=on_message)
            while len(matched) < count and context.remaining() > 0 and not context.stop.is_set():
                try:
                    connection.drain_events(timeout=min(context.remaining(), 0.1))
                except TimeoutError:
                    continue
            done.set()
            channel.basic_cancel(tag)
            # Only a full set is taken: after a shortfall a retry sees the same messages again.
            # The rest stay unacknowledged, and the broker requeues them when the channel closes.
            if len(matched) == count:
                for raw, _ in matched:
                    channel.basic_ack(raw.delivery_info["delivery_tag"])
        except Exception as exc:
            raise amqp_error(exc, f"consuming from queue {queue!r} at {url.masked()}") from None
        finally:
            connection.release()
        if not received:
            raise PluginError(f"no message arrived on queue {queue!r} in time", retryable=True)
        if len(matched) == count:
            return message_result([m for _, m in matched], keys=MESSAGE_KEYS, request=request)
        # Messages arrived but too few matched: the system under test sent the wrong ones, a
        # failed expectation (check_messages), shown with what did arrive.
        result = message_result(
            [m for _, m in received],
            keys=MESSAGE_KEYS,
            request=request,
            wanted=count,
            received=len(received),
        )
        result.fields["count"] = len(matched)
        return result

    def listen(self, params: dict[str, Any], context: StepContext) -> AmqpListener:
        url = BrokerUrl.parse(params["url"])
        connection = connect(url, context)
        try:
            channel = connection.channel()
            if "queue" in params:
                queue = params["queue"]
                channel.queue_declare(queue, passive=True)
            else:
                channel.exchange_declare(params["exchange"], "topic", passive=True)
                # Exclusive and auto-delete: the queue goes with the listener's connection.
                queue, _, _ = channel.queue_declare("", exclusive=True, auto_delete=True)
                channel.queue_bind(queue, params["exchange"], params.get("routing_key", "#"))
            return AmqpListener(connection, channel, queue)
        except Exception as exc:
            connection.release()
            raise amqp_error(exc, f"listening at {url.masked()}") from None

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        assertions = check_messages(expect, result)
        first = first_message(result)
        for name, expected in expect.get("headers", {}).items():
            actual = (first or {}).get("headers", {}).get(name)
            passed = first is not None and actual == expected
            message = "" if passed else f"header {name} is {actual!r}, expected {expected!r}"
            assertions.append(Assertion(f"header {name}", passed, expected, actual, message))
        return assertions


def _declare(channel: Any, declare: dict[str, Any], routing_key: str) -> None:
    """Check (passive, the default) or create the exchange and queue a publish needs."""
    passive = declare.get("passive", True)
    exchange = declare.get("exchange")
    if exchange:
        channel.exchange_declare(
            exchange,
            declare.get("exchange_type", "direct"),
            passive=passive,
            durable=True,
            auto_delete=False,
        )
    if queue := declare.get("queue"):
        channel.queue_declare(queue, passive=passive, durable=True, auto_delete=False)
        if exchange and not passive:
            channel.queue_bind(queue, exchange, routing_key)
