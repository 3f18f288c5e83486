"""Bodies as plugins store them (plugins.bodies), and how the http plugin reads a response:
streamed, bounded by ORCHESTRA_MAX_RESPONSE_BYTES, within the step's total deadline, and
interrupted when the run must stop."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
import tracemalloc
import uuid

import pytest
from django.test import override_settings

from examples.target import BODIES
from plugins.base import PluginError, StepContext
from plugins.bodies import binary_summary, decode_text, summarize
from plugins.http import HttpPlugin


@pytest.fixture(scope="module")
def plugin():
    return HttpPlugin()


def context(timeout: float = 5.0, **kwargs) -> StepContext:
    return StepContext(run_id=1, step_name="step", timeout=timeout, **kwargs)


# --- plugins.bodies ---


@pytest.mark.parametrize(
    ("content", "content_type", "text"),
    [
        (b'{"a": 1}', "application/json", '{"a": 1}'),
        ("héllo".encode(), "text/plain; charset=utf-8", "héllo"),
        ("héllo".encode("latin-1"), "text/html; charset=ISO-8859-1", "héllo"),
        (b"before\x00after", "text/plain", "before\x00after"),  # declared text: kept
        (b"plain words\n", "", "plain words\n"),
        (b"<a/>", "application/atom+xml", "<a/>"),
        (b"x", "text/plain; charset=no-such-charset", "x"),
    ],
    ids=["json", "utf-8", "latin-1", "nul-in-text", "undeclared", "xml-suffix", "bad-charset"],
)
def test_a_text_body_is_its_text(content, content_type, text):
    assert decode_text(content, content_type) == text
    assert summarize(content, content_type) == text


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (BODIES["png"][1], "image/png"),
        (BODIES["gzip"][1], "application/gzip"),
        (BODIES["random"][1], "application/x-protobuf"),
        (b"\x08\x96\x01", ""),  # protobuf bytes, valid UTF-8, but control characters
        (b"caf\xe9", "application/json"),  # declared JSON, not UTF-8
        (b"ascii only", "application/octet-stream"),
    ],
    ids=["png", "gzip", "random", "controls", "undecodable", "octet-stream"],
)
def test_a_binary_or_undecodable_body_is_a_summary_never_lossy_text(content, content_type):
    assert decode_text(content, content_type) is None
    summary = summarize(content, content_type)

    assert summary == {
        "content_type": content_type,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "preview_base64": base64.b64encode(content[:48]).decode(),
    }
    assert summary == binary_summary(content, content_type)


@override_settings(ORCHESTRA_MAX_STORED_BODY_CHARS=10)
def test_a_long_text_body_is_cut_in_its_summary():
    assert summarize(b"a" * 20, "text/plain") == "a" * 10 + "…"


# --- what the http plugin returns for hard bodies (examples/target.py) ---


@pytest.mark.parametrize("kind", ["png", "gzip", "random"])
def test_a_binary_response_is_summarised_and_has_no_document(plugin, target_url, kind):
    content_type, content = BODIES[kind]

    result = plugin.execute({"url": f"{target_url}/bodies/{kind}"}, context())

    assert result.response["body"] == binary_summary(content, content_type)
    assert result.response["body"]["sha256"] == hashlib.sha256(content).hexdigest()
    assert result.data is None and result.fields["body"] is None
    [assertion] = plugin.check({"body_contains": "IHDR"}, result)
    assert (assertion.passed, assertion.message) == (False, "the response body is binary, not text")


def test_text_with_nul_and_json_with_nan_are_returned_as_they_came(plugin, target_url):
    text = plugin.execute({"url": f"{target_url}/bodies/nul-text"}, context())
    document = plugin.execute({"url": f"{target_url}/bodies/nan-json"}, context())

    assert text.response["body"] == "before\x00after"
    assert plugin.check({"body_contains": "after"}, text)[0].passed
    assert document.data["text"] == "a\x00b" and document.data["lone"] == "\ud800"
    assert document.data["value"] != document.data["value"]  # NaN


# --- the size limit ---

LIMIT = 1024 * 1024


@override_settings(ORCHESTRA_MAX_RESPONSE_BYTES=LIMIT)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_ends_the_step_without_holding_it(plugin, target_url, declared):
    url = f"{target_url}/bodies/huge?bytes={64 * LIMIT}&length={int(declared)}"
    tracemalloc.start()
    try:
        with pytest.raises(PluginError, match=r"exceeds ORCHESTRA_MAX_RESPONSE_BYTES \(1048576"):
            plugin.execute({"url": url}, context())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 3 * LIMIT  # never the 64 MiB the server offered


@override_settings(ORCHESTRA_MAX_RESPONSE_BYTES=LIMIT)
def test_a_body_at_the_limit_is_read_whole(plugin, target_url):
    result = plugin.execute({"url": f"{target_url}/bodies/huge?bytes={LIMIT}"}, context())

    assert len(result.fields["body"]) == LIMIT


# --- the total deadline and the stop event ---


def test_a_dripping_body_ends_at_the_step_timeout(plugin, target_url):
    started = time.monotonic()

    with pytest.raises(PluginError, match=r"timed out after 2s") as caught:
        plugin.execute({"url": f"{target_url}/bodies/drip?bytes=100&interval=1"}, context(2))

    assert caught.value.retryable
    assert 1.9 < time.monotonic() - started < 3


@pytest.fixture
def dripping_headers_url():
    """A server that accepts, then sends its status line and headers one byte a second."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
                if stop.wait(1):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    stop.set()
    server.close()


def test_dripping_headers_end_at_the_step_timeout(plugin, dripping_headers_url):
    started = time.monotonic()

    with pytest.raises(PluginError, match=r"timed out after 2s"):
        plugin.execute({"url": dripping_headers_url}, context(2))

    assert time.monotonic() - started < 3


def test_the_context_deadline_bounds_connect_send_and_read_together(plugin, target_url):
    # Half of a 30 s step is already spent elsewhere (earlier tries): 0.5 s are left.
    started = time.monotonic()
    step = context(30, deadline=started + 0.5)

    with pytest.raises(PluginError, match="timed out"):
        plugin.execute({"url": f"{target_url}/slow?seconds=3"}, step)

    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("path", ["/slow?seconds=5", "/bodies/drip?bytes=100&interval=0.5"])
def test_a_stop_interrupts_the_request_in_flight(plugin, target_url, path):
    step = context(30)
    threading.Timer(0.3, step.stop.set).start()
    started = time.monotonic()

    with pytest.raises(PluginError, match="interrupted: the run is stopping") as caught:
        plugin.execute({"url": f"{target_url}{path}"}, step)

    assert time.monotonic() - started < 1
    assert caught.value.retryable is False


def test_a_stopped_request_leaves_the_plugin_usable(plugin, target_url):
    step = context(30)
    threading.Timer(0.2, step.stop.set).start()
    with pytest.raises(PluginError):
        plugin.execute({"url": f"{target_url}/slow?seconds=2"}, step)

    key = uuid.uuid4().hex
    result = plugin.execute({"url": f"{target_url}/flaky/{key}?fail=0"}, context())

    assert (result.fields["status"], result.data) == (200, {"call": 1})


def test_a_step_told_to_stop_before_sending_sends_nothing(plugin, target_url):
    key = uuid.uuid4().hex
    step = context()
    step.stop.set()

    with pytest.raises(PluginError, match="was not sent: the run is stopping"):
        plugin.execute({"url": f"{target_url}/bodies/png?key={key}"}, step)

    hits = plugin.execute({"url": f"{target_url}/hits/{key}"}, context())
    assert hits.data == {"hits": 0}
