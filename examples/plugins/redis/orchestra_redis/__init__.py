"""A Redis protocol plugin for orchestra, written the way a third party writes one.

It is an ordinary package: it imports orchestra's plugin contract (``plugins.base``,
``plugins.resources``, ``plugins.bodies``) and nothing else of orchestra, and registers itself in
the ``orchestra.plugins`` entry-point group (see its ``pyproject.toml``). docs/plugins.md walks
through it.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from plugins.base import (
    Assertion,
    PluginError,
    PluginResult,
    ProtocolPlugin,
    StepContext,
    check_json_paths,
)
from plugins.bodies import binary_summary, summarize_text
from plugins.resources import AWAIT_SCHEMA, Listener

DEFAULT_PORT = 6379
#: The commands a step may send: enough to seed, read and signal, none that blocks or
#: reconfigures the server (no FLUSHALL, CONFIG, BLPOP, SUBSCRIBE...).
COMMANDS = (
    "GET",
    "SET",
    "DEL",
    "EXISTS",
    "INCR",
    "EXPIRE",
    "TTL",
    "LPUSH",
    "RPUSH",
    "LRANGE",
    "LLEN",
    "HSET",
    "HGET",
    "HGETALL",
    "PUBLISH",
)
_URL = {"type": "string", "pattern": "^redis://"}
_ARGUMENT = {"type": ["string", "number"]}
# How long the receiving thread blocks in one read: a closed listener stops within it.
_POLL_SECONDS = 0.1


class RedisListener(Listener):
    """A pub/sub subscription; a background thread delivers each message as it arrives."""

    def __init__(self, client: redis.Redis, pubsub: redis.client.PubSub, channel: str) -> None:
        super().__init__()
        self.client, self.pubsub, self.channel = client, pubsub, channel
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._receive, name=f"redis-listener-{channel}", daemon=True
        )
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                message = self.pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_POLL_SECONDS
                )
            except (redis.RedisError, OSError, ValueError):
                # The connection went away (or close() shut it): an await then times out
                # with the count of what did arrive.
                return
            if message is not None and message["type"] in ("message", "pmessage"):
                self.deliver(_message(message))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        try:
            self.pubsub.close()
        finally:
            self.client.close()


class RedisPlugin(ProtocolPlugin):
    """Sends one Redis command, or awaits the messages of a pub/sub listener.

    ``with``: ``url`` (``redis://[user:password@]host[:port][/db]``, a password from
    ``credentials``), ``command`` (GET, SET, LPUSH, PUBLISH, ...) and its ``args``; or
    ``await``/``count``/``match`` to wait for a listener's messages. ``expect``: ``value`` (the
    whole reply) and ``json`` (JSONPath over the reply, a JSON text reply parsed). A listener
    (``listen: {plugin: redis, with: {url, channel}}``) subscribes to one channel.
    """

    name = "redis"
    params_schema = {
        "oneOf": [
            {
                "type": "object",
                "required": ["url", "command"],
                "additionalProperties": False,
                "properties": {
                    "url": _URL,
                    "command": {"enum": list(COMMANDS)},
                    "args": {"type": "array", "items": _ARGUMENT, "maxItems": 1000},
                },
            },
            AWAIT_SCHEMA,
        ]
    }
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"value": {}, "json": {"type": "object"}},
    }
    listen_schema = {
        "type": "object",
        "required": ["url", "channel"],
        "additionalProperties": False,
        "properties": {"url": _URL, "channel": {"type": "string", "minLength": 1}},
    }
    example = {
        "name": "read the order",
        "plugin": "redis",
        "with": {"url": "redis://127.0.0.1:6379/0", "command": "GET", "args": ["order:1"]},
        "expect": {"json": {"$.state": "new"}},
    }

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        if "await" in params:
            return self._await(params, context)
        client, shown = _connect(params["url"], context)
        command, args = params["command"], params.get("args", [])
        try:
            reply = client.execute_command(command, *args)
        except redis.ResponseError as exc:  # WRONGTYPE, a wrong number of arguments: permanent
            raise PluginError(f"{command} on {shown}: {exc}") from None
        except (redis.TimeoutError, redis.ConnectionError) as exc:
            raise _unreachable(shown, exc) from None
        finally:
            client.close()
        value = _value(reply)
        return PluginResult(
            data=_parsed(value),
            fields={"command": command},
            request={"url": shown, "command": command, "args": [_stored(a) for a in args]},
            response={"value": _stored(value)},
        )

    def listen(self, params: dict[str, Any], context: StepContext) -> RedisListener:
        client, shown = _connect(params["url"], context)
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(params["channel"])
            # The subscription is in place once the server confirms it: only then may the
            # step that triggers the message run.
            confirmed = pubsub.get_message(timeout=context.remaining())
        except (redis.TimeoutError, redis.ConnectionError) as exc:
            pubsub.close()
            client.close()
            raise _unreachable(shown, exc) from None
        if confirmed is None or confirmed["type"] != "subscribe":
            pubsub.close()
            client.close()
            raise PluginError(f"{shown} did not confirm the subscription in time", retryable=True)
        return RedisListener(client, pubsub, params["channel"])

    def _await(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        listener = context.resources.get(params["await"], RedisListener)
        messages = listener.wait(
            count=params.get("count", 1), match=params.get("match", {}), context=context
        )
        return PluginResult(
            data=[message["data"] for message in messages],
            fields={"count": len(messages)},
            request={"await": params["await"], "channel": listener.channel},
            response={"messages": [{k: v for k, v in m.items() if k != "data"} for m in messages]},
        )

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        assertions = []
        if "value" in expect:
            expected, actual = expect["value"], result.data
            passed = actual == expected
            message = "" if passed else f"the reply is {actual!r}, expected {expected!r}"
            assertions.append(Assertion("value", passed, expected, actual, message))
        return assertions + check_json_paths(expect.get("json", {}), result.data)


def _connect(url: str, context: StepContext) -> tuple[redis.Redis, str]:
    """A client bound to the address the outbound policy returned, and the URL to show."""
    parts = urlsplit(url)
    host, shown = parts.hostname, _masked(url)
    try:
        port = parts.port or DEFAULT_PORT
        db = int(parts.path.lstrip("/") or 0)
    except ValueError:
        raise PluginError(f"{shown}: the port and database must be numbers") from None
    if not host:
        raise PluginError(f"{shown}: the URL needs a host")
    addresses = context.check_outbound(host, port)
    remaining = context.remaining()
    if remaining <= 0:
        raise PluginError(f"no time left to connect to {shown}", retryable=True)
    client = redis.Redis(
        host=str(addresses[0]),
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        # One timeout for connect and every read: the step's remaining time.
        socket_connect_timeout=remaining,
        socket_timeout=remaining,
        # No silent retries: they would outlive the deadline; the step's retry policy decides.
        retry=Retry(NoBackoff(), 0),
    )
    return client, shown


def _unreachable(shown: str, exc: Exception) -> PluginError:
    if isinstance(exc, redis.AuthenticationError):
        return PluginError(f"{shown}: authentication failed")
    return PluginError(f"{shown} unreachable: {type(exc).__name__}: {exc}", retryable=True)


def _masked(url: str) -> str:
    """``url`` with its password replaced by ``***``: it is never echoed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.netloc.rpartition('@')[2]}"
    return parts._replace(netloc=netloc).geturl()


def _value(reply: Any) -> Any:
    """The reply with its bytes decoded (text) or summarised (binary)."""
    if isinstance(reply, bytes):
        try:
            return reply.decode("utf-8")
        except UnicodeDecodeError:
            return binary_summary(reply)
    if isinstance(reply, list | tuple):
        return [_value(item) for item in reply]
    if isinstance(reply, dict):
        return {str(_value(key)): _value(item) for key, item in reply.items()}
    return reply


def _parsed(value: Any) -> Any:
    """A JSON text reply as its document (what ``json`` expectations read), else itself."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_parsed(item) for item in value]
    return value


def _stored(value: Any) -> Any:
    return summarize_text(value) if isinstance(value, str) else value


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A pub/sub message for :meth:`Listener.deliver`: ``data`` is its JSON body, or None."""
    body = _value(message["data"])
    try:
        data = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        data = None
    return {"channel": _value(message["channel"]), "body": _stored(body), "data": data}
