"""How long an urgent run waits behind a backlog of background runs, against default Celery.

orchestra: B one-step runs (``delay 0``) are started with priority ``background`` while the 2
worker processes are idle; the workers start draining them; one second later U urgent runs are
started, one every 0.25 s, and each one's wait is ``started_at - queued_at`` from the database.

Peer, in the same invocation on the same broker: Celery with its default settings (one plain
queue, default prefetch, early acks; ``bench/urgent_peer.py``), B background tasks of 3 ms
and then U urgent tasks the same way, each recording its own wait (sent to started).

    .venv/bin/python bench/urgent.py [--backlog 10000] [--urgent 20] [--repeat 3] [--quick]

The target is an orchestra p99 under 1 s. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

# Run as a script, bench/ comes first on sys.path, where bench/queue.py would shadow the standard
# library's queue module; the repository root takes its place.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.plotting import bar_chart  # noqa: E402
from bench.throughput import (  # noqa: E402 - the line above makes the package importable
    ROOT,
    Broker,
    Pool,
    ensure_database,
    ensure_vhost,
    log,
    migrate,
    percentile,
    spread,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/orchestra_bench_urgent"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/orchestra_bench_urgent"
DEFINITION = {"steps": [{"name": "wait", "plugin": "delay", "with": {"seconds": 0}}]}
URGENT_EVERY = 0.25


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--urgent", type=int, default=20, help="urgent runs per repetition")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes")
    parser.add_argument("--layout", choices=["2x1", "1x2"], default="2x1")
    parser.add_argument("--loglevel", default="warning")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_URGENT_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("BENCH_URGENT_BROKER_URL", DEFAULT_BROKER_URL)
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.backlog, args.urgent, args.repeat = 1000, 5, 1
    return args


def sql(statement: str, params: list | None = None) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.fetchall() if cursor.description else []


def waits_summary(waits_ms: list[float]) -> dict:
    ordered = sorted(waits_ms)
    return {
        "p50_ms": round(percentile(ordered, 50), 1),
        "p99_ms": round(percentile(ordered, 99), 1),
        "max_ms": round(ordered[-1], 1),
        "n": len(ordered),
    }


def orchestra_round(args, pool: Pool, broker: Broker, scenario) -> dict:
    from celeryconfig import dead_letter_queue, task_queues
    from runs.models import Priority
    from runs.services import run_start, runs_start

    broker.purge([*task_queues, dead_letter_queue])
    sql("TRUNCATE runs_stepresult, runs_testrun CASCADE")
    runs_start(scenario=scenario, payloads=[{}] * args.backlog, priority=Priority.BACKGROUND)
    pool.consume(True)
    try:
        time.sleep(1)  # the backlog is draining: the urgent runs arrive in the middle of it
        urgent_ids = []
        for _ in range(args.urgent):
            urgent_ids.append(run_start(scenario=scenario, priority=Priority.URGENT).id)
            time.sleep(URGENT_EVERY)
        deadline = time.monotonic() + 120
        while True:
            rows = sql(
                "SELECT EXTRACT(EPOCH FROM started_at - queued_at) * 1000 FROM runs_testrun"
                " WHERE id = ANY(%s) AND started_at IS NOT NULL",
                [urgent_ids],
            )
            if len(rows) == len(urgent_ids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the urgent runs did not start within 120 s")
            time.sleep(0.05)
        ((left,),) = sql("SELECT count(*) FROM runs_testrun WHERE status = 'QUEUED'")
    finally:
        pool.consume(False)
    return {**waits_summary([float(wait) for (wait,) in rows]), "backlog_left": left}


def peer_round(args, pool: Pool, broker: Broker) -> dict:
    from bench import urgent_peer

    channel = broker.channel
    for queue in (urgent_peer.QUEUE, urgent_peer.IDLE_QUEUE):
        channel.queue_declare(queue=queue, durable=True, auto_delete=False)
        channel.queue_purge(queue)
    sql(urgent_peer.TABLE_SQL)
    sql("TRUNCATE bench_urgent_wait")
    with urgent_peer.app.producer_or_acquire() as producer:
        for _ in range(args.backlog):
            urgent_peer.background.apply_async(producer=producer)
    pool.consume(True)
    try:
        time.sleep(1)
        for _ in range(args.urgent):
            urgent_peer.urgent.apply_async(args=[time.time()])
            time.sleep(URGENT_EVERY)
        deadline = time.monotonic() + 300
        while (count := sql("SELECT count(*) FROM bench_urgent_wait")[0][0]) < args.urgent:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count} urgent peer tasks ran within 300 s")
            time.sleep(0.05)
    finally:
        pool.consume(False)
        channel.queue_purge(urgent_peer.QUEUE)
    waits = [wait for (wait,) in sql("SELECT wait_ms FROM bench_urgent_wait")]
    return waits_summary(waits)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": args.broker_url,
        "BENCH_PEER_DSN": args.database_url.replace("postgres://", "postgresql://"),
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only-not-secret",
        "LOG_LEVEL": args.loglevel.upper(),
        "DJANGO_SETTINGS_MODULE": "orchestra.settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    os.environ.update(env)
    ensure_database(args.database_url)
    ensure_vhost(args.broker_url)
    migrate(env)

    import django

    django.setup()
    from bench import urgent_peer
    from celeryconfig import CONTROL_QUEUE, RUNS_QUEUE, dead_letter_queue, task_queues
    from orchestra.celery import app
    from runs.services import scenario_save

    scenario = scenario_save(name="bench-urgent", definition=DEFINITION)
    samples: dict[str, list[dict]] = {"orchestra": [], "peer": []}
    with ExitStack() as stack:
        broker = Broker(args.broker_url)
        stack.callback(broker.close)
        orchestra_pool = Pool("urgent-orchestra", app, RUNS_QUEUE, CONTROL_QUEUE)
        peer_pool = Pool("urgent-peer", urgent_peer.app, urgent_peer.QUEUE, urgent_peer.IDLE_QUEUE)
        for pool in (orchestra_pool, peer_pool):
            stack.callback(pool.stop)
        # Declared before any worker or watcher looks at them.
        broker.purge([*task_queues, dead_letter_queue])
        broker.channel.queue_declare(queue=urgent_peer.IDLE_QUEUE, durable=True, auto_delete=False)
        orchestra_pool.start("orchestra", env, args)
        peer_pool.start("bench.urgent_peer", env, args)
        orchestra_pool.wait_ready(broker)
        peer_pool.wait_ready(broker)
        log(f"workers ready ({args.layout} each)")
        for repetition in range(1, args.repeat + 1):
            sample = orchestra_round(args, orchestra_pool, broker, scenario)
            samples["orchestra"].append(sample)
            log(f"[{repetition}/{args.repeat}] orchestra {sample}")
            sample = peer_round(args, peer_pool, broker)
            samples["peer"].append(sample)
            log(f"[{repetition}/{args.repeat}] peer      {sample}")
        sql("TRUNCATE runs_stepresult, runs_testrun CASCADE")
        sql("DROP TABLE IF EXISTS bench_urgent_wait")

    result = {"bench": "urgent", "backlog": args.backlog, "urgent_per_round": args.urgent}
    for name, rows in samples.items():
        result[name] = {key: spread([row[key] for row in rows]) for key in ("p50_ms", "p99_ms")}
    result["p99_ratio_peer_to_orchestra"] = round(
        result["peer"]["p99_ms"]["median"] / max(result["orchestra"]["p99_ms"]["median"], 0.1), 1
    )
    result["target_met"] = result["orchestra"]["p99_ms"]["median"] < 1000
    log(
        f"urgent wait behind {args.backlog:,} background runs, median (min-max) of {args.repeat}:"
        f"\n  orchestra p50 {result['orchestra']['p50_ms']['median']} ms,"
        f" p99 {result['orchestra']['p99_ms']['median']} ms"
        f" ({result['orchestra']['p99_ms']['min']}-{result['orchestra']['p99_ms']['max']})"
        f"\n  Celery defaults p50 {result['peer']['p50_ms']['median']} ms,"
        f" p99 {result['peer']['p99_ms']['median']} ms"
        f" ({result['peer']['p99_ms']['min']}-{result['peer']['p99_ms']['max']})"
    )
    if args.plot:
        bar_chart(
            args.plot,
            [
                (
                    f"urgent run behind {args.backlog:,} background runs, p99",
                    "wait, ms (log)",
                    {
                        "orchestra": result["orchestra"]["p99_ms"]["median"],
                        "Celery defaults": result["peer"]["p99_ms"]["median"],
                    },
                )
            ],
            log_scale=True,
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
