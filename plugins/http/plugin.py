from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from django.conf import settings

from plugins.base import (
    Assertion,
    PluginError,
    PluginResult,
    ProtocolPlugin,
    Pushback,
    StepContext,
    check_json_paths,
)
from plugins.bodies import decode_text, summarize, summarize_text
from plugins.outbound import IPAddress, OutboundRefused, step_outbound_check
from plugins.pushback import http_pushback, url_rate_target

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
#: ``expect.status``: one HTTP status code, or a list of the accepted ones.
STATUS_SCHEMA = {
    "oneOf": [
        {"type": "integer", "minimum": 100, "maximum": 599},
        {
            "type": "array",
            "minItems": 1,
            "items": {"type": "integer", "minimum": 100, "maximum": 599},
        },
    ]
}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return summarize_text(text)


def _request_headers(params: dict[str, Any]) -> httpx.Headers:
    headers = httpx.Headers(params.get("headers") or {})
    if "json" in params and "content-type" not in headers:
        headers["Content-Type"] = "application/json"
    return headers


def _request_content(params: dict[str, Any]) -> bytes | str | None:
    # Encoded here rather than by httpx's ``json=``, which sends no body at all for ``null``.
    if "json" in params:
        return json.dumps(params["json"], ensure_ascii=False, allow_nan=False).encode()
    return params.get("body")


#: The request extension that carries the step's :class:`StepContext` to the transport.
STEP_EXTENSION = "orchestra.step"
DEFAULT_PORTS = {"http": 80, "https": 443}
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


@dataclass(frozen=True)
class _Checked:
    """The outbound check of the request being sent: where its connection may go."""

    context: StepContext
    host: str
    port: int
    #: Grows by a pooled connection's address once it passed this request's check.
    addresses: list[IPAddress]


#: Set by the transport around each request it sends, for the backend and streams beneath it.
_checked: ContextVar[_Checked | None] = ContextVar("outbound_checked", default=None)


def _current(host: str, port: int) -> _Checked:
    checked = _checked.get()
    if checked is None or (checked.host, checked.port) != (host, port):
        # Only a request sent through CheckedTransport opens or uses a connection.
        raise OutboundRefused(f"connection to {host}:{port} refused: no outbound check")
    return checked


