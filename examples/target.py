"""A small HTTP service to run the example scenarios against (the "system under test").

    python examples/target.py --port 8081

Endpoints: ``POST /users`` (201, JSON ``{id, name}``), ``GET /users/{id}``, ``DELETE /users/{id}``,
``GET /flaky/{key}?fail=N`` (503 for the first N calls per key, then 200), ``GET /slow?seconds=S``,
``GET /health``, ``POST /echo`` (returns the request's headers and body),
``GET /redirect?to=URL`` (302 to URL), ``GET /tick?...`` (200; remembers each call's query).

Bodies that are hard to store, each call counted under ``key`` (``GET /hits/{key}`` tells how
many): ``GET /bodies/{kind}?key=K`` with kind one of :data:`BODIES` (NUL text, NaN JSON, PNG,
gzip, random bytes), ``GET /bodies/huge?bytes=N`` (N bytes of text, chunked unless ``length=1``),
``GET /bodies/drip?bytes=N&interval=S`` (the headers, then one byte every S seconds).

The order flow (``examples/order-flow.yaml``), when started with ``--shop-database`` and
``--shop-events``: ``POST /orders`` (JSON ``{item, quantity}``) inserts a row into the shop's
PostgreSQL table ``orders``, publishes ``order.created`` with the order on the shop's RabbitMQ
exchange ``shop``, and answers 201 with the order.

A rate-limited target, when started with ``--rate-limit R`` (requests per second) and ``--burst B``:
every request counts against one GCRA budget on the target's own clock, and one past it gets
``429`` with ``Retry-After`` in the form ``--retry-after`` names (:data:`RETRY_AFTER_FORMS`: whole
seconds, an HTTP date against the response's ``Date``, a value far too large, or a malformed one).
``--date-skew S`` sets the target's ``Date`` (and date-form ``Retry-After``) S seconds off, so a
client must measure a date against ``Date``, not against its own clock. ``--log PATH`` appends one
JSON line per request it saw (``time``: wall time, ``path``, ``query``, ``status``); that log is the
target's own evidence (``examples/target_evidence.py`` reads and judges it).
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import itertools
import json
import math
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO
from urllib.parse import parse_qs, urlparse


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: dict[int, dict] = {}
        self.ids = itertools.count(1)
        self.flaky_calls: dict[str, int] = {}
        self.ticks: list[tuple[float, dict[str, str]]] = []
        self.hits: dict[str, int] = {}


def _png() -> bytes:
    """A real 2x2 RGB PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    pixels = b"".join(b"\x00" + bytes([255, 0, 0, 0, 0, 255]) for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


#: kind -> (content type, body) of ``GET /bodies/{kind}``.
BODIES: dict[str, tuple[str, bytes]] = {
    "nul-text": ("text/plain; charset=utf-8", b"before\x00after"),
    "nan-json": (
        "application/json",
        b'{"value": NaN, "big": Infinity, "text": "a\\u0000b", "lone": "\\ud800"}',
    ),
    "png": ("image/png", _png()),
    "gzip": ("application/gzip", gzip.compress(b"compressed " * 100, mtime=0)),
    "random": ("application/x-protobuf", random.Random(10).randbytes(4096)),
}


#: form -> Retry-After value for a wait of ``seconds`` at the target's instant ``now`` (wall time).
RETRY_AFTER_FORMS: dict[str, Callable[[float, float], str]] = {
    "seconds": lambda seconds, now: str(math.ceil(seconds)),
    "date": lambda seconds, now: email.utils.formatdate(math.ceil(now + seconds), usegmt=True),
    "huge": lambda seconds, now: "86400",
    "malformed": lambda seconds, now: "soon, please",
}


class RateLimit:
    """GCRA over every request: ``rate`` per second, ``burst`` at once, on ``clock`` (wall time).

    One theoretical arrival time under a lock: a request conforms when it arrives no earlier
    than ``tat - (burst - 1) / rate``; a conforming one moves ``tat`` on by ``1 / rate``.
    """

    def __init__(
        self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.time
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.interval = 1 / rate
        self.tolerance = (burst - 1) * self.interval
        self.clock = clock
        self.tat = 0.0
        self.lock = threading.Lock()

    def admit(self) -> float | None:
        """None when the request may pass (it is counted); else the seconds until one may."""
        with self.lock:
            now = self.clock()
            tat = max(self.tat, now)
            if tat - now > self.tolerance:
                return tat - now - self.tolerance
            self.tat = tat + self.interval
            return None


class RequestLog:
    """One JSON line per request, appended and flushed as it is answered."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, path: str, query: dict[str, str], status: int) -> None:
        line = json.dumps({"time": time.time(), "path": path, "query": query, "status": status})
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class Shop:
    """The order flow's database and event exchange (see the module docstring)."""

    def __init__(self, database_url: str, events_url: str) -> None:
        import psycopg2
        from kombu import Connection, Exchange

        self._connect = lambda: psycopg2.connect(database_url)
        self._events = Connection(events_url)
        self._exchange = Exchange("shop", type="topic", durable=True)
        self._lock = threading.Lock()
        with self._connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text NOT NULL,"
                " quantity integer NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            )
        self._exchange(self._events.default_channel).declare()

    def place(self, item: str, quantity: int) -> dict:
        """Insert the order, then publish its event; the order as stored."""
        with self._connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO orders (item, quantity) VALUES (%s, %s) RETURNING id",
                [item, quantity],
            )
            order = {"id": cursor.fetchone()[0], "item": item, "quantity": quantity}
        with self._lock:
            producer = self._events.Producer()
            publish = self._events.ensure(producer, producer.publish, max_retries=3)
            publish(order, exchange=self._exchange, routing_key="order.created", serializer="json")
        return order


class Handler(BaseHTTPRequestHandler):
    state: State
    shop: Shop | None = None
    rate_limit: RateLimit | None = None
    retry_after: str = "seconds"
    date_skew: float = 0.0
    request_log: RequestLog | None = None
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header, by the target's (possibly skewed) clock."""
        return email.utils.formatdate(
            (time.time() if timestamp is None else timestamp) + self.date_skew, usegmt=True
        )

    def send_response(self, code: int, message: str | None = None) -> None:
        if self.request_log is not None:
            url = urlparse(self.path)
            query = {name: values[0] for name, values in parse_qs(url.query).items()}
            self.request_log.write(url.path, query, code)
        super().send_response(code, message)

    def parse_request(self) -> bool:
        # The limit comes before any endpoint: every request counts, whatever it asks for. False
        # tells the base class that an answer (the 429) was sent already.
        if not super().parse_request():
            return False
        wait = None if self.rate_limit is None else self.rate_limit.admit()
        if wait is None:
            return True
        self._discard_body()
        self._too_many(wait)
        return False

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def _too_many(self, wait: float) -> None:
        now = time.time() + self.date_skew
        data = json.dumps({"error": "too many requests", "wait": wait}).encode()
        self.send_response(429)
        self.send_header("Retry-After", RETRY_AFTER_FORMS[self.retry_after](wait, now))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send(self, status: int, body: object | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        if parts == ["health"]:
            return self._send(200, {"ok": True})
        if len(parts) == 2 and parts[0] == "users" and parts[1].isdigit():
            with self.state.lock:
                user = self.state.users.get(int(parts[1]))
            return self._send(200, user) if user else self._send(404, {"error": "not found"})
        if len(parts) == 2 and parts[0] == "flaky":
            fail = int(query.get("fail", ["2"])[0])
            with self.state.lock:
                calls = self.state.flaky_calls[parts[1]] = (
                    self.state.flaky_calls.get(parts[1], 0) + 1
                )
            if calls <= fail:
                return self._send(503, {"call": calls, "error": "temporarily unavailable"})
            return self._send(200, {"call": calls})
        if parts == ["tick"]:
            # Evidence of an execution, for the fault-injection checker: every call is kept.
            with self.state.lock:
                self.state.ticks.append((time.time(), {k: v[0] for k, v in query.items()}))
            return self._send(200, {"ticked": True})
        if parts == ["redirect"]:
            self.send_response(302)
            self.send_header("Location", query.get("to", ["/health"])[0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if len(parts) == 2 and parts[0] == "hits":
            with self.state.lock:
                return self._send(200, {"hits": self.state.hits.get(parts[1], 0)})
        if len(parts) == 2 and parts[0] == "bodies":
            with self.state.lock:
                key = query.get("key", [""])[0]
                self.state.hits[key] = self.state.hits.get(key, 0) + 1
            return self._hard_body(parts[1], query)
        if parts == ["slow"]:
            time.sleep(float(query.get("seconds", ["1"])[0]))
            return self._send(200, {"slept": True})
        return self._send(404, {"error": "no such endpoint"})

    def _hard_body(self, kind: str, query: dict[str, list[str]]) -> None:
        if kind in BODIES:
            content_type, data = BODIES[kind]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        size = int(query.get("bytes", ["1"])[0])
        chunked = not (kind == "huge" and query.get("length") == ["1"])
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        interval = float(query.get("interval", ["1"])[0]) if kind == "drip" else 0
        piece = 1 if kind == "drip" else 65536
        try:
            for start in range(0, size, piece):
                data = b"a" * min(piece, size - start)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                self.wfile.flush()
                time.sleep(interval)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up, as it should on a huge or dripping body
        self.close_connection = True

    def do_POST(self) -> None:
        parts = [p for p in urlparse(self.path).path.split("/") if p]
        body = self._body()
        if parts == ["users"]:
            if not isinstance(body, dict) or not body.get("name"):
                return self._send(400, {"error": "name is required"})
            with self.state.lock:
                user = {"id": next(self.state.ids), "name": body["name"]}
                self.state.users[user["id"]] = user
            return self._send(201, user)
        if parts == ["echo"]:
            return self._send(200, {"headers": dict(self.headers.items()), "body": body})
        if parts == ["orders"]:
            return self._order(body)
        return self._send(404, {"error": "no such endpoint"})

    def _order(self, body: object) -> None:
        if self.shop is None:
            return self._send(503, {"error": "started without --shop-database/--shop-events"})
        valid = isinstance(body, dict) and isinstance(body.get("item"), str)
        if not valid or not isinstance(body.get("quantity"), int) or body["quantity"] < 1:
            return self._send(400, {"error": "item (text) and quantity (>= 1) are required"})
        return self._send(201, self.shop.place(body["item"], body["quantity"]))

    def do_DELETE(self) -> None:
        parts = [p for p in urlparse(self.path).path.split("/") if p]
        if len(parts) == 2 and parts[0] == "users" and parts[1].isdigit():
            with self.state.lock:
                removed = self.state.users.pop(int(parts[1]), None)
            return self._send(204) if removed else self._send(404, {"error": "not found"})
        return self._send(404, {"error": "no such endpoint"})


def make_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    shop: Shop | None = None,
    rate_limit: RateLimit | None = None,
    retry_after: str = "seconds",
    date_skew: float = 0.0,
    request_log: RequestLog | None = None,
) -> ThreadingHTTPServer:
    """A target server bound to ``host:port`` (port 0 picks a free one); call serve_forever().
    With ``rate_limit`` it answers 429 past it, ``Retry-After`` in the ``retry_after`` form."""
    if retry_after not in RETRY_AFTER_FORMS:
        raise ValueError(f"retry_after must be one of {sorted(RETRY_AFTER_FORMS)}")
    handler = type(
        "BoundHandler",
        (Handler,),
        {
            "state": State(),
            "shop": shop,
            "rate_limit": rate_limit,
            "retry_after": retry_after,
            "date_skew": date_skew,
            "request_log": request_log,
        },
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--shop-database", help="PostgreSQL URL of the order flow's database")
    parser.add_argument("--shop-events", help="AMQP URL of the order flow's RabbitMQ vhost")
    parser.add_argument("--rate-limit", type=float, help="requests per second, then 429")
    parser.add_argument("--burst", type=int, default=1, help="requests at once (with --rate-limit)")
    parser.add_argument("--retry-after", choices=sorted(RETRY_AFTER_FORMS), default="seconds")
    parser.add_argument("--date-skew", type=float, default=0.0, help="seconds the Date is off")
    parser.add_argument("--log", help="append one JSON line per request to this file")
    args = parser.parse_args()
    shop = None
    if args.shop_database and args.shop_events:
        shop = Shop(args.shop_database, args.shop_events)
    server = make_server(
        args.host,
        args.port,
        shop=shop,
        rate_limit=None if args.rate_limit is None else RateLimit(args.rate_limit, args.burst),
        retry_after=args.retry_after,
        date_skew=args.date_skew,
        request_log=None if args.log is None else RequestLog(open(args.log, "a")),  # noqa: SIM115
    )
    print(f"target listening on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()
