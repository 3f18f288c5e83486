"""The http plugin connects only where the outbound check said it may: DNS rebinding, pooled
connections, redirects and credential host bindings, seen from the servers' side."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import override_settings

from plugins.base import PluginError, StepContext
from plugins.http import HttpPlugin
from plugins.outbound import OutboundRefused

CANARY = "canary-0f9c2d"  # the value of API_TOKEN in these tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools the connection
    server: Recorder

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers)))
        body = json.dumps({"at": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Recorder(ThreadingHTTPServer):
    """An HTTP server that records every connection it accepts and every request it reads."""

    daemon_threads = True

    def __init__(self, host: str, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.connections = 0
        super().__init__((host, port), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def get_request(self):
        self.connections += 1
        return super().get_request()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Listener:
    """A socket that listens and never accepts: a connection attempt waits in its backlog."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.socket = socket.socket()
        self.socket.bind((host, port))
        self.socket.listen(16)
        self.socket.setblocking(False)
        self.port = self.socket.getsockname()[1]
        self.seen = 0

    def connections(self) -> int:
        """How many connections ever reached it (the kernel completes them before accept)."""
        while True:
            try:
                connection, _ = self.socket.accept()
            except BlockingIOError:
                return self.seen
            connection.close()
            self.seen += 1


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    yield listening
    listening.socket.close()


def step(*credentials: str, timeout: float = 3.0) -> StepContext:
    return StepContext(
        run_id=1, step_name="step", timeout=timeout, credentials_sent=frozenset(credentials)
    )


