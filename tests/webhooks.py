"""A real webhook receiver for the notification tests: it checks each request's signature
the way docs/schedules-and-notifications.md tells receivers to."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from notifications.models import Channel

SECRET = "whsec-test-0123456789"
TOLERANCE_SECONDS = 300


def verify(secret: str, headers, body: bytes) -> bool:
    """The receiver's check, as in docs/schedules-and-notifications.md."""
    timestamp = headers.get("X-Orchestra-Timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(
        f"sha256={expected.hexdigest()}", headers.get("X-Orchestra-Signature", "")
    )


class Receiver:
    """A webhook receiver on a port reserved up front, started (up) or not (down)."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.events: list[dict] = []
        self.refused = 0
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if verify(SECRET, self.headers, body):
                    receiver.events.append(json.loads(body))
                    self.send_response(204)
                else:
                    receiver.refused += 1
                    self.send_response(401)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def of(self, event: str) -> list[dict]:
        return [body for body in self.events if body["event"] == event]


@pytest.fixture(name="receiver")
def receiver_fixture():
    started = Receiver()
    yield started
    started.down()


def webhook(url: str, events: list[str] | None = None) -> Channel:
    return Channel.objects.create(
        name=f"hook-{Channel.objects.count()}",
        url=url,
        secret=SECRET,
        **({"events": events} if events else {}),
    )
