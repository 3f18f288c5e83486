"""A data-driven launch of 10,000 rows in one request: how long ``POST /api/launches/`` takes.

The request goes through the whole Django stack in-process (middleware, DRF, the JSON parser
or the multipart upload, the serializer, ``launch_create``) against the bench database and a
real RabbitMQ vhost; it returns once the transaction committed and every run's message was
published (``runs_publish`` runs on commit, inside the request). No worker consumes: the runs
stay QUEUED, and the queues are purged between repetitions.

Per variant (a JSON ``data`` list, a CSV upload, and ``via_queue``), R repetitions of one
request with N rows; counted in the same request: the INSERT statements into the run and queue
tables (the brief's "one INSERT per batch": ``RUNS_PER_INSERT`` rows each) and the messages
that reached the broker (one per run; through the queue, one per lane's started head).

    .venv/bin/python bench/launches.py [--rows 10000] [--repeat 5] [--quick]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.throughput import Broker, ensure_database, ensure_vhost, log, migrate, spread  # noqa: E402

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/orchestra_bench_launches"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/orchestra_bench_launches"
DEFINITION = {"steps": [{"name": "wait", "plugin": "delay", "with": {"seconds": 0}}]}
TARGET_SECONDS = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="data rows in the request")
    parser.add_argument("--repeat", type=int, default=5, help="requests per variant")
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_LAUNCHES_DATABASE_URL", DEFAULT_DATABASE_URL),
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("BENCH_LAUNCHES_BROKER_URL", DEFAULT_BROKER_URL)
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeat = 200, 1
    return args


def rows(count: int) -> list[dict]:
    return [{"customer": f"c-{n:05d}", "plan": "pro" if n % 3 else "free"} for n in range(count)]


def reset(broker: Broker) -> None:
    from django.db import connection

    from celeryconfig import dead_letter_queue, task_queues

    broker.purge([*task_queues, dead_letter_queue])
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE queue_catalog_queuerun, queue_catalog_queuerecord, runs_stepresult,"
            " runs_testrun, launches_launch CASCADE"
        )


def published(broker: Broker) -> int:
    """Messages in the runs queue once RabbitMQ has taken in what was written: the request
    returns when the last messages left the socket (publishing without confirms), so the
    depth is read until it holds still for half a second (10 s at most)."""
    from celeryconfig import RUNS_QUEUE

    depth, deadline = broker.depth(RUNS_QUEUE)[0], time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = broker.depth(RUNS_QUEUE)[0]
        if now == depth:
            break
        depth = now
    return depth


def one_request(client, variant: str, scenario: str, data: list[dict]) -> tuple[float, int]:
    """Send the launch; its seconds and the number of INSERT statements it made."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import connection

    inserts = 0

    def counting(execute, sql, params, many, context):
        nonlocal inserts
        if sql.lstrip().upper().startswith("INSERT INTO") and (
            "runs_testrun" in sql[:60] or "queue_catalog_queuerecord" in sql[:60]
        ):
            inserts += 1
        return execute(sql, params, many, context)

    if variant == "csv":
        lines = ["customer,plan", *(f"{row['customer']},{row['plan']}" for row in data)]
        upload = SimpleUploadedFile("rows.csv", "\n".join(lines).encode(), "text/csv")
        body, kind = {"scenarios": [scenario], "data": upload}, "multipart"
    else:
        body = {"scenarios": [scenario], "data": data, "via_queue": variant == "via_queue"}
        kind = "json"
    with connection.execute_wrapper(counting):
        started = time.perf_counter()
        response = client.post("/api/launches/", body, format=kind)
        seconds = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"{variant}: {response.status_code} {response.content[:300]!r}")
    return seconds, inserts


def measure(args: argparse.Namespace, broker: Broker, client, scenario: str) -> dict:
    """R requests of each variant; seconds, statements and messages of each."""
    data = rows(args.rows)
    reset(broker)
    one_request(client, "json", scenario, data[:10])  # warm-up: connections, imports, caches
    figures = {}
    for variant in ("json", "csv", "via_queue"):
        samples = []
        for repetition in range(1, args.repeat + 1):
            reset(broker)
            seconds, inserts = one_request(client, variant, scenario, data)
            messages = published(broker)
            samples.append({"seconds": seconds, "inserts": inserts, "messages": messages})
            log(
                f"[{variant} {repetition}/{args.repeat}] {args.rows} rows in {seconds:.3f} s,"
                f" {inserts} INSERT statements, {messages} messages published"
            )
        figures[variant] = {
            "seconds": spread([round(s["seconds"], 3) for s in samples]),
            "rows_per_s": round(args.rows / min(s["seconds"] for s in samples), 1),
            "inserts": samples[-1]["inserts"],
            "messages": samples[-1]["messages"],
            "under_target": all(s["seconds"] < TARGET_SECONDS for s in samples),
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    env = {
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": args.broker_url,
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only-not-secret",
        "DJANGO_SETTINGS_MODULE": "orchestra.settings",
        "DJANGO_DEBUG": "true",  # plain HTTP from the in-process client, no HTTPS redirect
        "ALLOWED_HOSTS": "testserver",
        "ORCHESTRA_LAUNCH_MAX_RUNS": str(max(args.rows, 10_000)),
        "ORCHESTRA_API_MAX_BODY_BYTES": str(64 * args.rows + 65_536),
    }
    os.environ.update(env)
    ensure_database(args.database_url)
    ensure_vhost(args.broker_url)
    migrate({**os.environ})

    import django

    django.setup()
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from runs.services import RUNS_PER_INSERT, scenario_save

    broker = Broker(args.broker_url)
    try:
        scenario = scenario_save(name="bench-launch", definition=DEFINITION).name
        user = User.objects.filter(username="bench-launches").first()
        user = user or User.objects.create_superuser("bench-launches", password=None)
        client = APIClient()
        client.force_authenticate(user)
        figures = measure(args, broker, client, scenario)
    finally:
        reset(broker)
        broker.close()
    result = {
        "bench": "launches",
        "rows": args.rows,
        "repeat": args.repeat,
        "runs_per_insert": RUNS_PER_INSERT,
        "target_seconds": TARGET_SECONDS,
        **figures,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
