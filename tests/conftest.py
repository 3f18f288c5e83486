from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from django.conf import settings
from kombu import Connection

from celeryconfig import CONTROL_QUEUE, RUNS_QUEUE, dead_letter_queue, task_queues
from tests.support import BeatProcess, WorkerProcess, wait_for


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True
    ).stdout


def _ensure_vhost() -> None:
    """Create this session's vhost; delete those left by test sessions that no longer run."""
    vhost = settings.TEST_BROKER_VHOST
    for existing in _rabbitmqctl("list_vhosts").split():
        session = existing.removeprefix("orchestra_test_")
        stale = existing.startswith("orchestra_test_") and session.isdigit()
        if stale and existing != vhost and not Path(f"/proc/{session}").exists():
            _rabbitmqctl("delete_vhost", existing)
    if vhost not in _rabbitmqctl("list_vhosts").split():
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


def broker_connection() -> Connection:
    return Connection(settings.CELERY_BROKER_URL_FOR_TESTS)


def purge_queues() -> None:
    with broker_connection() as conn:
        channel = conn.default_channel
        for queue in [*task_queues, dead_letter_queue]:
            bound = queue(channel)
            bound.declare()
            bound.purge()


def dead_letters(timeout: float = 15, count: int = 1) -> list:
    """Wait for ``count`` messages in the dead-letter queue and return them (acked)."""
    found = []
    with broker_connection() as conn:
        queue = dead_letter_queue(conn.default_channel)

        def collect():
            while (message := queue.get(no_ack=True)) is not None:
                found.append(message)
            return len(found) >= count

        wait_for(collect, timeout=timeout, message=f"{count} dead letter(s)")
    return found


@pytest.fixture(scope="session", autouse=True)
def rabbitmq_vhost():
    _ensure_vhost()
    purge_queues()
    yield
    _rabbitmqctl("delete_vhost", settings.TEST_BROKER_VHOST)


@pytest.fixture(scope="session")
def target_url():
    """Base URL of a local system under test (examples/target.py) served from a thread."""
    from examples.target import make_server

    server = make_server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def live_db(transactional_db):
    """Committed data that worker processes can see; waits for runs to settle afterwards."""
    yield
    from queue_catalog.models import QueueRecord
    from runs.models import TestRun

    def settled() -> bool:
        # Records first: a finishing record starts the next run of its lane.
        return not QueueRecord.objects.filter(status__in=["SCHEDULED", "RUNNING"]).exists() and (
            not TestRun.objects.filter(status__in=["QUEUED", "IN_PROGRESS"]).exists()
        )

    wait_for(settled, timeout=90, message="every record and run to finish before the next test")
    purge_queues()


@pytest.fixture(scope="module")
def workers(django_db_setup, django_db_blocker):
    """Two worker processes shared by the tests of one module."""
    started = [WorkerProcess(f"w{i}").start() for i in (1, 2)]
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def beat(django_db_setup):
    """A Celery beat process running the sweeps every half second."""
    process = BeatProcess(interval=0.5).start()
    yield process
    process.stop()


def make_api_client(role: str):
    """A DRF client authenticated by token as a new user in the ``viewers``/``operators`` group."""
    from django.contrib.auth.models import Group, User
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user = User.objects.create_user(f"{role}-{User.objects.count()}")
    user.groups.add(Group.objects.get(name=f"{role}s"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    client.user = user
    return client


@pytest.fixture
def api_client(transactional_db):
    """A DRF client authenticated with the token of an operator."""
    return make_api_client("operator")


@pytest.fixture
def viewer_client(transactional_db):
    """A DRF client authenticated with the token of a viewer (read only)."""
    return make_api_client("viewer")


@pytest.fixture
def worker_factory(django_db_setup):
    """Start workers owned by one test (to kill them); all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(name: str, **kwargs) -> WorkerProcess:
        worker = WorkerProcess(name, **kwargs).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


__all__ = ["CONTROL_QUEUE", "RUNS_QUEUE", "broker_connection", "dead_letters", "purge_queues"]
