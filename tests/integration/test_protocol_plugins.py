"""The graphql, websocket and grpc plugins in real runs by a real worker: a credential each
sends (and the server echoes back, into captures and failed assertions) is in no table and no
log line; an unreachable server ends the run ERROR after the step's retries."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from runs.services import run_start
from tests.factories import make_scenario
from tests.integration.test_secrets import every_row_as_text, finished
from tests.protocols import GREETER, GraphqlServer, GrpcServer, WebSocketServer
from tests.support import WorkerProcess

pytestmark = [pytest.mark.integration]

TOKEN = f"canary-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict]:
    running = {"graphql": GraphqlServer(), "websocket": WebSocketServer(), "grpc": GrpcServer()}
    yield running
    for server in running.values():
        server.stop()


@pytest.fixture(scope="module")
def worker(django_db_setup) -> Iterator[WorkerProcess]:
    process = WorkerProcess("protocols", env={"ORCHESTRA_CREDENTIAL_PROTO_TOKEN": TOKEN}).start()
    yield process
    process.stop()


def steps_sending_the_token(plugin: str, servers: dict) -> list[dict]:
    """A step that sends the token and captures its echo, and one whose assertion quotes it."""
    secret = "{{ credentials.PROTO_TOKEN }}"
    if plugin == "graphql":
        step = {
            "url": servers["graphql"].url,
            "query": "{ whoami }",
            "headers": {"Authorization": secret},
        }
        path = "$.data.whoami"
    elif plugin == "websocket":
        step = {
            "url": f"{servers['websocket'].url}/headers",
            "headers": {"Authorization": secret},
            "send": {"json": {"token": secret}},
            "receive": {"count": 2},
        }
        path = "$[1].token"
    else:
        step = {
            "target": servers["grpc"].target,
            "method": f"{GREETER}/SayHello",
            "metadata": {"authorization": secret},
            "request": {"name": secret},
        }
        path = "$.authorization"
    return [
        {"name": "send", "plugin": plugin, "with": step, "capture": {"echo": path}},
        {"name": "quote", "plugin": plugin, "with": step, "expect": {"json": {path: "other"}}},
    ]


@pytest.mark.parametrize("plugin", ["graphql", "websocket", "grpc"])
def test_a_credential_sent_and_echoed_is_in_no_table_and_no_worker_log(
    live_db, worker, servers, plugin
):
    run = finished(run_start(scenario=make_scenario(steps_sending_the_token(plugin, servers))).id)

    assert run.status == "FAILED", run.error  # the second step's assertion, as planned
    sent, quoted = run.steps.order_by("position")
    assert sent.status == "PASSED" and sent.captures == {"echo": "[REDACTED]"}
    assert quoted.status == "FAILED" and "[REDACTED]" in quoted.error
    assert TOKEN not in every_row_as_text()
    assert TOKEN not in worker.output()


def unreachable_step(plugin: str, port: int) -> dict:
    params = {
        "graphql": {"url": f"http://127.0.0.1:{port}/graphql", "query": "{ whoami }"},
        "websocket": {"url": f"ws://127.0.0.1:{port}/", "send": {"text": "hello"}},
        "grpc": {"target": f"127.0.0.1:{port}", "method": f"{GREETER}/SayHello"},
    }[plugin]
    return {
        "name": "call",
        "plugin": plugin,
        "with": params,
        "retry": {"attempts": 2, "interval": 0},
    }


@pytest.mark.parametrize("plugin", ["graphql", "websocket", "grpc"])
def test_an_unreachable_server_ends_the_run_error_after_its_retries(live_db, worker, plugin):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = finished(run_start(scenario=make_scenario([unreachable_step(plugin, port)])).id)

    assert run.status == "ERROR"
    step = run.steps.get()
    assert step.status == "ERROR"
    assert [attempt["try"] for attempt in step.tries] == [1, 2]  # retryable: tried again


def test_a_grpc_status_is_a_failed_assertion_when_named_and_else_a_permanent_error(
    live_db, worker, servers
):
    call = {"target": servers["grpc"].target, "method": f"{GREETER}/Fail", "request": {}}
    retry = {"attempts": 3, "interval": 0}
    asserted = make_scenario(
        [{"name": "fail", "plugin": "grpc", "with": call, "expect": {"code": "NOT_FOUND"}}]
    )
    unexpected = make_scenario([{"name": "fail", "plugin": "grpc", "with": call, "retry": retry}])

    failed_run = finished(run_start(scenario=asserted).id)
    error_run = finished(run_start(scenario=unexpected).id)

    assert failed_run.status == "FAILED"
    assert "code is INVALID_ARGUMENT (name must not be empty), expected NOT_FOUND" in (
        failed_run.steps.get().error
    )
    assert error_run.status == "ERROR"
    step = error_run.steps.get()
    assert "ended INVALID_ARGUMENT: name must not be empty" in step.error
    assert [attempt["try"] for attempt in step.tries] == [1]  # permanent: not tried again