class _CheckedStream(httpcore.NetworkStream):
    """A connection that sends a request's bytes only if its peer passes that request's check:
    a pooled keep-alive connection may be reused by a later request with other credentials."""

    def __init__(
        self, stream: httpcore.NetworkStream, host: str, port: int, address: IPAddress
    ) -> None:
        self._stream, self._host, self._port, self._address = stream, host, port, address

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        checked = _current(self._host, self._port)
        if self._address not in checked.addresses:
            step_outbound_check(
                self._host,
                self._port,
                credentials_sent=checked.context.credentials_sent,
                addresses=[self._address],
            )
            checked.addresses.append(self._address)
        self._stream.write(buffer, timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # server_hostname is the URL's host: SNI and certificate checks use the name, not the IP.
        stream = self._stream.start_tls(ssl_context, server_hostname, timeout)
        return _CheckedStream(stream, self._host, self._port, self._address)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _CheckedBackend(httpcore.SyncBackend):
    """Connects to the addresses the request's outbound check returned, never to a name."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.NetworkStream:
        checked = _current(host, port)
        if not checked.addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        failure: httpcore.ConnectError | None = None
        for address in list(checked.addresses):
            try:
                stream = super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            return _CheckedStream(stream, host, port, address)
        raise failure


class CheckedTransport(httpx.HTTPTransport):
    """httpx's transport with the outbound check of each request, redirects included, and a
    connection pool that connects only to the addresses that check returned."""

    def __init__(self) -> None:
        super().__init__()
        # httpx 0.28 takes no network backend: the pool is built again with ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=LIMITS.max_connections,
            max_keepalive_connections=LIMITS.max_keepalive_connections,
            keepalive_expiry=LIMITS.keepalive_expiry,
            network_backend=_CheckedBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        context = request.extensions.get(STEP_EXTENSION)
        url = request.url
        if url.scheme not in DEFAULT_PORTS or not url.raw_host:
            raise httpx.UnsupportedProtocol("the URL needs http:// or https:// and a host")
        host, port = url.raw_host.decode("ascii"), url.port or DEFAULT_PORTS[url.scheme]
        if context is None:
            raise OutboundRefused(f"connection to {host}:{port} refused: no step context")
        addresses = context.check_outbound(host, port)
        token = _checked.set(_Checked(context, host, port, list(addresses)))
        try:
            return super().handle_request(request)
        finally:
            _checked.reset(token)


class _Watch:
    """Ends a request in flight when the step's deadline passes or ``stop`` is set.

    httpx bounds each network operation, not their sum: a server that sends one byte a second
    never trips a read timeout. The watcher shuts the request's socket down instead, which wakes
    the blocked read at once; the watch learns the socket from httpcore's ``trace`` hook when the
    connection is made, and from the response's ``network_stream`` for a pooled connection.
    """

    def __init__(self, stop: threading.Event, deadline: float) -> None:
        self.stop = stop
        self.deadline = deadline
        #: "stopped" or "timeout" once the watcher ended the request; "" otherwise.
        self.reason = ""
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    def __enter__(self) -> _Watch:
        _watcher.add(self)
        return self

    def __exit__(self, *exc_info) -> None:
        _watcher.discard(self)

    def trace(self, event: str, info: dict) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.attach(info.get("return_value"))

    def attach(self, stream: Any) -> None:
        """Watch the socket under ``stream`` (an httpcore network stream)."""
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._socket = sock if isinstance(sock, socket.socket) else self._socket
            if self.reason:
                self._shut()

    def due(self, now: float) -> bool:
        """End the request if it is due; True when it was."""
        reason = "stopped" if self.stop.is_set() else "timeout" if now >= self.deadline else ""
        if reason:
            with self._lock:
                self.reason = reason
                self._shut()
        return bool(reason)

    def _shut(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):  # closed already
                self._socket.shutdown(socket.SHUT_RDWR)


class _Watcher:
    """One thread per process that checks the requests in flight every ``POLL_SECONDS``."""

    POLL_SECONDS = 0.05

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None

    def add(self, watch: _Watch) -> None:
        with self._changed:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="http-watch", daemon=True)
                self._thread.start()
            self._watches.add(watch)

    def discard(self, watch: _Watch) -> None:
        with self._changed:
            self._watches.discard(watch)

    def _loop(self) -> None:
        while True:
            with self._changed:
                # Polling, not woken by each request: a wake-up per request costs it more
                # (thread switches) than twenty idle ones a second cost the process.
                self._changed.wait(self.POLL_SECONDS)
                now = time.monotonic()
                self._watches -= {watch for watch in self._watches if watch.due(now)}


_watcher = _Watcher()
# A lock held by the parent's watcher thread at fork time would stay held in the child.
os.register_at_fork(after_in_child=_watcher.__init__)


@dataclass(frozen=True)
class Exchange:
    """The answer to one request: status, headers (lower-case names), body and time taken."""

    status: int
    headers: dict[str, str]
    content: bytes
    elapsed_ms: float

    def summary(self, text: str | None) -> dict[str, Any]:
        """What is stored of the answer; ``text`` is the body's ``decode_text``."""
        content_type = self.headers.get("content-type", "")
        return {
            "status": self.status,
            "headers": self.headers,
            "body": summarize(self.content, content_type, text=text),
            "elapsed_ms": self.elapsed_ms,
        }


def checked_client() -> httpx.Client:
    """A client whose every request, redirects included, is checked against the outbound
    policy by :class:`CheckedTransport`; a plugin keeps one per process, for pooling."""
    return httpx.Client(transport=CheckedTransport())


def send_request(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    context: StepContext,
    headers: httpx.Headers | dict[str, str] | None = None,
    query: dict[str, Any] | None = None,
    content: bytes | str | None = None,
    timeout: float | None = None,
    follow_redirects: bool = False,
) -> Exchange:
    """Send one request for the step ``context`` describes, for ``http`` and the plugins built
    on HTTP (``graphql``).

    The outbound policy is checked and only its addresses are connected to; at most
    ``ORCHESTRA_MAX_RESPONSE_BYTES`` of the answer are read; connect, send and read end by one
    deadline (the step's, or ``timeout`` if sooner) and at once when ``context.stop`` is set.
    Every failure is a :class:`PluginError` whose ``retryable`` says whether a try may help.
    """
    timeout = context.timeout if timeout is None else min(float(timeout), context.timeout)
    deadline = min(context.deadline, time.monotonic() + timeout)
    watch = _Watch(context.stop, deadline)
    try:
        request = client.build_request(
            method,
            url,
            headers=headers,
            params=query,
            content=content,
            timeout=max(deadline - time.monotonic(), 0.001),
            extensions={STEP_EXTENSION: context, "trace": watch.trace},
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise PluginError(f"invalid URL {url!r}: {exc}") from None
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        # A header value outside ASCII, a NaN in the JSON body...: no retry will fix it.
        raise PluginError(f"cannot build the request to {url}: {exc}") from None
    if context.stop.is_set():
        raise PluginError(f"{method} {url} was not sent: the run is stopping")
    started = time.perf_counter()
    with watch:
        try:
            status, response_headers, body = _exchange(
                client, request, follow_redirects, deadline, watch
            )
        except (httpx.HTTPError, _DeadlinePassed, _TooBig) as exc:
            raise _plugin_error(method, url, timeout, watch.reason, exc) from None
    # Measured here rather than read from ``response.elapsed``, which a transport that hands
    # back an already-read response (a mock, a cache) never sets.
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    return Exchange(status, response_headers, bytes(body), elapsed_ms)


def _exchange(
    client: httpx.Client,
    request: httpx.Request,
    follow_redirects: bool,
    deadline: float,
    watch: _Watch,
) -> tuple[int, dict[str, str], bytearray]:
    """Send ``request`` and read at most ORCHESTRA_MAX_RESPONSE_BYTES of its answer."""
    limit = settings.ORCHESTRA_MAX_RESPONSE_BYTES
    response = client.send(request, follow_redirects=follow_redirects, stream=True)
    try:
        watch.attach(response.extensions.get("network_stream"))
        headers = {name.lower(): value for name, value in response.headers.items()}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _TooBig(limit)
        content = bytearray()  # grown in place: never a second copy of the body
        for chunk in response.iter_bytes():
            if len(content) + len(chunk) > limit:
                raise _TooBig(limit)
            if time.monotonic() >= deadline:
                raise _DeadlinePassed()
            content += chunk
        return response.status_code, headers, content
    finally:
        response.close()


def status_assertion(expected: int | list[int], status: int) -> Assertion:
    """``expect.status`` (one code or the accepted ones) against the answer's status."""
    passed = status in (expected if isinstance(expected, list) else [expected])
    message = "" if passed else f"status is {status}, expected {expected}"
    return Assertion("status", passed, expected, status, message)


def json_body_assertions(expected: dict[str, Any], document: Any) -> list[Assertion]:
    """``expect.json`` against the answer's JSON body (None: the body is not JSON)."""
    if document is None:
        return [Assertion("json", False, expected, None, "response body is not JSON")]
    return check_json_paths(expected, document)


class HttpPlugin(ProtocolPlugin):
    """Sends one HTTP request with httpx.

    ``with``: method, url, headers, query, json or body, timeout (seconds), follow_redirects.
    ``expect``: status (a code or a list of codes), headers (name -> exact value), json
    (JSONPath -> value), body_contains (text), response_time_ms (an upper bound).
    ``capture``: JSONPath over the response's JSON body.
    """

    name = "http"
    params_schema = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "method": {"type": "string", "enum": METHODS, "default": "GET"},
            "url": {"type": "string", "pattern": "^https?://", "minLength": 8},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "query": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            "json": {},
            "body": {"type": "string"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "follow_redirects": {"type": "boolean"},
        },
        "not": {"required": ["json", "body"]},
    }
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "status": STATUS_SCHEMA,
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "json": {"type": "object"},
            "body_contains": {"type": "string"},
            "response_time_ms": {"type": "number", "exclusiveMinimum": 0},
        },
    }

    example = {
        "name": "the user exists",
        "plugin": "http",
        "with": {"method": "GET", "url": "http://127.0.0.1:8081/users/1"},
        "expect": {"status": 200, "json": {"$.id": 1}},
        "capture": {"user_email": "$.email"},
    }

    def __init__(self) -> None:
        self._client = checked_client()

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        request_summary: dict[str, Any] = {
            "method": params.get("method", "GET"),
            "url": params["url"],
            "headers": dict(params.get("headers", {})),
        }
        if params.get("query"):
            request_summary["query"] = params["query"]
        if "json" in params:
            request_summary["body"] = _text(params["json"])
        elif "body" in params:
            request_summary["body"] = _text(params["body"])
        try:
            headers, content = _request_headers(params), _request_content(params)
        except (UnicodeEncodeError, ValueError, TypeError) as exc:
            # A header value outside ASCII, a NaN in the JSON body...: no retry will fix it.
            raise PluginError(f"cannot build the request to {params['url']}: {exc}") from None
        exchange = send_request(
            self._client,
            request_summary["method"],
            params["url"],
            context=context,
            headers=headers,
            query=params.get("query"),
            content=content,
            timeout=params.get("timeout"),
            follow_redirects=params.get("follow_redirects", False),
        )
        content_type = exchange.headers.get("content-type", "")
        text = decode_text(exchange.content, content_type)
        return PluginResult(
            data=_document(text),
            fields={
                "status": exchange.status,
                "headers": exchange.headers,
                "elapsed_ms": exchange.elapsed_ms,
                # The whole text, for body_contains (None when binary); the summary is cut.
                "body": text,
            },
            request=request_summary,
            response=exchange.summary(text),
            pushback=http_pushback(exchange.status, exchange.headers),
        )

    def rate_target(self, params: dict[str, Any]) -> str | None:
        return url_rate_target(params["url"])

    def accepts_pushback(self, expect: dict[str, Any], pushback: Pushback) -> bool:
        return "status" in expect and status_assertion(expect["status"], pushback.status).passed

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        assertions: list[Assertion] = []
        if "status" in expect:
            assertions.append(status_assertion(expect["status"], result.fields["status"]))
        for name, expected in expect.get("headers", {}).items():
            actual = result.fields["headers"].get(name.lower())
            passed = actual == expected
            message = "" if passed else f"header {name} is {actual!r}, expected {expected!r}"
            assertions.append(Assertion(f"header {name}", passed, expected, actual, message))
        if "json" in expect:
            assertions.extend(json_body_assertions(expect["json"], result.data))
        if "body_contains" in expect:
            body = result.fields.get("body", result.response.get("body", ""))
            passed = isinstance(body, str) and expect["body_contains"] in body
            message = f"body does not contain {expect['body_contains']!r}"
            if not isinstance(body, str):
                message = "the response body is binary, not text"
            assertions.append(
                Assertion(
                    "body_contains",
                    passed,
                    expect["body_contains"],
                    None,
                    "" if passed else message,
                )
            )
        if "response_time_ms" in expect:
            elapsed = result.fields["elapsed_ms"]
            passed = elapsed <= expect["response_time_ms"]
            assertions.append(
                Assertion(
                    "response_time_ms",
                    passed,
                    expect["response_time_ms"],
                    elapsed,
                    "" if passed else f"took {elapsed} ms, limit {expect['response_time_ms']} ms",
                )
            )
        return assertions


