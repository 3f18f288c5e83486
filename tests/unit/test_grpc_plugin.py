"""The grpc plugin against a real grpcio server with reflection: unary and server-streaming
calls, status codes as errors or assertions, schemas from reflection or .proto files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from django.test import override_settings

from plugins.base import PluginError, StepContext
from plugins.grpc import GrpcPlugin
from tests.protocols import GREETER, GREETER_PROTO, PROTO_ROOT, GrpcServer, refusal_on_save
from tests.support import ROOT
from tests.unit.test_outbound_http import FakeDns


@pytest.fixture(scope="module")
def server() -> Iterator[GrpcServer]:
    running = GrpcServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def plugin() -> GrpcPlugin:
    return GrpcPlugin()


def context(timeout: float = 5.0) -> StepContext:
    return StepContext(run_id=1, step_name="step", timeout=timeout)


def call(plugin: GrpcPlugin, server: GrpcServer, method: str, timeout: float = 5.0, **params):
    params = {"target": server.target, "method": f"{GREETER}/{method}", **params}
    return plugin.execute(params, context(timeout))


def failed(assertions) -> list[str]:
    return [assertion.message for assertion in assertions if not assertion.passed]


def test_a_unary_call_through_reflection_passes_with_json_and_trailing_metadata(plugin, server):
    result = call(
        plugin, server, "SayHello", request={"name": "Ada"}, metadata={"authorization": "t-1"}
    )

    assert result.data == {"message": "Hello, Ada!", "authorization": "t-1"}
    assert result.fields["code"] == "OK"
    expect = {
        "json": {"$.message": "Hello, Ada!"},
        "trailing_metadata": {"x-served-by": "greeter"},
    }
    assert failed(plugin.check(expect, result)) == []
    assert plugin.capture("$.message", result) == "Hello, Ada!"
    assert result.response["trailing_metadata"]["x-served-by"] == "greeter"


def test_the_channel_dials_the_checked_address_of_a_name(plugin, server, monkeypatch):
    # grpc's own resolver does not know greeter.test: only the checked address reaches it.
    dns = FakeDns(monkeypatch, {"greeter.test": ["127.0.0.1"]})
    params = {"target": f"greeter.test:{server.port}", "method": f"{GREETER}/SayHello"}

    assert plugin.execute(params, context()).data["message"] == "Hello, !"
    assert dns.asked == ["greeter.test"]


def test_a_server_stream_gives_the_list_of_responses(plugin, server):
    result = call(plugin, server, "CountTo", request={"up_to": 3})

    assert result.data == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert failed(plugin.check({"json": {"$[2].n": 3}}, result)) == []


def test_a_failed_expectation_names_the_path_and_the_values(plugin, server):
    result = call(plugin, server, "SayHello", request={"name": "Ada"})

    assert failed(plugin.check({"json": {"$.message": "Hi"}}, result)) == [
        "$.message is 'Hello, Ada!', expected 'Hi'"
    ]
    assert failed(plugin.check({"trailing_metadata": {"x-served-by": "other"}}, result)) == [
        "trailing metadata x-served-by is 'greeter', expected 'other'"
    ]


def test_a_status_named_by_expect_code_is_an_assertion_otherwise_a_permanent_error(plugin, server):
    result = call(plugin, server, "Fail", request={})

    assert result.fields["code"] == "INVALID_ARGUMENT"
    assert failed(plugin.check({"code": "INVALID_ARGUMENT"}, result)) == []
    assert failed(plugin.check({"code": "NOT_FOUND"}, result)) == [
        "code is INVALID_ARGUMENT (name must not be empty), expected NOT_FOUND"
    ]
    with pytest.raises(PluginError, match="ended INVALID_ARGUMENT: name must") as caught:
        plugin.check({}, result)
    assert not caught.value.retryable


def test_a_deadline_exceeded_is_retryable_and_bounded_by_the_step(plugin, server):
    started = time.monotonic()
    result = call(plugin, server, "Slow", timeout=5, deadline=0.3)

    assert time.monotonic() - started < 2
    assert result.fields["code"] == "DEADLINE_EXCEEDED"
    with pytest.raises(PluginError) as caught:
        plugin.check({}, result)
    assert caught.value.retryable


def test_a_stop_request_cancels_the_call_promptly(plugin, server):
    step = context(timeout=30)
    params = {"target": server.target, "method": f"{GREETER}/Slow"}
    started = time.monotonic()
    threading.Timer(0.3, step.stop.set).start()
    with pytest.raises(PluginError, match="the run is stopping"):
        plugin.execute(params, step)
    assert time.monotonic() - started < 2


def test_an_unknown_method_or_a_request_that_does_not_fit_is_permanent(plugin, server):
    with pytest.raises(PluginError, match=r"has no method 'Nope' \(it has: CountTo") as caught:
        call(plugin, server, "Nope")
    assert not caught.value.retryable
    with pytest.raises(PluginError, match="reflection does not know service 'orchestra.Nope'"):
        plugin.execute({"target": server.target, "method": "orchestra.Nope/X"}, context())
    with pytest.raises(PluginError, match="request does not fit orchestra.test.HelloRequest"):
        call(plugin, server, "SayHello", request={"nickname": "x"})


def test_an_unreachable_server_is_a_retryable_error(plugin):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    params = {"target": f"127.0.0.1:{port}", "method": f"{GREETER}/SayHello"}
    with pytest.raises(PluginError, match="UNAVAILABLE") as caught:
        plugin.execute(params, context())
    assert caught.value.retryable


def test_the_outbound_policy_refuses_the_broker(plugin):
    with pytest.raises(PluginError, match="message broker"):
        plugin.execute({"target": "127.0.0.1:5672", "method": "a.B/C"}, context())


@override_settings(ORCHESTRA_GRPC_PROTO_ROOT=PROTO_ROOT)
def test_protos_compiled_at_run_time_serve_a_server_without_reflection(plugin):
    bare = GrpcServer(reflection_enabled=False)
    try:
        params = {"target": bare.target, "method": f"{GREETER}/SayHello"}
        with pytest.raises(PluginError, match="offers no reflection"):
            plugin.execute(params, context())
        result = plugin.execute(
            {**params, "protos": [GREETER_PROTO], "request": {"name": "Bo"}}, context()
        )
        assert result.data["message"] == "Hello, Bo!"
        with pytest.raises(PluginError, match="not a .proto file under the proto root"):
            plugin.execute({**params, "protos": ["../../plugins/x.proto"]}, context())
    finally:
        bare.stop()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ({"with": {"method": "a.B/C"}}, "with.target: required field is missing"),
        ({"with": {"target": "h:1", "method": "NoSlash"}}, "with.method: 'NoSlash' does not match"),
        ({"with": {"target": "h", "method": "a.B/C"}}, "with.target: 'h' does not match"),
        (
            {"with": {"target": "h:1", "method": "a.B/C"}, "expect": {"code": "FINE"}},
            "expect.code: 'FINE' is not one of",
        ),
        ({"with": {"target": "h:1", "method": "a.B/C", "deadline": 0}}, "with.deadline"),
    ],
)
def test_a_bad_block_is_refused_on_save_naming_the_step_and_field(block, problem):
    refusal = refusal_on_save({"name": "call", "plugin": "grpc", **block})
    assert "steps[0] (call)" in refusal and problem in refusal, refusal


# grpc-core reads its default roots once per process: the TLS call runs in a process of its own
# that trusts the test certificate from the start.
TLS_CALL = """
import os, socket, sys
import django
django.setup()
from plugins.base import StepContext
from plugins.grpc import GrpcPlugin
from tests.protocols import GREETER, GrpcServer

real = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: real(
    "127.0.0.1" if host == "tls.test" else host, *a, **k
)
server = GrpcServer(tls=(open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()))
step = StepContext(run_id=1, step_name="tls", timeout=5)
for host in ("tls.test", "127.0.0.1"):
    params = {"target": f"{host}:{server.port}", "method": f"{GREETER}/SayHello", "tls": True}
    try:
        print(host, GrpcPlugin().execute(params, step).data["message"])
    except Exception as exc:
        print(host, "refused:", exc)
server.stop()
"""


def test_tls_dials_the_checked_address_and_verifies_the_targets_name(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=tls.test"]
        + ["-addext", "subjectAltName=DNS:tls.test"],
        check=True,
        capture_output=True,
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(cert),
    }
    done = subprocess.run(
        [sys.executable, "-c", TLS_CALL, str(key), str(cert)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    lines = done.stdout.splitlines()
    assert lines[0] == "tls.test Hello, !", done.stdout + done.stderr
    # The bare address is not the certificate's name: the reflection call cannot connect.
    assert lines[1].startswith("127.0.0.1 refused: reflection failed: UNAVAILABLE"), done.stdout
