from __future__ import annotations

import json
import ssl
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
    StepContext,
    check_json_paths,
)
from plugins.outbound import IPAddress, OutboundRefused, step_outbound_check

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    limit = settings.ORCHESTRA_MAX_STORED_BODY_CHARS
    return text if len(text) <= limit else text[:limit] + "…"


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
            "status": {
                "oneOf": [
                    {"type": "integer", "minimum": 100, "maximum": 599},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "integer", "minimum": 100, "maximum": 599},
                    },
                ]
            },
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
        # One client per process: connection pooling across steps and runs. Its transport checks
        # the outbound policy before every request, redirects included, and connects only to
        # the addresses the check returned.
        self._client = httpx.Client(transport=CheckedTransport())

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        method = params.get("method", "GET")
        timeout = min(float(params.get("timeout", context.timeout)), context.timeout)
        request_summary: dict[str, Any] = {
            "method": method,
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
            request = self._client.build_request(
                method,
                params["url"],
                headers=_request_headers(params),
                params=params.get("query"),
                content=_request_content(params),
                timeout=timeout,
                extensions={STEP_EXTENSION: context},
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise PluginError(f"invalid URL {params['url']!r}: {exc}") from None
        except (UnicodeEncodeError, ValueError, TypeError) as exc:
            # A header value outside ASCII, a NaN in the JSON body...: no retry will fix it.
            raise PluginError(f"cannot build the request to {params['url']}: {exc}") from None
        started = time.perf_counter()
        try:
            response = self._client.send(
                request, follow_redirects=params.get("follow_redirects", False)
            )
        except httpx.TimeoutException:
            raise PluginError(
                f"{method} {params['url']} timed out after {timeout:g}s", retryable=True
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise PluginError(f"invalid URL {params['url']!r}: {exc}") from None
        except httpx.LocalProtocolError as exc:
            # Our own request is malformed (say, a newline in a header): permanent.
            raise PluginError(f"{method} {params['url']} is not a valid request: {exc}") from None
        except httpx.TransportError as exc:
            raise PluginError(
                f"{method} {params['url']} failed: {exc or type(exc).__name__}", retryable=True
            ) from None
        except httpx.RequestError as exc:
            # Too many redirects, an undecodable body: the server will answer the same again.
            raise PluginError(
                f"{method} {params['url']} failed: {exc or type(exc).__name__}"
            ) from None
        # Measured here rather than read from ``response.elapsed``, which a transport that hands
        # back an already-read response (a mock, a cache) never sets.
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        try:
            document = response.json() if response.content else None
        except ValueError:
            document = None
        headers = {name.lower(): value for name, value in response.headers.items()}
        return PluginResult(
            data=document,
            fields={
                "status": response.status_code,
                "headers": headers,
                "elapsed_ms": elapsed_ms,
                # The whole text, for body_contains; the stored summary below is truncated.
                "body": response.text,
            },
            request=request_summary,
            response={
                "status": response.status_code,
                "headers": headers,
                "body": _text(response.text),
                "elapsed_ms": elapsed_ms,
            },
        )

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        assertions: list[Assertion] = []
        status = result.fields["status"]
        if "status" in expect:
            allowed = expect["status"] if isinstance(expect["status"], list) else [expect["status"]]
            passed = status in allowed
            assertions.append(
                Assertion(
                    "status",
                    passed,
                    expect["status"],
                    status,
                    "" if passed else f"status is {status}, expected {expect['status']}",
                )
            )
        for name, expected in expect.get("headers", {}).items():
            actual = result.fields["headers"].get(name.lower())
            passed = actual == expected
            message = "" if passed else f"header {name} is {actual!r}, expected {expected!r}"
            assertions.append(Assertion(f"header {name}", passed, expected, actual, message))
        if "json" in expect:
            if result.data is None:
                assertions.append(
                    Assertion("json", False, expect["json"], None, "response body is not JSON")
                )
            else:
                assertions.extend(check_json_paths(expect["json"], result.data))
        if "body_contains" in expect:
            body = result.fields.get("body", result.response.get("body", ""))
            passed = expect["body_contains"] in body
            assertions.append(
                Assertion(
                    "body_contains",
                    passed,
                    expect["body_contains"],
                    None,
                    "" if passed else f"body does not contain {expect['body_contains']!r}",
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
