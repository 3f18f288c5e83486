"""The peers of ``bench/throttle.py``: what a Celery user writes against a rate-limited API.

- ``limited``: one request per task with Celery's ``rate_limit`` set to the API's limit divided
  by the number of workers (``BENCH_THROTTLE_PEER_RATE_LIMIT``, e.g. ``5/s``), since Celery's
  limit holds per worker (celery/celery#5732); a 429 is a failed run.
- ``retrying``: no rate limit; a 429 retries the task with exponential backoff and full jitter
  (0.5 s doubled per retry, ``MAX_RETRIES`` retries), then the run fails.

Each finished task writes one row (``ok``, ``finished_at``) to ``bench_throttle_peer``. Same broker
settings as orchestra (late acks, prefetch 1, JSON only, no results).
Run a worker with ``celery -A bench.throttle_peer worker`` from the repository root.
"""

from __future__ import annotations

import os
import random
import time

import httpx
import psycopg2
from celery import Celery

QUEUE = "bench_throttle_peer"
IDLE_QUEUE = "bench_throttle_peer_idle"
MAX_RETRIES = 8
BACKOFF_SECONDS = 0.5
TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS bench_throttle_peer"
    " (ok boolean NOT NULL, retries integer NOT NULL, finished_at double precision NOT NULL)"
)

app = Celery("bench_throttle_peer", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get(
        "CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/orchestra_bench_throttle"
    ),
    broker_connection_retry_on_startup=True,
    accept_content=["json"],
    task_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)
_connection = None
_client = httpx.Client(timeout=10)


def _record(ok: bool, retries: int) -> None:
    global _connection
    if _connection is None:
        _connection = psycopg2.connect(os.environ["BENCH_PEER_DSN"])
        _connection.autocommit = True
    with _connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_throttle_peer (ok, retries, finished_at) VALUES (%s, %s, %s)",
            [ok, retries, time.time()],
        )


@app.task(
    name="bench.throttle_peer.limited", rate_limit=os.environ.get("BENCH_THROTTLE_PEER_RATE_LIMIT")
)
def limited(url: str) -> None:
    """One request under Celery's per-worker rate limit; anything but 200 fails the run."""
    _record(_client.get(url).status_code == 200, 0)


@app.task(bind=True, name="bench.throttle_peer.retrying", max_retries=MAX_RETRIES)
def retrying(self, url: str) -> None:
    """One request; a 429 is retried after a jittered exponential backoff."""
    status = _client.get(url).status_code
    retries = self.request.retries
    if status == 429 and retries < MAX_RETRIES:
        raise self.retry(countdown=random.uniform(0, BACKOFF_SECONDS * 2**retries))
    _record(status == 200, retries)