class FakeDns:
    """Answers for some names, in order (the last answer repeats); real DNS for the rest."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def getaddrinfo(self, host, port, *args, **kwargs):
        if host not in self.answers:
            return self._real(host, port, *args, **kwargs)
        self.asked.append(host)
        queue = self.answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return self._real(address, port, *args, **kwargs)


@pytest.fixture
def same_port_pair() -> Iterator[tuple[Listener, Recorder]]:
    """A denied listener on 127.0.0.1:P and an allowed server on 127.0.0.2:P, same port P."""
    denied = Listener("127.0.0.1")
    allowed = Recorder("127.0.0.2", denied.port)
    with override_settings(ORCHESTRA_OUTBOUND_DENY=[f"127.0.0.1:{denied.port}"]):
        yield denied, allowed
    allowed.stop()
    denied.socket.close()


def test_a_name_that_rebinds_after_the_check_is_never_connected_to(monkeypatch, same_port_pair):
    denied, allowed = same_port_pair
    # The first answer passes the policy; every later one points at the denied address.
    dns = FakeDns(monkeypatch, {"rebind.test": ["127.0.0.2", "127.0.0.1"]})

    result = HttpPlugin().execute({"url": f"http://rebind.test:{denied.port}/hello"}, step())

    assert result.data == {"at": "/hello"}
    assert denied.connections() == 0
    [(path, headers)] = allowed.requests
    assert (path, headers["Host"]) == ("/hello", f"rebind.test:{denied.port}")
    assert dns.asked == ["rebind.test"]  # resolved once, by the check


@override_settings(ORCHESTRA_CREDENTIAL_HOSTS={"API_TOKEN": ["127.0.0.1"]})
def test_a_pooled_connection_carries_a_request_only_if_its_address_passes_that_request(
    monkeypatch, same_port_pair
):
    denied, allowed = same_port_pair
    plugin = HttpPlugin()
    dns = FakeDns(monkeypatch, {"pooled.test": ["127.0.0.2"]})
    url = f"http://pooled.test:{denied.port}/"
    with override_settings(ORCHESTRA_OUTBOUND_DENY=[]):
        plugin.execute({"url": url}, step())
        plugin.execute({"url": url}, step())
        assert (allowed.connections, len(allowed.requests)) == (1, 2)  # the pool works
        dns.answers["pooled.test"] = ["127.0.0.1"]  # now the name points where API_TOKEN may go

        with pytest.raises(OutboundRefused, match="credential API_TOKEN may only be sent to"):
            plugin.execute(
                {"url": url, "headers": {"Authorization": f"Bearer {CANARY}"}}, step("API_TOKEN")
            )

    assert len(allowed.requests) == 2
    assert CANARY not in json.dumps(allowed.requests)
    assert denied.connections() == 0


@override_settings(
    ORCHESTRA_CREDENTIALS={"API_TOKEN": CANARY},
    ORCHESTRA_CREDENTIAL_HOSTS={"API_TOKEN": ["localhost"]},
)
def test_a_bound_credential_goes_to_its_host_and_nowhere_else(target_url, listener):
    plugin = HttpPlugin()
    port = target_url.rsplit(":", 1)[1]
    headers = {"Authorization": f"Bearer {CANARY}"}

    sent = plugin.execute({"url": f"http://localhost:{port}/health", "headers": headers}, step())
    assert sent.data == {"ok": True}
    bound = step("API_TOKEN")
    assert plugin.execute({"url": f"http://localhost:{port}/health"}, bound).data == {"ok": True}
    for url in (f"http://127.0.0.1:{listener.port}/", f"http://127.0.0.1:{port}/health"):
        with pytest.raises(OutboundRefused) as refused:
            plugin.execute({"url": url, "headers": headers}, bound)
        assert "credential API_TOKEN may only be sent to localhost" in str(refused.value)
        assert CANARY not in str(refused.value)
        assert refused.value.retryable is False
    assert listener.connections() == 0
    # A credential without a binding may go anywhere the policy allows.
    other = plugin.execute({"url": f"{target_url}/health"}, step("OTHER"))
    assert other.data == {"ok": True}


def test_a_redirect_cannot_take_a_bound_credential_elsewhere(target_url, listener):
    target_port = target_url.rsplit(":", 1)[1]
    redirect = f"{target_url}/redirect?to=http://127.0.0.1:{listener.port}/"

    with (
        override_settings(ORCHESTRA_CREDENTIAL_HOSTS={"API_TOKEN": [f"127.0.0.1:{target_port}"]}),
        pytest.raises(OutboundRefused, match=f":{listener.port} refused: credential API_TOKEN"),
    ):
        HttpPlugin().execute({"url": redirect, "follow_redirects": True}, step("API_TOKEN"))

    assert listener.connections() == 0


def test_a_redirect_to_a_denied_address_is_refused_before_connecting(target_url, listener):
    redirect = f"{target_url}/redirect?to=http://127.0.0.1:{listener.port}/"

    with (
        override_settings(ORCHESTRA_OUTBOUND_DENY=[f"127.0.0.1:{listener.port}"]),
        pytest.raises(OutboundRefused, match="it is in ORCHESTRA_OUTBOUND_DENY"),
    ):
        HttpPlugin().execute({"url": redirect, "follow_redirects": True}, step())

    assert listener.connections() == 0


def test_a_request_without_a_step_is_refused(listener):
    client = HttpPlugin()._client

    with pytest.raises(OutboundRefused, match="no step context"):
        client.get(f"http://127.0.0.1:{listener.port}/")

    assert listener.connections() == 0


@pytest.fixture
def tls_server(tmp_path, monkeypatch) -> Iterator[tuple[Recorder, list[str]]]:
    """An HTTPS server on 127.0.0.1 whose certificate names only tls.test, trusted by httpx."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=tls.test"]
        + ["-addext", "subjectAltName=DNS:tls.test"],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read when the plugin builds its transport
    names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda connection, name, _: names.append(name)
    server = Recorder("127.0.0.1", tls=context)
    yield server, names
    server.stop()


def test_https_connects_to_the_checked_address_and_verifies_the_name(tls_server, monkeypatch):
    server, names = tls_server
    FakeDns(monkeypatch, {"tls.test": ["127.0.0.1"]})
    plugin = HttpPlugin()

    result = plugin.execute({"url": f"https://tls.test:{server.port}/secure"}, step())

    assert result.data == {"at": "/secure"}
    assert names == ["tls.test"]  # SNI is the URL's name, not the address connected to
    assert server.requests[0][1]["Host"] == f"tls.test:{server.port}"
    # The certificate is checked against the name: the bare address does not match it.
    with pytest.raises(PluginError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        plugin.execute({"url": f"https://127.0.0.1:{server.port}/secure"}, step())


def test_an_unresolvable_name_is_a_retryable_connection_error():
    with pytest.raises(PluginError, match="failed") as caught:
        HttpPlugin().execute({"url": "http://no-such-host.invalid/"}, step())

    assert caught.value.retryable
    assert not isinstance(caught.value, OutboundRefused)


def test_a_proxy_from_the_environment_is_not_used(monkeypatch, target_url, listener):
    """A proxy would resolve and connect on its own, past the check."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{listener.port}")

    result = HttpPlugin().execute({"url": f"{target_url}/health"}, step(timeout=2))

    assert result.data == {"ok": True}
    assert listener.connections() == 0
