"""The websocket plugin against a real websockets server: one-step exchanges, sessions kept as
run resources, listeners that keep what arrives before the await, close codes, and failures."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.sync.server import serve

from plugins.base import PluginError, StepContext
from plugins.resources import RunResources
from plugins.websocket import WebSocketPlugin
from tests.protocols import WebSocketServer, refusal_on_save
from tests.support import wait_for
from tests.unit.test_outbound_http import FakeDns


@pytest.fixture(scope="module")
def server() -> Iterator[WebSocketServer]:
    running = WebSocketServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def plugin() -> WebSocketPlugin:
    return WebSocketPlugin()


def context(resources: RunResources | None = None, timeout: float = 5.0) -> StepContext:
    return StepContext(
        run_id=1, step_name="step", timeout=timeout, resources=resources or RunResources()
    )


def failed(assertions) -> list[str]:
    return [assertion.message for assertion in assertions if not assertion.passed]


def test_one_step_sends_text_json_and_binary_and_receives_the_echoes(plugin, server):
    payload = bytes(range(256))
    params = {
        "url": f"{server.url}/echo",
        "subprotocols": ["chat.v1"],
        "send": [
            {"text": "hello"},
            {"json": {"op": "ping", "id": 7}},
            {"binary": base64.b64encode(payload).decode()},
        ],
        "receive": {"count": 3},
    }
    result = plugin.execute(params, context())

    assert result.data[:2] == ["hello", {"op": "ping", "id": 7}]
    assert result.data[2]["size"] == 256 and result.response["messages"][2]["type"] == "binary"
    assert result.fields["subprotocol"] == "chat.v1"
    expect = {"json": {"$[1].op": "ping", "$[2].size": 256}, "count": 3}
    assert failed(plugin.check(expect, result)) == []
    assert plugin.capture("$[1].id", result) == 7
    assert result.request["sent"][1] == '{"op": "ping", "id": 7}'
    # The one-step form leaves nothing open: the server saw the close.
    wait_for(lambda: ("/echo", 1000) in server.closed, timeout=5, message="the close")


def test_receive_keeps_the_matching_messages_and_counts_the_others(plugin, server):
    params = {"url": f"{server.url}/push?n=5", "receive": {"count": 2, "match": {"$.n": 3}}}
    short = plugin.execute({**params, "receive": {"match": {"$.n": 3}, "timeout": 0.3}}, context())

    assert short.data == [{"n": 3}] and short.fields["skipped"] == 4
    result = plugin.execute(params, context(timeout=0.5))
    # Only one message matches: the receive ends at the deadline and the count fails.
    assert failed(plugin.check({}, result)) == ["1 messages received, expected 2"]


def test_a_server_close_code_is_assertable(plugin, server):
    result = plugin.execute({"url": f"{server.url}/close?code=4001", "receive": {}}, context())

    assert result.data == [{"bye": True}]
    assert result.fields["close_code"] == 4001
    assert failed(plugin.check({"close_code": 4001, "count": 1}, result)) == []
    assert failed(plugin.check({"close_code": 1000}, result)) == [
        "close code is 4001, expected 1000"
    ]


def test_a_session_lives_across_steps_and_close_all_closes_it(plugin, server):
    resources = RunResources()
    plugin.execute({"url": f"{server.url}/echo?s=1", "as": "ws1"}, context(resources))
    plugin.execute({"session": "ws1", "send": {"json": {"step": 2}}}, context(resources))
    received = plugin.execute({"session": "ws1", "receive": {"count": 1}}, context(resources))

    assert received.data == [{"step": 2}]
    assert all(path != "/echo?s=1" for path, _ in server.closed)  # open across the steps
    assert resources.close_all() == []
    wait_for(lambda: ("/echo?s=1", 1000) in server.closed, timeout=5, message="the close")


def test_a_close_step_sends_its_code(plugin, server):
    resources = RunResources()
    plugin.execute({"url": f"{server.url}/echo?s=3", "as": "ws"}, context(resources))
    result = plugin.execute({"session": "ws", "close": {"code": 4100}}, context(resources))

    wait_for(lambda: ("/echo?s=3", 4100) in server.closed, timeout=5, message="the close")
    assert result.fields["close_code"] == 4100
    with pytest.raises(PluginError, match="the connection is closed") as caught:
        plugin.execute({"session": "ws", "send": {"text": "late"}}, context(resources))
    assert not caught.value.retryable  # a closed session stays closed
    assert resources.close_all() == []  # closing a closed session is harmless


def test_a_listener_on_a_url_keeps_messages_that_arrived_before_the_await(plugin, server):
    resources = RunResources()
    listener = plugin.listen({"url": f"{server.url}/push?n=3"}, context(resources))
    resources.add("pushes", listener)
    # All three were pushed on connect, before any await step started.
    wait_for(lambda: len(listener._messages) == 3, timeout=5, message="three pushes")

    first = plugin.execute({"await": "pushes", "match": {"$.n": 2}}, context(resources))
    rest = plugin.execute({"await": "pushes", "count": 2}, context(resources))

    assert first.data == [{"n": 2}]
    assert rest.data == [{"n": 0}, {"n": 1}]
    assert failed(plugin.check({"json": {"$[1].n": 1}}, rest)) == []
    resources.close_all()
    wait_for(lambda: ("/push?n=3", 1000) in server.closed, timeout=5, message="the close")


def test_a_listener_on_a_session_catches_the_echo_of_the_triggering_step(plugin, server):
    resources = RunResources()
    plugin.execute({"url": f"{server.url}/echo?s=2", "as": "ws"}, context(resources))
    resources.add("echoes", plugin.listen({"session": "ws"}, context(resources)))

    plugin.execute({"session": "ws", "send": {"json": {"order": 42}}}, context(resources))
    with pytest.raises(PluginError, match="read by a listener"):
        plugin.execute({"session": "ws", "receive": {}}, context(resources))
    awaited = plugin.execute({"await": "echoes", "match": {"$.order": 42}}, context(resources))

    assert awaited.data == [{"order": 42}]
    assert resources.close_all() == []
    wait_for(lambda: ("/echo?s=2", 1000) in server.closed, timeout=5, message="the close")


def test_an_await_that_falls_short_is_retryable(plugin, server):
    resources = RunResources()
    resources.add("quiet", plugin.listen({"url": f"{server.url}/echo"}, context(resources)))
    with pytest.raises(PluginError, match="0 of 1 matching messages") as caught:
        plugin.execute({"await": "quiet"}, context(resources, timeout=0.3))
    assert caught.value.retryable
    resources.close_all()


def test_receive_stops_promptly_when_the_run_is_told_to_stop(plugin, server):
    step = context(timeout=30)
    step.stop.set()
    started = time.monotonic()
    with pytest.raises(PluginError, match="the run is stopping"):
        plugin.execute({"url": f"{server.url}/echo", "receive": {}}, step)
    assert time.monotonic() - started < 2


def test_an_unreachable_server_is_a_retryable_error(plugin):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PluginError, match=f"cannot connect to ws://127.0.0.1:{port}/") as caught:
        plugin.execute({"url": f"ws://127.0.0.1:{port}/", "send": {"text": "x"}}, context())
    assert caught.value.retryable


def test_a_handshake_refused_by_an_http_server_is_permanent(plugin, target_url):
    url = target_url.replace("http://", "ws://") + "/missing"
    with pytest.raises(PluginError, match="handshake") as caught:
        plugin.execute({"url": url}, context())
    assert not caught.value.retryable


def test_the_outbound_policy_refuses_the_broker_and_an_unknown_session(plugin):
    with pytest.raises(PluginError, match="message broker"):
        plugin.execute({"url": "ws://127.0.0.1:5672/"}, context())
    with pytest.raises(PluginError, match="no resource named 'ws9'"):
        plugin.execute({"session": "ws9", "send": {"text": "x"}}, context())


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ({"send": {"text": "x"}}, "with.url: required field is missing"),
        ({"url": "http://x.test/"}, "with.url: 'http://x.test/' does not match"),
        ({"url": "ws://x.test/", "session": "a"}, "with: url and session cannot be used together"),
        ({"session": "a", "as": "b"}, "'url' is a dependency of 'as'"),
        ({"url": "ws://x.test/", "send": {"binary": "not base64!"}}, "with.send"),
        ({"url": "ws://x.test/", "receive": {"count": 0}}, "with.receive.count: 0 is less than"),
        ({"await": "l", "send": {"text": "x"}}, "await and send cannot be used together"),
    ],
)
def test_a_bad_block_is_refused_on_save_naming_the_step_and_field(block, problem):
    refusal = refusal_on_save({"name": "talk", "plugin": "websocket", "with": block})
    assert "steps[0] (talk)" in refusal and problem in refusal, refusal


@pytest.fixture
def wss_server(tmp_path, monkeypatch) -> Iterator[tuple[int, list[str]]]:
    """A wss:// echo server on 127.0.0.1 whose certificate names only tls.test (trusted)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=tls.test"]
        + ["-addext", "subjectAltName=DNS:tls.test"],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read when the plugin makes its context
    names: list[str] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda connection, name, _: names.append(name)

    def echo(connection) -> None:
        for message in connection:
            connection.send(message)

    server = serve(echo, "127.0.0.1", 0, ssl=tls, open_timeout=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.socket.getsockname()[1], names
    server.shutdown()


def test_wss_connects_to_the_checked_address_and_verifies_the_name(plugin, wss_server, monkeypatch):
    port, names = wss_server
    dns = FakeDns(monkeypatch, {"tls.test": ["127.0.0.1"]})
    params = {"url": f"wss://tls.test:{port}/", "send": {"text": "hi"}, "receive": {"count": 1}}

    assert plugin.execute(params, context()).data == ["hi"]
    assert dns.asked == ["tls.test"]  # resolved once, by the outbound check
    assert names == ["tls.test"]  # SNI is the URL's name, not the address connected to
    with pytest.raises(PluginError, match="certificate") as caught:
        plugin.execute({"url": f"wss://127.0.0.1:{port}/"}, context())
    assert not caught.value.retryable
