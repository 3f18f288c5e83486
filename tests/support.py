"""Helpers for tests that drive real worker processes, RabbitMQ and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 30,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def worker_database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class WorkerProcess:
    """A real ``celery worker`` process (prefork) against the test database and vhost."""

    def __init__(self, name: str, *, concurrency: int = 1, env: dict[str, str] | None = None):
        self.name = name
        self.concurrency = concurrency
        self.extra_env = env or {}
        self.process: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix=f"worker-{name}-", suffix=".log")[1])

    def start(self) -> WorkerProcess:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": worker_database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL_FOR_TESTS,
            **self.extra_env,
        }
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "orchestra",
            "worker",
            "-n",
            f"{self.name}@%h",
            "-c",
            str(self.concurrency),
            "-P",
            "prefork",
            "-Q",
            "test_runs_queue,orchestra_control",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "info",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            lambda: "ready." in self.log.read_text() or self.process.poll() is not None,
            timeout=60,
            message=f"worker {self.name} to be ready",
        )
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text()


class BeatProcess:
    """A real ``celery beat`` process driving the periodic sweeps for the tests."""

    def __init__(self, *, interval: float = 0.5, database_scheduler: bool = False) -> None:
        self.interval = interval
        self.database_scheduler = database_scheduler
        self.process: subprocess.Popen | None = None
        self.directory = Path(tempfile.mkdtemp(prefix="beat-"))
        self.log = self.directory / "beat.log"

    def start(self) -> BeatProcess:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": worker_database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL_FOR_TESTS,
            "ORCHESTRA_SWEEP_INTERVAL_SECONDS": str(self.interval),
        }
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "orchestra",
            "beat",
            "-l",
            "info",
            "-s",
            str(self.directory / "schedule"),
            "--pidfile",
            str(self.directory / "pid"),
        ]
        if self.database_scheduler:  # what the Procfile runs: schedules live in PostgreSQL
            command += ["-S", "django_celery_beat.schedulers:DatabaseScheduler"]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            lambda: "beat: Starting" in self.log.read_text() or self.process.poll() is not None,
            timeout=30,
            message="beat to start",
        )
        if self.process.poll() is not None:
            raise RuntimeError(f"beat exited:\n{self.log.read_text()[-3000:]}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
