"""The fault-injection suite's target: it answers the chaos scenarios' steps and keeps its own
evidence of every request, by its own clock.

Every request of a chaos step carries, in its query, who sends it: the scenario's lane, the run
id and delivery attempt, the queue record id and start count, and the step. The target stores
that with the instants (``time.monotonic()``, the target's clock) at which it received the
request and at which it was done with it: the answer written, or the client gone. The checker
judges overlaps and stale senders from this alone, never from the times orchestra stores.

Endpoints: ``/tick`` (200; ``hold=S`` answers after S seconds, noticing a client that hangs up
meanwhile), ``/flaky/{key}?fail=N`` (503 for the first N calls per key, then 200) and
``/binary?kind=K&size=N`` (a body no text column takes as it is: random bytes, NULs, NaN,
invalid UTF-8, or a huge body, with or without a length).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import select
import socket
import threading
import time
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

BINARY_KINDS = ("random", "png", "nul", "json-nul", "nan", "invalid-utf8", "huge", "huge-chunked")
HUGE_KINDS = ("huge", "huge-chunked")
CHUNK = 16384


@dataclass
class Request:
    """One request as the target saw it."""

    path: str
    lane: str
    run: int | None
    attempt: int | None
    record: int | None
    start: int | None
    step: str
    received: float
    finished: float | None = None
    body_bytes: int = 0  # the size of the body it answered with (as declared, for huge ones)
    body_sha256: str = ""
    cut: bool = False  # the client hung up before the answer was complete


def _number(query: dict[str, list[str]], name: str) -> int | None:
    value = query.get(name, [""])[0]
    return int(value) if value.isdigit() else None


class Evidence:
    """Every request the target received, in the order it received them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.flaky_calls: dict[str, int] = {}

    def snapshot(self) -> list[Request]:
        """A copy of the evidence so far (requests still in flight have no ``finished``)."""
        with self.lock:
            return [replace(request) for request in self.requests]

    def in_flight(self) -> list[Request]:
        with self.lock:
            return [replace(r) for r in self.requests if r.finished is None]


class Handler(BaseHTTPRequestHandler):
    evidence: Evidence
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self) -> None:
        received = time.monotonic()
        url = urlparse(self.path)
        query = parse_qs(url.query)
        request = Request(
            path=url.path,
            lane=query.get("lane", [""])[0],
            run=_number(query, "run"),
            attempt=_number(query, "attempt"),
            record=_number(query, "record"),
            start=_number(query, "start"),
            step=query.get("step", [""])[0],
            received=received,
        )
        with self.evidence.lock:
            self.evidence.requests.append(request)
        try:
            self._answer(url.path, query, request)
        except OSError:  # the client hung up (a cut request, a body bigger than it reads)
            request.cut = True
            self.close_connection = True
        finally:
            request.finished = time.monotonic()

    def _answer(self, path: str, query: dict[str, list[str]], request: Request) -> None:
        parts = [p for p in path.split("/") if p]
        if parts == ["tick"]:
            if not self._hold(float(query.get("hold", ["0"])[0])):
                request.cut = True
                self.close_connection = True
                return
            return self._send(200, "application/json", b'{"ticked": true}', request)
        if len(parts) == 2 and parts[0] == "flaky":
            with self.evidence.lock:
                calls = self.evidence.flaky_calls[parts[1]] = (
                    self.evidence.flaky_calls.get(parts[1], 0) + 1
                )
            status = 503 if calls <= int(query.get("fail", ["1"])[0]) else 200
            return self._send(status, "application/json", json.dumps({"call": calls}).encode())
        if parts == ["binary"]:
            return self._binary(query["kind"][0], int(query["size"][0]), request)
        return self._send(404, "application/json", b'{"error": "no such endpoint"}')

    def _hold(self, seconds: float) -> bool:
        """Wait ``seconds`` before answering; False as soon as the client hangs up meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], left)
            if not readable:
                continue
            try:
                if not self.connection.recv(1, socket.MSG_PEEK):
                    return False
            except OSError:
                return False
            time.sleep(max(0.0, deadline - time.monotonic()))  # data, not a hang-up
        return True

    def _send(
        self, status: int, content_type: str, body: bytes, request: Request | None = None
    ) -> None:
        if request is not None:
            request.body_bytes = len(body)
            request.body_sha256 = hashlib.sha256(body).hexdigest()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _binary(self, kind: str, size: int, request: Request) -> None:
        # The same request (run, attempt, step) always gets the same body: replays reproduce.
        rng = random.Random(f"{request.run}:{request.attempt}:{request.step}:{kind}")
        if kind == "huge-chunked":
            return self._chunked(rng, size, request)
        if kind in ("random", "huge"):
            body, content_type = rng.randbytes(size), "application/octet-stream"
        elif kind == "png":
            body, content_type = b"\x89PNG\r\n\x1a\n" + rng.randbytes(size), "image/png"
        elif kind == "nul":
            body = b"\x00".join(rng.randbytes(8).hex().encode() for _ in range(size // 17 + 1))
            content_type = "text/plain; charset=utf-8"
        elif kind == "json-nul":
            body = json.dumps({"value": "before\x00after", "filler": "x" * size}).encode()
            content_type = "application/json"
        elif kind == "nan":
            body = json.dumps({"value": math.nan, "big": math.inf, "filler": "x" * size}).encode()
            content_type = "application/json"
        elif kind == "invalid-utf8":
            body = b"text \xff\xfe\xc3\x28 " * (size // 10 + 1)
            content_type = "text/plain; charset=utf-8"
        else:
            return self._send(400, "application/json", b'{"error": "unknown kind"}')
        return self._send(200, content_type, body, request)

    def _chunked(self, rng: random.Random, size: int, request: Request) -> None:
        """A huge body without a length: only reading it tells how big it is."""
        request.body_bytes = size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        left = size
        while left > 0:
            chunk = rng.randbytes(min(CHUNK, left))
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            left -= len(chunk)
        self.wfile.write(b"0\r\n\r\n")


def make_server(host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A chaos target bound to ``host:port`` (port 0 picks a free one); ``.evidence`` holds what it
    saw. Call serve_forever()."""
    handler = type("BoundHandler", (Handler,), {"evidence": Evidence()})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.evidence = handler.evidence
    return server
