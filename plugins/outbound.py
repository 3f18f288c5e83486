"""Which hosts a plugin may connect to: an allow/deny policy checked before every connection.

A scenario is user input, and a worker sits inside the network next to orchestra's own
services. Every plugin, present or future, calls this module through
:meth:`plugins.base.StepContext.check_outbound` before it connects, and connects only to the
addresses the check returns: it never resolves the name again, so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot redirect it. A plugin that keeps
connections open for later steps checks a reused connection's peer for the new request with
``step_outbound_check(host, port, credentials_sent=..., addresses=[peer])`` (the http
plugin's transport shows how).

**Infrastructure, refused by default.** A step may reach anything except these endpoints, as the
worker's own settings name them (each host name, and every address it resolves to):

- the message broker (every URL of ``broker_url``) and its management API
  (``ORCHESTRA_BROKER_MANAGEMENT_URL``, by default port 15672 of each broker host);
- the database (every entry of ``DATABASES``);
- the cache, when ``CACHES`` uses Redis (and ``ORCHESTRA_REDIS_URL`` when set);
- Flower (``ORCHESTRA_FLOWER_URL``) and orchestra's own web server (``ORCHESTRA_WEB_URLS``);
- all link-local addresses (``169.254.0.0/16``, ``fe80::/10``) and the cloud metadata
  addresses (``fd00:ec2::254``, ``100.100.100.200``, ``metadata.google.internal``...), which
  hand out credentials.

A service on this machine (a loopback or unspecified host) may listen on every interface, so
its port is refused on the whole loopback range and on every address of this machine. The
list is built once per process and setting: names are resolved then.

**Settings** (environment variables of the same name):

- ``ORCHESTRA_OUTBOUND_ALLOW``: when set, a target must match one entry; only the addresses
  it admits are connected to;
- ``ORCHESTRA_OUTBOUND_DENY``: entries refused in addition to the infrastructure;
- ``ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE`` (default true): ``false`` drops the whole
  infrastructure list, for a test environment whose scenarios must reach those addresses;
- ``ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE``: entries that open single infrastructure
  endpoints and keep the rest refused (``127.0.0.1:8000`` lets a test environment's
  scenarios call orchestra's own API, the broker and database stay closed). The allow list
  never opens infrastructure: deny wins over allow;
- ``ORCHESTRA_CREDENTIAL_<NAME>_HOSTS``: the only targets credential ``NAME`` may be sent to.
  A step whose parameters carry the credential (``StepContext.credentials_sent``) and aim
  elsewhere is refused before any connection; the error names the credential, never its
  value. Without a binding, a credential goes wherever a scenario's author sends it.

An entry is a host name (``api.test``), a suffix (``*.internal``, which also matches
``internal``), an IP address or network (``10.0.0.0/8``, ``::1``), each optionally with a port
(``db.test:5432``, ``[fd00::1]:80``); without a port it matches every port. A name entry
matches the target's name; a network entry matches the addresses the name resolves to. A
target is refused if any of its addresses is denied.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

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
LINK_LOCAL_ENTRIES = (
    "169.254.0.0/16",
    "fe80::/10",
    "64:ff9b::a9fe:0/112",  # 169.254.0.0/16 through NAT64
)
DEFAULT_PORTS = {"http": 80, "https": 443, "amqp": 5672, "amqps": 5671, "redis": 6379}
BROKER_MANAGEMENT_PORT = 15672
LOOPBACK = ("127.0.0.0/8", "::1")


class OutboundRefused(PluginError):
    """The policy refuses the target; retrying cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class Entry:
    """One entry: a network or a host name (or ``*.suffix``), and a port or any."""

    text: str
    network: IPNetwork | None
    host: str | None
    port: int | None
    reason: str
    infrastructure: bool = False

    @classmethod
    def parse(cls, text: str, reason: str, *, infrastructure: bool = False) -> Entry:
        """Raises ``ValueError`` for text that is no entry."""
        host, port = _split_host_port(text.strip())
        if not host:
            raise ValueError(f"{text!r} names no host")
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            return cls(text, None, host.lower().rstrip("."), port, reason, infrastructure)
        return cls(text, network, None, port, reason, infrastructure)

    def names(self, host: str, port: int) -> bool:
        """Whether this is a name entry for ``host`` (and ``port``)."""
        if self.host is None or self.port not in (None, port):
            return False
        if self.host.startswith("*."):
            return host == self.host[2:] or host.endswith(self.host[1:])
        return host == self.host

    def admits(self, host: str, port: int, address: IPAddress) -> bool:
        """Whether a connection to ``address`` for ``host:port`` matches this entry."""
        if self.network is None:
            return self.names(host, port)
        return self.port in (None, port) and address in self.network

    def matches(self, host: str, port: int, addresses: list[IPAddress]) -> bool:
        """Whether the entry matches the name or any of its addresses."""
        return self.names(host, port) or any(
            self.admits(host, port, address) for address in addresses
        )


