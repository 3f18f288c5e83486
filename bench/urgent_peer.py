"""The peer of ``bench/urgent.py``: Celery with its default settings, as a team would start.

One plain queue (no priorities), early acks, the default prefetch (4 per process). ``background``
stands for a short job (3 ms); ``urgent`` records how long it waited, from the moment it was
sent to the moment a worker started it, in the table ``bench_urgent_wait``.

Run a worker with ``celery -A bench.urgent_peer worker`` from the repository root.
"""

from __future__ import annotations

import os
import time

import psycopg2
from celery import Celery

QUEUE = "bench_urgent_peer"
IDLE_QUEUE = "bench_urgent_peer_idle"
BACKGROUND_SECONDS = 0.003
TABLE_SQL = "CREATE TABLE IF NOT EXISTS bench_urgent_wait (wait_ms double precision NOT NULL)"

app = Celery("bench_urgent_peer", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get(
        "CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/orchestra_bench"
    ),
    broker_connection_retry_on_startup=True,
    accept_content=["json"],
    task_serializer="json",
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)
_connection = None


def _database():
    global _connection
    if _connection is None:
        _connection = psycopg2.connect(os.environ["BENCH_PEER_DSN"])
        _connection.autocommit = True
    return _connection


@app.task(name="bench.urgent_peer.background")
def background() -> None:
    time.sleep(BACKGROUND_SECONDS)


@app.task(name="bench.urgent_peer.urgent")
def urgent(sent_at: float) -> None:
    wait_ms = (time.time() - sent_at) * 1000
    with _database().cursor() as cursor:
        cursor.execute("INSERT INTO bench_urgent_wait (wait_ms) VALUES (%s)", [wait_ms])
