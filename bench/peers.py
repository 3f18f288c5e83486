"""The two peers orchestra is measured against, with their own Celery app, queue and tables.

- ``bench.noop``: a bare Celery task that does nothing, the ceiling of the broker and Celery;
- ``bench.sleep``: a task that only sleeps (``--phases sleep``): the no-op's cost once a task
  lasts as long as a run;
- ``bench.handwritten``: what a user writes without orchestra: insert a run row, mark it in
  progress, insert one step row, mark the run passed. Four ORM writes, each its own commit.

Same broker settings as orchestra (late acks, prefetch 1, JSON only, no results), a plain
durable queue, and a sane Django set-up (``bench.peer_settings``) whose connections really
persist across tasks: Celery's Django fixup closes every connection before and after each task
unless ``CELERY_DB_REUSE_MAX`` is set, which costs a reconnect (~15 ms) per task.

The tables are created and dropped by ``bench/throughput.py`` with raw SQL (``PEER_TABLES_SQL``).
Run a worker with ``celery -A bench.peers worker -Q bench_peers`` from the repository root.
"""

from __future__ import annotations

import os
import time

import django
from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peer_settings")
# In the bench's own process Django is already set up with orchestra's settings; the peer models
# below carry an explicit app label, so they work under either.
django.setup()

from django.db import models  # noqa: E402
from django.utils import timezone  # noqa: E402

PEER_QUEUE = "bench_peers"
# Workers start consuming only this (always empty) queue; the bench adds PEER_QUEUE when it is full.
IDLE_QUEUE = "bench_peers_idle"

app = Celery("bench_peers", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get(
        "CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/orchestra_bench"
    ),
    broker_connection_retry_on_startup=True,
    broker_heartbeat=30,
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_queues=[
        Queue(PEER_QUEUE, Exchange(PEER_QUEUE, type="direct"), routing_key=PEER_QUEUE),
        Queue(IDLE_QUEUE, Exchange(PEER_QUEUE, type="direct"), routing_key=IDLE_QUEUE),
    ],
    task_default_queue=PEER_QUEUE,
    task_default_exchange=PEER_QUEUE,
    task_default_routing_key=PEER_QUEUE,
    # Keep database connections across tasks (Celery would otherwise reconnect for every task);
    # the fixup still recycles them every 1,000 tasks.
    CELERY_DB_REUSE_MAX=1000,
)

PEER_TABLES_SQL = """
CREATE TABLE IF NOT EXISTS bench_peer_run (
    id bigserial PRIMARY KEY,
    name varchar(200) NOT NULL,
    status varchar(16) NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    started_at timestamptz NULL,
    finished_at timestamptz NULL
);
CREATE TABLE IF NOT EXISTS bench_peer_step (
    id bigserial PRIMARY KEY,
    run_id bigint NOT NULL REFERENCES bench_peer_run (id) DEFERRABLE INITIALLY DEFERRED,
    position integer NOT NULL,
    name varchar(200) NOT NULL,
    status varchar(16) NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    duration_ms double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS bench_peer_step_run_id ON bench_peer_step (run_id);
"""
DROP_PEER_TABLES_SQL = "DROP TABLE IF EXISTS bench_peer_step, bench_peer_run"


class PeerRun(models.Model):
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)

    class Meta:
        app_label = "bench_peers"
        db_table = "bench_peer_run"
        managed = False

    def __str__(self) -> str:
        return f"{self.name} {self.status}"


class PeerStep(models.Model):
    run = models.ForeignKey(PeerRun, on_delete=models.CASCADE)
    position = models.IntegerField()
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    duration_ms = models.FloatField()

    class Meta:
        app_label = "bench_peers"
        db_table = "bench_peer_step"
        managed = False

    def __str__(self) -> str:
        return f"{self.name} {self.status}"


@app.task(name="bench.noop")
def noop() -> None:
    """Nothing at all: what Celery and RabbitMQ cost per task."""


@app.task(name="bench.sleep")
def sleep(seconds: float) -> None:
    """Nothing but waiting: what a task that lasts milliseconds costs Celery and RabbitMQ."""
    time.sleep(seconds)


@app.task(name="bench.handwritten")
def handwritten(payload: dict) -> None:
    """One run of one zero-second step, stored the way a user would write it by hand."""
    run = PeerRun.objects.create(name="bench-delay-0", status="QUEUED", payload=payload)
    run.status, run.started_at = "IN_PROGRESS", timezone.now()
    run.save(update_fields=["status", "started_at"])
    started = time.monotonic()
    step_started = timezone.now()
    PeerStep.objects.create(
        run=run,
        position=0,
        name="wait",
        status="PASSED",
        started_at=step_started,
        finished_at=timezone.now(),
        duration_ms=(time.monotonic() - started) * 1000,
    )
    run.status, run.finished_at = "PASSED", timezone.now()
    run.save(update_fields=["status", "finished_at"])
