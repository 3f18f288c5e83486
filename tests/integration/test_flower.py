"""Flower shows the workers to those with the credentials and refuses everyone else."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from django.conf import settings

from tests.support import ROOT, wait_for, worker_database_url

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def flower(tmp_path):
    port = free_port()
    log = tmp_path / "flower.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL_FOR_TESTS,
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "orchestra",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--basic-auth=watcher:s3cret-pass",
            "--inspect_timeout=2000",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def answering():
        try:
            return httpx.get(base + "/healthcheck", timeout=1).status_code in (200, 401)
        except httpx.TransportError:
            return process.poll() is not None

    wait_for(answering, timeout=30, message="flower to answer")
    assert process.poll() is None, log.read_text()
    yield base
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=10)


def test_flower_lists_the_workers_with_credentials_and_refuses_without(flower, workers):
    assert httpx.get(flower + "/", timeout=5).status_code == 401
    assert httpx.get(flower + "/api/workers", timeout=5).status_code == 401
    assert httpx.get(flower + "/", auth=("watcher", "wrong"), timeout=5).status_code == 401

    def listed():
        response = httpx.get(
            flower + "/api/workers",
            params={"refresh": "true"},
            auth=("watcher", "s3cret-pass"),
            timeout=10,
        )
        assert response.status_code == 200
        names = set(response.json())
        return {f"{w.name}@" for w in workers} <= {name.split("@")[0] + "@" for name in names}

    wait_for(listed, timeout=30, interval=1, message="flower to list both workers")
    page = httpx.get(flower + "/workers", auth=("watcher", "s3cret-pass"), timeout=10)
    assert page.status_code == 200


HOUSEKEEPING = {
    "runs.sweep_runs",
    "runs.collect_dead_letters",
    "queue_catalog.sweep_queue",
    "queue_catalog.purge_runs",
}


def _flower_tasks(flower: str) -> dict:
    response = httpx.get(flower + "/api/tasks", auth=("watcher", "s3cret-pass"), timeout=10)
    assert response.status_code == 200
    return response.json()


def _sweeps_executed(workers) -> int:
    return sum(worker.output().count("Task runs.sweep_runs[") for worker in workers)


def test_flower_lists_a_run_by_its_scenario_name_and_no_housekeeping(flower, workers, beat):
    from orchestra.celery import app
    from runs.services import run_start
    from tests.factories import make_scenario

    scenario = make_scenario(name="create-and-fetch-user")
    labels = set()

    def a_run_listed() -> bool:
        # What `-E` does at start (Flower sends it too, every few seconds): task events on.
        app.control.enable_events()
        run = run_start(scenario=scenario)
        labels.add(f"run {run.id} · create-and-fetch-user")
        inner = time.monotonic() + 5
        while time.monotonic() < inner:
            if labels & {t["name"] for t in _flower_tasks(flower).values()}:
                return True
            time.sleep(0.5)
        return False

    wait_for(a_run_listed, timeout=90, interval=0, message="flower to list a run's task")
    # The sweeps go on every half second with events on; let a few more execute.
    sweeps = _sweeps_executed(workers)
    wait_for(lambda: _sweeps_executed(workers) >= sweeps + 3, timeout=30, message="more sweeps")

    names = {task["name"] for task in _flower_tasks(flower).values()}
    assert names and names <= labels, names
    assert not names & HOUSEKEEPING