def _split_host_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [v6]:port or [v6]
        host, bracket, rest = text[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            raise ValueError(f"{text!r} is not [address] or [address]:port")
        return host, _port(text, rest[1:]) if rest else None
    if text.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        host, port = text.split(":")
        return host, _port(text, port)
    return text, None


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port")
    return int(port)


def _admitted(
    entries: Iterable[Entry], host: str, port: int, addresses: list[IPAddress]
) -> list[IPAddress] | None:
    """The addresses ``entries`` admit for ``host:port``; ``None`` if no entry matches at all."""
    entries = list(entries)
    if any(entry.names(host, port) for entry in entries):
        return addresses
    admitted = [a for a in addresses if any(e.admits(host, port, a) for e in entries)]
    return admitted or None


def _resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` stands for; ``0.0.0.0`` and ``::`` reach this machine itself."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.is_unspecified:
            address = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
        if address not in addresses:
            addresses.append(address)
    return addresses


def service_entries(url: str, default_port: int, reason: str) -> list[Entry]:
    """An infrastructure service's host:port: its name and each address it resolves to."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return []  # not a URL: the service's own client refuses it
    if not host:
        return []
    port = port or DEFAULT_PORTS.get(parts.scheme, default_port)
    addresses = _resolve(host, port)
    targets = [host, *(str(address) for address in addresses)]
    if any(address.is_loopback for address in addresses):
        # A local service may listen on every interface: each of them leads to it.
        targets += [*LOOPBACK, *(str(a) for a in _resolve(socket.gethostname(), port))]
        targets += _local_addresses()
    return [Entry.parse(f"[{text}]:{port}", reason, infrastructure=True) for text in targets]


def _local_addresses() -> list[str]:
    """Every address of this machine's interfaces (Linux's /proc; none elsewhere)."""
    found = []
    try:
        with open("/proc/net/fib_trie") as trie:  # "|-- 192.0.2.2" then "/32 host LOCAL"
            last = ""
            for line in trie:
                if "|--" in line:
                    last = line.split("|--")[1].strip()
                elif "/32 host LOCAL" in line:
                    found.append(last)
        with open("/proc/net/if_inet6") as inet6:  # 32 hex digits first
            found += [str(ipaddress.IPv6Address(int(line.split()[0], 16))) for line in inet6]
    except OSError:
        pass  # not Linux: loopback and the machine's name only
    return found


def broker_urls() -> list[str]:
    from celery import current_app

    return [url for url in str(current_app.conf.broker_url or "").split(";") if url.strip()]


def _cache_urls() -> list[str]:
    urls = [settings.ORCHESTRA_REDIS_URL] if getattr(settings, "ORCHESTRA_REDIS_URL", "") else []
    for cache in getattr(settings, "CACHES", {}).values():
        locations = cache.get("LOCATION") or []
        for location in [locations] if isinstance(locations, str) else locations:
            if urlsplit(location).scheme in ("redis", "rediss"):
                urls.append(location)
    return urls


def _with_port(url: str, port: int) -> str:
    """``url``'s host (as ``//host:port``) with another port."""
    host = urlsplit(url).hostname or ""
    return f"//[{host}]:{port}" if ":" in host else f"//{host}:{port}"


def _infrastructure_entries() -> list[Entry]:
    def entries(urls: Iterable[str], default_port: int, reason: str) -> list[Entry]:
        return [entry for url in urls for entry in service_entries(url, default_port, reason)]

    brokers = broker_urls()
    management = settings.ORCHESTRA_BROKER_MANAGEMENT_URL
    databases = [
        f"//{database.get('HOST') or '127.0.0.1'}:{database.get('PORT') or 5432}"
        for database in settings.DATABASES.values()
        if not (database.get("HOST") or "").startswith("/")  # a Unix socket: no TCP
    ]
    return [
        *(
            Entry.parse(text, "a cloud metadata address", infrastructure=True)
            for text in METADATA_ENTRIES
        ),
        *(
            Entry.parse(text, "a link-local address", infrastructure=True)
            for text in LINK_LOCAL_ENTRIES
        ),
        *entries(brokers, 5672, "the message broker's address"),
        *entries(
            [management]
            if management
            else [_with_port(url, BROKER_MANAGEMENT_PORT) for url in brokers],
            BROKER_MANAGEMENT_PORT,
            "the message broker's management API",
        ),
        *entries(databases, 5432, "the database's address"),
        *entries(_cache_urls(), 6379, "the cache's address"),
        *entries([settings.ORCHESTRA_FLOWER_URL], 80, "Flower's address"),
        *entries(settings.ORCHESTRA_WEB_URLS, 80, "orchestra's web server"),
    ]


@dataclass(frozen=True)
class OutboundPolicy:
    allow: tuple[Entry, ...]
    deny: tuple[Entry, ...]
    #: Entries that open single infrastructure endpoints (never an ORCHESTRA_OUTBOUND_DENY one).
    opened: tuple[Entry, ...] = ()

    @cached_property
    def _deny_by_port(self) -> dict[int | None, tuple[Entry, ...]]:
        """For each port a deny entry names, the entries that can match it, in their order
        (``None``: the entries for every port): a check reads those, not all of them."""
        ports = {entry.port for entry in self.deny} - {None}
        return {
            port: tuple(entry for entry in self.deny if entry.port in (None, port))
            for port in (*ports, None)
        }

    def check(
        self, host: str, port: int, addresses: list[IPAddress] | None = None
    ) -> list[IPAddress]:
        """The addresses of ``host:port`` a connection may go to (``addresses``: already
        resolved ones, to check instead of resolving); raises :class:`OutboundRefused`."""
        name = host.lower().rstrip(".")
        if addresses is None:
            addresses = _resolve(host, port)
        by_port = self._deny_by_port
        for entry in by_port.get(port, by_port[None]):
            if entry.matches(name, port, addresses) and not (
                entry.infrastructure and self._opens(name, port, addresses)
            ):
                raise OutboundRefused(
                    f"connection to {host}:{port} refused: it is {entry.reason} ({entry.text})"
                    f"{_how_to_open(entry)}"
                )
        if self.allow:
            admitted = _admitted(self.allow, name, port, addresses)
            if admitted is None:
                raise OutboundRefused(
                    f"connection to {host}:{port} refused: not in ORCHESTRA_OUTBOUND_ALLOW"
                )
            addresses = admitted
        return addresses

    def _opens(self, host: str, port: int, addresses: list[IPAddress]) -> bool:
        opened = _admitted(self.opened, host, port, addresses)
        return opened is not None and len(opened) == len(addresses)


def _how_to_open(entry: Entry) -> str:
    if not entry.infrastructure:
        return ""
    return (
        "; ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE can open it, or"
        " ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE=false all infrastructure, in a test environment"
    )


def _parse_all(texts: Iterable[str], reason: str, setting: str) -> tuple[Entry, ...]:
    try:
        return tuple(Entry.parse(text, reason) for text in texts)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{setting}: {exc}") from None


@lru_cache(maxsize=4)
def _policy(key: tuple) -> OutboundPolicy:
    allow, deny, deny_infrastructure, opened = key[:4]
    denied = _parse_all(deny, "in ORCHESTRA_OUTBOUND_DENY", "ORCHESTRA_OUTBOUND_DENY")
    if deny_infrastructure:
        denied += tuple(_infrastructure_entries())
    return OutboundPolicy(
        _parse_all(allow, "in ORCHESTRA_OUTBOUND_ALLOW", "ORCHESTRA_OUTBOUND_ALLOW"),
        denied,
        _parse_all(opened, "opened", "ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE"),
    )


def outbound_policy() -> OutboundPolicy:
    """The policy the current settings describe (built once per distinct setting)."""
    databases = tuple((db.get("HOST"), db.get("PORT")) for db in settings.DATABASES.values())
    return _policy(
        (
            tuple(settings.ORCHESTRA_OUTBOUND_ALLOW),
            tuple(settings.ORCHESTRA_OUTBOUND_DENY),
            settings.ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE,
            tuple(settings.ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE),
            # The rest only says when the infrastructure list must be built again.
            tuple(broker_urls()),
            tuple(_cache_urls()),
            databases,
            settings.ORCHESTRA_FLOWER_URL,
            tuple(settings.ORCHESTRA_WEB_URLS),
            settings.ORCHESTRA_BROKER_MANAGEMENT_URL,
        )
    )


@lru_cache(maxsize=4)
def _bindings(items: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, tuple[Entry, ...]]:
    return {
        name: _parse_all(texts, "bound", f"ORCHESTRA_CREDENTIAL_{name}_HOSTS")
        for name, texts in items
    }


def credential_bindings() -> dict[str, tuple[Entry, ...]]:
    """``{credential name: the entries it may be sent to}``, for the bound credentials."""
    hosts = settings.ORCHESTRA_CREDENTIAL_HOSTS
    return _bindings(tuple((name, tuple(texts)) for name, texts in sorted(hosts.items())))


def validate_settings() -> None:
    """Parse every entry of the settings (no DNS): a bad one stops start-up, naming its setting."""
    for setting in (
        "ORCHESTRA_OUTBOUND_ALLOW",
        "ORCHESTRA_OUTBOUND_DENY",
        "ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE",
    ):
        _parse_all(getattr(settings, setting), "", setting)
    credential_bindings()


def step_outbound_check(
    host: str,
    port: int,
    *,
    credentials_sent: frozenset[str] = frozenset(),
    addresses: list[IPAddress] | None = None,
) -> list[IPAddress]:
    """The check behind :meth:`plugins.base.StepContext.check_outbound`: the policy, then the
    host binding of every credential the step sends. Returns the addresses that pass both;
    ``addresses`` checks those (say, a pooled connection's peer) instead of resolving."""
    checked = outbound_policy().check(host, port, addresses)
    name = host.lower().rstrip(".")
    bindings = credential_bindings()
    for credential in sorted(credentials_sent & bindings.keys()):
        entries = bindings[credential]
        admitted = _admitted(entries, name, port, checked)
        if admitted is None:
            raise OutboundRefused(
                f"connection to {host}:{port} refused: credential {credential} may only be"
                f" sent to {', '.join(entry.text for entry in entries)}"
                f" (ORCHESTRA_CREDENTIAL_{credential}_HOSTS)"
            )
        checked = admitted
    return checked
