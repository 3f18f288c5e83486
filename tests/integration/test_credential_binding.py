"""A credential bound to its hosts (ORCHESTRA_CREDENTIAL_<NAME>_HOSTS), through a real worker:
sent to its host the step passes; aimed anywhere else the step ends ERROR before connecting."""

from __future__ import annotations

import socket
import uuid

import pytest

from runs.models import TestRun
from runs.services import run_start
from tests.factories import make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration]


def finished(run_id: int) -> TestRun:
    run = TestRun.objects.get(id=run_id)

    def done() -> bool:
        run.refresh_from_db()
        return run.is_finished

    wait_for(done, timeout=30, message=f"run {run_id} to finish")
    return run


def authorized_step(name: str, url: str) -> dict:
    return {
        "name": name,
        "plugin": "http",
        "with": {
            "method": "POST",
            "url": url,
            "headers": {"Authorization": "Bearer {{ credentials.API_TOKEN }}"},
        },
        "expect": {"status": 200},
        "timeout": 5,  # without the binding the refused step would wait on the listener
    }


def test_a_bound_credential_reaches_its_host_and_is_refused_elsewhere(
    live_db, worker_factory, target_url
):
    token = f"canary-{uuid.uuid4().hex}"
    target_port = target_url.rsplit(":", 1)[1]
    elsewhere = socket.socket()  # listens, never accepts: any connection waits in its backlog
    elsewhere.bind(("127.0.0.1", 0))
    elsewhere.listen(16)
    elsewhere.setblocking(False)
    worker = worker_factory(
        "binding",
        env={
            "ORCHESTRA_CREDENTIAL_API_TOKEN": token,
            "ORCHESTRA_CREDENTIAL_API_TOKEN_HOSTS": f"127.0.0.1:{target_port}",
        },
    )
    scenario = make_scenario(
        [
            authorized_step("to its host", f"{target_url}/echo"),
            authorized_step("elsewhere", f"http://127.0.0.1:{elsewhere.getsockname()[1]}/"),
        ]
    )

    run = finished(run_start(scenario=scenario).id)

    assert run.status == "ERROR", run.error
    sent, refused = run.steps.order_by("position")
    assert sent.status == "PASSED", sent.error
    assert refused.status == "ERROR"
    assert refused.error == (
        f"connection to 127.0.0.1:{elsewhere.getsockname()[1]} refused: credential API_TOKEN"
        f" may only be sent to 127.0.0.1:{target_port} (ORCHESTRA_CREDENTIAL_API_TOKEN_HOSTS)"
    )
    assert [attempt["try"] for attempt in refused.tries] == [1]  # refused: never retried
    with pytest.raises(BlockingIOError):
        elsewhere.accept()  # not one connection reached it
    elsewhere.close()
    assert token not in worker.output()


def test_a_binding_of_an_unknown_credential_stops_the_worker_at_start_up(worker_factory):
    with pytest.raises(RuntimeError) as failed:
        worker_factory("unbound", env={"ORCHESTRA_CREDENTIAL_NOPE_HOSTS": "api.test"})

    assert "ORCHESTRA_CREDENTIAL_NOPE_HOSTS binds hosts to no credential" in str(failed.value)
