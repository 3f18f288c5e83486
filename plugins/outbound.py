"""Which hosts a plugin may connect to: an allow/deny policy checked before every connection.

A scenario is user input, and a worker sits inside the network next to orchestra's own broker
and database. By default a step may reach anything except:

- the message broker's and the database's address (host and port, as the worker's settings
  name them, resolved to IP addresses);
- cloud metadata addresses (169.254.169.254 and friends), which hand out credentials.

Settings (environment variables of the same name):

- ``ORCHESTRA_OUTBOUND_ALLOW``: comma-separated entries; when set, a target must match one;
- ``ORCHESTRA_OUTBOUND_DENY``: entries refused in addition to the defaults above;
- ``ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE`` (default true): ``false`` drops the defaults,
  for a test environment whose scenarios must reach those addresses.

An entry is a host name (``api.test``), a suffix (``*.internal``), an IP address or network
(``10.0.0.0/8``, ``::1``), each optionally with a port (``db.test:5432``,
``[fd00::1]:80``); without a port it matches every port. Names are resolved, so a name that
points at a refused address is refused too. Deny wins over allow.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

from plugins.base import PluginError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ENTRIES = (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "metadata.google.internal",
    "metadata.goog",
)


class OutboundRefused(PluginError):
    """The policy refuses the target; retrying cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class Entry:
    """One allow or deny entry: a network or a host name (or ``*.suffix``), and a port or any."""

    text: str
    network: IPNetwork | None
    host: str | None
    port: int | None
    reason: str

    @classmethod
    def parse(cls, text: str, reason: str) -> Entry:
        host, port = _split_host_port(text.strip())
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            return cls(text, None, host.lower().rstrip("."), port, reason)
        return cls(text, network, None, port, reason)

    def matches(self, host: str, port: int, addresses: list[IPAddress]) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return any(address in self.network for address in addresses)
        if self.host.startswith("*."):
            return host == self.host[2:] or host.endswith(self.host[1:])
        return host == self.host


def _split_host_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [v6]:port or [v6]
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        host, port = text.split(":")
        return host, int(port)
    return text, None


def _url_entry(url: str, default_port: int, reason: str) -> list[Entry]:
    """The host:port of a service URL, as entries for the name and each address it resolves to."""
    parts = urlsplit(url)
    if not parts.hostname:
        return []
    port = parts.port or default_port
    entries = [Entry.parse(f"[{parts.hostname}]:{port}", reason)]
    entries += [
        Entry.parse(f"[{address}]:{port}", reason) for address in _resolve(parts.hostname, port)
    ]
    return entries


def _database_entries() -> list[Entry]:
    entries = []
    for database in settings.DATABASES.values():
        host = database.get("HOST") or "127.0.0.1"
        if host.startswith("/"):
            continue  # a Unix socket: not reachable over TCP
        port = int(database.get("PORT") or 5432)
        entries += _url_entry(f"//{host}:{port}", port, "the database's address")
    return entries


def _broker_entries() -> list[Entry]:
    from celery import current_app

    entries = []
    for url in str(current_app.conf.broker_url or "").split(";"):
        entries += _url_entry(url, 5672, "the message broker's address")
    return entries


@dataclass(frozen=True)
class OutboundPolicy:
    allow: tuple[Entry, ...]
    deny: tuple[Entry, ...]

    def check(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of ``host:port``; raises :class:`OutboundRefused` if it is refused."""
        addresses = _resolve(host, port)
        for entry in self.deny:
            if entry.matches(host, port, addresses):
                raise OutboundRefused(
                    f"connection to {host}:{port} refused: it is {entry.reason} ({entry.text})"
                    f"{_how_to_open(entry)}"
                )
        if self.allow and not any(entry.matches(host, port, addresses) for entry in self.allow):
            raise OutboundRefused(
                f"connection to {host}:{port} refused: not in ORCHESTRA_OUTBOUND_ALLOW"
            )
        return addresses


def _how_to_open(entry: Entry) -> str:
    if entry.reason.startswith("in ORCHESTRA_OUTBOUND_DENY"):
        return ""
    return "; set ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE=false to allow it in a test environment"


def _resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` stands for; ``0.0.0.0`` and ``::`` reach this machine itself."""
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError):
        found = set()
    addresses: list[IPAddress] = []
    for text in found:
        address = ipaddress.ip_address(text.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.is_unspecified:
            address = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
        addresses.append(address)
    return addresses


@lru_cache(maxsize=4)
def _policy(
    allow: tuple[str, ...], deny: tuple[str, ...], deny_infrastructure: bool
) -> OutboundPolicy:
    denied = [Entry.parse(text, "in ORCHESTRA_OUTBOUND_DENY") for text in deny]
    if deny_infrastructure:
        denied += [Entry.parse(text, "a cloud metadata address") for text in METADATA_ENTRIES]
        denied += _broker_entries() + _database_entries()
    allowed = [Entry.parse(text, "in ORCHESTRA_OUTBOUND_ALLOW") for text in allow]
    return OutboundPolicy(tuple(allowed), tuple(denied))


def outbound_policy() -> OutboundPolicy:
    """The policy the current settings describe (built once per distinct setting)."""
    return _policy(
        tuple(settings.ORCHESTRA_OUTBOUND_ALLOW),
        tuple(settings.ORCHESTRA_OUTBOUND_DENY),
        settings.ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE,
    )


def step_outbound_check(
    host: str, port: int, *, credentials_sent: frozenset[str] = frozenset()
) -> list[IPAddress]:
    """The check behind :meth:`plugins.base.StepContext.check_outbound`."""
    return outbound_policy().check(host, port)
