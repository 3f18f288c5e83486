from __future__ import annotations

import base64
import binascii
import contextlib
import json
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from plugins.base import (
    Assertion,
    PluginError,
    PluginResult,
    ProtocolPlugin,
    StepContext,
    check_json_paths,
)
from plugins.bodies import binary_summary, summarize_text
from plugins.pushback import url_rate_target
from plugins.resources import AWAIT_SCHEMA, Listener, message_matches

DEFAULT_PORTS = {"ws": 80, "wss": 443}
#: Seconds a close handshake may take (at the end of a step or of the run).
CLOSE_TIMEOUT = 2.0
#: How often a receiving step looks at its stop event and deadline.
POLL_SECONDS = 0.1

NAME = {"type": "string", "minLength": 1, "maxLength": 200}
MESSAGE = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "additionalProperties": False,
    "properties": {
        "text": {"type": "string"},
        "json": {},
        "binary": {"type": "string", "pattern": "^[A-Za-z0-9+/]*={0,2}$"},
    },
}
CONNECT_PROPERTIES = {
    "url": {"type": "string", "pattern": "^wss?://", "minLength": 6},
    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
    "subprotocols": {"type": "array", "items": {"type": "string", "minLength": 1}},
}


def _together(*names: str) -> dict[str, Any]:
    return {"not": {"required": list(names)}}


