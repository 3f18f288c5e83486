"""A target's "not now": which answers are pushbacks, and how long ``Retry-After`` asks to wait.

HTTP (and the plugins built on it) report a :class:`plugins.base.Pushback` for ``429 Too Many
Requests``, and for ``503 Service Unavailable`` that carries ``Retry-After``. The header is either
delta-seconds or an HTTP date; a date is measured against the response's own ``Date`` header, so
the target's clock and ours never need to agree. What cannot be read is None: the throttle
then backs off by its default; it also caps the wait (``ORCHESTRA_MAX_RETRY_AFTER``).
"""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from plugins.base import Pushback

TOO_MANY_REQUESTS = 429
SERVICE_UNAVAILABLE = 503
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "amqp": 5672, "amqps": 5671}
_DELTA_SECONDS = re.compile(r"\d{1,10}")


def retry_after_seconds(header: str | None, date_header: str | None) -> float | None:
    """Seconds ``Retry-After`` asks for: delta-seconds, or an HTTP date minus the response's
    ``Date``; None when absent or malformed (a date without a readable ``Date`` included).
    A date already past is 0."""
    if header is None:
        return None
    value = header.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    if not value or date_header is None:
        return None
    try:
        until, sent = parsedate_to_datetime(value), parsedate_to_datetime(date_header.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # HTTP dates are GMT; the asctime form says so by saying nothing.
    until, sent = (moment.replace(tzinfo=moment.tzinfo or UTC) for moment in (until, sent))
    return max(0.0, (until - sent).total_seconds())


def http_pushback(status: int, headers: dict[str, str]) -> Pushback | None:
    """The pushback an HTTP answer carries (``headers`` with lower-case names), or None."""
    header = headers.get("retry-after")
    if status == TOO_MANY_REQUESTS or (status == SERVICE_UNAVAILABLE and header is not None):
        retry_after = retry_after_seconds(header, headers.get("date"))
        return Pushback(status=status, retry_after=retry_after, header=(header or "")[:200])
    return None


def url_rate_target(url: str) -> str | None:
    """``scheme://host:port`` of ``url``, the port filled in from the scheme; None if unreadable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if not host:
        return None
    port = port or DEFAULT_PORTS.get(scheme)
    if port is None:
        return None
    return host_rate_target(scheme, host, port)


def host_rate_target(scheme: str, host: str, port: int) -> str:
    """``scheme://host:port`` (an IPv6 address in brackets, names in lower case)."""
    host = host.lower().strip("[]")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
