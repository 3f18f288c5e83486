"""One HTTP request for a step, through the checked transport: the part of ``http`` that other
plugins built on HTTP (``graphql``) share.

:func:`send_request` checks the outbound policy and connects only to the checked addresses
(:class:`plugins.http.plugin.CheckedTransport`, with the step's context in the request's
extensions), reads at most ``ORCHESTRA_MAX_RESPONSE_BYTES`` of the answer, ends by the step's
total deadline and stops between chunks when ``context.stop`` is set. Every failure is a
:class:`PluginError` whose ``retryable`` flag says whether another try may help.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import httpx
from django.conf import settings

from plugins.base import PluginError, StepContext
from plugins.http.plugin import STEP_EXTENSION, CheckedTransport


@dataclass(frozen=True)
class Exchange:
    """The answer to one request: status, headers (lower-case names), body and time taken."""

    status: int
    headers: dict[str, str]
    content: bytes
    elapsed_ms: float


@cache
def checked_client() -> httpx.Client:
    """The process's client for plugins built on this module (pooled across steps and runs)."""
    return httpx.Client(transport=CheckedTransport())


class _Ended(Exception):
    """The deadline passed or the run was told to stop while the answer was being read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TooBig(Exception):
    pass


def send_request(
    method: str,
    url: str,
    *,
    context: StepContext,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    timeout: float | None = None,
) -> Exchange:
    """Send one request for the step ``context`` describes; see the module docstring."""
    timeout = context.timeout if timeout is None else min(timeout, context.timeout)
    deadline = min(context.deadline, time.monotonic() + timeout)
    client = checked_client()
    try:
        request = client.build_request(
            method,
            url,
            headers=headers,
            content=content,
            timeout=max(deadline - time.monotonic(), 0.001),
            extensions={STEP_EXTENSION: context},
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise PluginError(f"invalid URL {url!r}: {exc}") from None
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        # A header value outside ASCII...: no retry will fix it.
        raise PluginError(f"cannot build the request to {url}: {exc}") from None
    started = time.perf_counter()
    try:
        status, response_headers, body = _read(client, request, deadline, context)
    except _Ended as exc:
        if exc.reason == "stopped":
            raise PluginError(f"{method} {url} was interrupted: the run is stopping") from None
        raise PluginError(f"{method} {url} timed out after {timeout:g}s", retryable=True) from None
    except _TooBig:
        limit = settings.ORCHESTRA_MAX_RESPONSE_BYTES
        raise PluginError(
            f"{method} {url}: the response body exceeds ORCHESTRA_MAX_RESPONSE_BYTES "
            f"({limit} bytes)"
        ) from None
    except httpx.TimeoutException:
        raise PluginError(f"{method} {url} timed out after {timeout:g}s", retryable=True) from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise PluginError(f"invalid URL {url!r}: {exc}") from None
    except httpx.LocalProtocolError as exc:
        # Our own request is malformed (say, a newline in a header): permanent.
        raise PluginError(f"{method} {url} is not a valid request: {exc}") from None
    except httpx.TransportError as exc:
        raise PluginError(
            f"{method} {url} failed: {exc or type(exc).__name__}", retryable=True
        ) from None
    except httpx.RequestError as exc:
        # An undecodable body: the server will answer the same again.
        raise PluginError(f"{method} {url} failed: {exc or type(exc).__name__}") from None
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    return Exchange(status, response_headers, body, elapsed_ms)


def _read(
    client: httpx.Client, request: httpx.Request, deadline: float, context: StepContext
) -> tuple[int, dict[str, str], bytes]:
    limit = settings.ORCHESTRA_MAX_RESPONSE_BYTES
    response = client.send(request, stream=True)
    try:
        headers = {name.lower(): value for name, value in response.headers.items()}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _TooBig()
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise _TooBig()
            if context.stop.is_set():
                raise _Ended("stopped")
            if time.monotonic() >= deadline:
                raise _Ended("timeout")
            chunks.append(chunk)
        return response.status_code, headers, b"".join(chunks)
    finally:
        response.close()