class WebSocketSession:
    """A connection a ``connect`` step keeps open as ``as: NAME``; closed with the run."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        #: The listener that reads this connection, if one does: then steps may not receive.
        self.listener: WebSocketListener | None = None

    def close(self) -> None:
        self.connection.close()


class WebSocketListener(Listener):
    """Delivers every message of a connection, read by a thread of its own, until it closes."""

    def __init__(self, connection: ClientConnection, *, owned: bool) -> None:
        super().__init__()
        self.connection = connection
        self._owned = owned
        self._thread = threading.Thread(target=self._read, name="websocket-listen", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for raw in self.connection:
                self.deliver(_message(raw))

    def close(self) -> None:
        # A listener on a session leaves the connection to the session, which is older and so
        # closed after it; one that opened its own connection closes it.
        if self._owned:
            self.connection.close()
            self._thread.join(CLOSE_TIMEOUT)


class WebSocketPlugin(ProtocolPlugin):
    """WebSocket client steps with the ``websockets`` sync client.

    ``with``: ``url`` (connect; ``as: NAME`` keeps the connection for later steps, otherwise it is
    closed at the end of the step) or ``session: NAME`` (a kept connection), then in order
    ``send`` (one message or a list: ``{text}``, ``{json}`` or ``{binary: base64}``),
    ``receive`` (``count``, ``match``, ``timeout``) and ``close`` (``code``, ``reason``); or
    ``await: NAME`` (a listener's messages, with ``count`` and ``match``).
    ``expect``: json (JSONPath over the list of received messages), count, close_code.
    ``capture``: JSONPath over the list of received messages.
    """

    name = "websocket"
    params_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **CONNECT_PROPERTIES,
            "as": NAME,
            "session": NAME,
            "send": {"oneOf": [MESSAGE, {"type": "array", "minItems": 1, "items": MESSAGE}]},
            "receive": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "count": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "match": {"type": "object"},
                    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                },
            },
            "close": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "integer", "minimum": 1000, "maximum": 4999},
                    "reason": {"type": "string", "maxLength": 120},
                },
            },
            **{key: AWAIT_SCHEMA["properties"][key] for key in ("await", "count", "match")},
        },
        "anyOf": [{"required": ["url"]}, {"required": ["session"]}, {"required": ["await"]}],
        "allOf": [
            _together("url", "session"),
            _together("url", "await"),
            _together("session", "await"),
            *(_together("await", key) for key in ("send", "receive", "close")),
        ],
        "dependentRequired": {
            "as": ["url"],
            "headers": ["url"],
            "subprotocols": ["url"],
            "count": ["await"],
            "match": ["await"],
        },
    }
    listen_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {**CONNECT_PROPERTIES, "session": NAME},
        "oneOf": [{"required": ["url"]}, {"required": ["session"]}],
        "dependentRequired": {"headers": ["url"], "subprotocols": ["url"]},
    }
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "json": {"type": "object"},
            "count": {"type": "integer", "minimum": 0},
            "close_code": {"type": ["integer", "null"], "minimum": 1000, "maximum": 4999},
        },
    }

    example = {
        "name": "the price feed answers a subscription",
        "plugin": "websocket",
        "with": {
            "url": "wss://feed.test/prices",
            "send": {"json": {"subscribe": "EURUSD"}},
            "receive": {"count": 1, "match": {"$.pair": "EURUSD"}},
        },
        "expect": {"count": 1, "json": {"$[0].pair": "EURUSD"}},
    }

    def rate_target(self, params: dict[str, Any]) -> str | None:
        # A step that uses a session sends over a connection opened (and paced) before.
        return url_rate_target(params["url"]) if "url" in params else None

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        if "await" in params:
            return self._await(params, context)
        request: dict[str, Any] = {}
        if "url" in params:
            connection = _connect(params, context)
            request.update(
                url=params["url"],
                headers=dict(params.get("headers", {})),
                subprotocols=params.get("subprotocols", []),
            )
            session = None
            if "as" in params:
                session = WebSocketSession(connection)
                context.resources.add(params["as"], session)
        else:
            session = context.resources.get(params["session"], WebSocketSession)
            connection = session.connection
            request["session"] = params["session"]
        try:
            return self._exchange(params, context, connection, session, request)
        finally:
            if session is None:  # the one-step form: nothing outlives the step
                # Its close handshake waits no longer than the step may still take.
                connection.close_timeout = min(CLOSE_TIMEOUT, max(context.remaining(), 0.1))
                connection.close()

    def _exchange(
        self,
        params: dict[str, Any],
        context: StepContext,
        connection: ClientConnection,
        session: WebSocketSession | None,
        request: dict[str, Any],
    ) -> PluginResult:
        sent = params.get("send", [])
        sent = sent if isinstance(sent, list) else [sent]
        # A kept session that the server closed stays closed: only a fresh connection may help.
        reconnects = session is None
        request["sent"] = [_send(connection, message, reconnects) for message in sent]
        received: list[dict[str, Any]] = []
        skipped = 0
        if "receive" in params:
            if session is not None and session.listener is not None:
                raise PluginError(
                    f"session {params.get('session', params.get('as'))!r} is read by a listener: "
                    "await the listener instead of receiving"
                )
            received, skipped = _receive(connection, params["receive"], context)
        if "close" in params:
            close = params["close"]
            connection.close(close.get("code", 1000), close.get("reason", ""))
        return _result(
            received,
            connection,
            request,
            requested=params.get("receive", {}).get("count"),
            skipped=skipped,
        )

    def _await(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        listener = context.resources.get(params["await"], WebSocketListener)
        count = params.get("count", 1)
        messages = listener.wait(count=count, match=params.get("match", {}), context=context)
        return _result(
            messages,
            listener.connection,
            {"await": params["await"]},
            requested=count,
            skipped=0,
        )

    def listen(self, params: dict[str, Any], context: StepContext) -> WebSocketListener:
        if "session" in params:
            session = context.resources.get(params["session"], WebSocketSession)
            if session.listener is not None:
                raise PluginError(f"session {params['session']!r} has a listener already")
            session.listener = WebSocketListener(session.connection, owned=False)
            return session.listener
        return WebSocketListener(_connect(params, context), owned=True)

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        assertions = check_json_paths(expect.get("json", {}), result.data)
        count = expect.get("count", result.fields["requested"])
        if count is not None:
            actual = result.fields["count"]
            passed = actual == count
            message = "" if passed else f"{actual} messages received, expected {count}"
            assertions.append(Assertion("count", passed, count, actual, message))
        if "close_code" in expect:
            expected, actual = expect["close_code"], result.fields["close_code"]
            passed = actual == expected
            message = "" if passed else f"close code is {actual}, expected {expected}"
            assertions.append(Assertion("close_code", passed, expected, actual, message))
        return assertions


def _connect(params: dict[str, Any], context: StepContext) -> ClientConnection:
    """Open the connection ``params`` describe, to an address the outbound check returned."""
    url = params["url"]
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise PluginError(f"invalid URL {url!r}: it needs ws:// or wss:// and a host")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise PluginError(f"invalid URL {url!r}: {exc}") from None
    addresses = context.check_outbound(parts.hostname, port)
    sock = _open_socket(url, addresses, port, context)
    tls = parts.scheme == "wss"
    try:
        return connect(
            url,
            sock=sock,
            # The URL's name, not the address: SNI and the certificate check use it.
            ssl=ssl.create_default_context() if tls else None,
            server_hostname=parts.hostname if tls else None,
            additional_headers=params.get("headers"),
            subprotocols=params.get("subprotocols"),
            proxy=None,
            # The connection, not a context manager: a session outlives this function.
            legacy=True,
            open_timeout=max(context.remaining(), 0.001),
            close_timeout=CLOSE_TIMEOUT,
            max_size=settings.ORCHESTRA_MAX_RESPONSE_BYTES,
        )
    except InvalidStatus as exc:
        sock.close()
        status = exc.response.status_code
        raise PluginError(
            f"{url} refused the WebSocket handshake with HTTP {status}", retryable=status >= 500
        ) from None
    except (InvalidHandshake, InvalidURI, ValueError) as exc:
        sock.close()
        raise PluginError(f"WebSocket handshake with {url} failed: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise PluginError(f"TLS with {url} failed: {exc.verify_message}") from None
    except (OSError, TimeoutError, ConnectionClosed) as exc:
        sock.close()
        raise PluginError(
            f"WebSocket handshake with {url} failed: {exc or type(exc).__name__}", retryable=True
        ) from None


def _open_socket(url: str, addresses: list, port: int, context: StepContext) -> socket.socket:
    failure: OSError | None = None
    for address in addresses:
        remaining = context.remaining()
        if remaining <= 0:
            break
        try:
            return socket.create_connection((str(address), port), timeout=remaining)
        except OSError as exc:
            failure = exc
    reason = failure or "the step's deadline passed"
    raise PluginError(f"cannot connect to {url}: {reason}", retryable=True)


def _send(connection: ClientConnection, message: dict[str, Any], retryable: bool) -> Any:
    """Send one ``{text|json|binary}`` message; what is stored of it."""
    if "binary" in message:
        try:
            payload = base64.b64decode(message["binary"], validate=True)
        except binascii.Error as exc:
            raise PluginError(f"send.binary is not base64: {exc}") from None
        summary: Any = binary_summary(payload, "application/octet-stream")
        data: str | bytes = payload
    elif "json" in message:
        data = json.dumps(message["json"], ensure_ascii=False, allow_nan=False)
        summary = summarize_text(data)
    else:
        data = message["text"]
        summary = summarize_text(data)
    try:
        connection.send(data)
    except ConnectionClosed as exc:
        raise PluginError(f"the connection is closed ({exc})", retryable=retryable) from None
    return summary


def _message(raw: str | bytes) -> dict[str, Any]:
    """A received message: ``data`` for JSONPaths, ``body`` for storage."""
    if isinstance(raw, bytes):
        summary = binary_summary(raw, "application/octet-stream")
        return {"data": summary, "type": "binary", "body": summary}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = raw
    return {"data": data, "type": "text", "body": summarize_text(raw)}


def _receive(
    connection: ClientConnection, spec: dict[str, Any], context: StepContext
) -> tuple[list[dict[str, Any]], int]:
    """Messages matching ``spec["match"]`` until ``count`` of them, the close, or the timeout;
    and how many others arrived meanwhile."""
    count, match = spec.get("count"), spec.get("match", {})
    end = context.deadline
    if "timeout" in spec:
        end = min(end, time.monotonic() + spec["timeout"])
    received: list[dict[str, Any]] = []
    skipped = 0
    while count is None or len(received) < count:
        if context.stop.is_set():
            raise PluginError("receiving was interrupted: the run is stopping")
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            raw = connection.recv(timeout=min(left, POLL_SECONDS))
        except TimeoutError:
            continue
        except ConnectionClosed:
            break
        message = _message(raw)
        if message_matches(match, message["data"]):
            received.append(message)
        else:
            skipped += 1
    return received, skipped


def _result(
    messages: list[dict[str, Any]],
    connection: ClientConnection,
    request: dict[str, Any],
    *,
    requested: int | None,
    skipped: int,
) -> PluginResult:
    close_code = connection.close_code
    return PluginResult(
        data=[message["data"] for message in messages],
        fields={
            "count": len(messages),
            "requested": requested,
            "skipped": skipped,
            "close_code": close_code,
            "subprotocol": connection.subprotocol,
        },
        request=request,
        response={
            "messages": [{"type": m["type"], "body": m["body"]} for m in messages],
            "skipped": skipped,
            "close_code": close_code,
            "close_reason": connection.close_reason,
            "subprotocol": connection.subprotocol,
        },
    )
