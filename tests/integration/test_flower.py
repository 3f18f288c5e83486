"""Flower shows the workers to those with the credentials and refuses everyone else."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

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