class _DeadlinePassed(Exception):
    """The step's total deadline passed while the answer was being read."""


class _TooBig(httpx.HTTPError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the response body exceeds ORCHESTRA_MAX_RESPONSE_BYTES ({limit} bytes)")


def _document(text: str | None) -> Any:
    """The JSON document a text body holds, or None."""
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _plugin_error(
    method: str, url: str, timeout: float, watched: str, exc: Exception
) -> PluginError:
    """The step's error for what ended the exchange (the watch's reason first: it caused it)."""
    if watched == "stopped":
        return PluginError(f"{method} {url} was interrupted: the run is stopping")
    if watched == "timeout" or isinstance(exc, httpx.TimeoutException | _DeadlinePassed):
        return PluginError(f"{method} {url} timed out after {timeout:g}s", retryable=True)
    if isinstance(exc, _TooBig):
        return PluginError(f"{method} {url}: {exc}")
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return PluginError(f"invalid URL {url!r}: {exc}")
    if isinstance(exc, httpx.LocalProtocolError):
        # Our own request is malformed (say, a newline in a header): permanent.
        return PluginError(f"{method} {url} is not a valid request: {exc}")
    if isinstance(exc, httpx.TransportError):
        return PluginError(f"{method} {url} failed: {exc or type(exc).__name__}", retryable=True)
    # Too many redirects, an undecodable body: the server will answer the same again.
    return PluginError(f"{method} {url} failed: {exc or type(exc).__name__}")
