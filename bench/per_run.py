"""Where one run's time goes, counted in a single process: round trips, commits, WAL, Python.

``throughput.py`` measures rates with real workers; this script explains them. It executes K
runs the way a worker does, but in this process and one after another, so that every database
round trip can be counted and timed without other processes in the way:

- **orchestra, worker side**: per run, what orchestra's task does (``close_old_connections``
  before and after, as ``orchestra.celery`` hooks it, then ``runs.executor.run_execute``);
- **orchestra, start side**: ``runs_start`` of K runs (one INSERT, K publishes, one UPDATE);
- **hand-written peer, worker side**: ``bench.peers.handwritten`` run in this process;
- **peer, start side**: K ``apply_async`` of it;
- **queue worker**: K records of one scenario's lane, each record's run executed as above;
  the run's end hands the lane to the next record (``queue_on_run_finished``: the record
  ``DONE``, the next one's run started and published), so this minus *orchestra worker* is
  what a queue hand-off costs.

Round trips are counted from what psycopg2 sends: every statement, the ``BEGIN`` it issues
before the first statement of a transaction, every ``COMMIT``, and Django's ``SELECT 1``
health check. WAL bytes are the server's (other databases' writes count too, so run it on a
quiet machine). Wall time is split into time waiting for PostgreSQL and the rest (Python);
CPU time is this process's (``cpu us``) and its PostgreSQL backend's (``pg cpu us``, read from
/proc: the server must run on this machine).

    .venv/bin/python bench/per_run.py [--runs 1000]

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path, where bench/queue.py would shadow the standard
# library's queue module; the repository root takes its place.
if Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.throughput import (  # noqa: E402
    DEFAULT_BROKER_URL,
    DEFAULT_DATABASE_URL,
    SCENARIO,
    SCENARIO_NAME,
    _proc_cpu,
    ensure_database,
    ensure_vhost,
    log,
    migrate,
)

_TABLES = ("runs_", "bench_")


class Counting:
    """Counts and times every round trip of Django's default connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.counts: Counter[str] = Counter()
        self.db_seconds = 0.0
        self.durable_commits = 0  # transactions that wrote, i.e. WAL flushes
        self.in_transaction = self.transaction_writes = False
        self._patch()

    def _patch(self) -> None:
        connection = self.connection
        commit, rollback, is_usable = connection._commit, connection._rollback, connection.is_usable

        def counted_commit() -> None:
            started = time.perf_counter()
            try:
                commit()
            finally:
                self.db_seconds += time.perf_counter() - started
                if self.in_transaction:
                    self.counts["COMMIT"] += 1
                    self.durable_commits += self.transaction_writes
                self.in_transaction = self.transaction_writes = False

        def counted_rollback() -> None:
            self.in_transaction = self.transaction_writes = False
            rollback()

        def counted_is_usable() -> bool:
            started = time.perf_counter()
            try:
                return is_usable()
            finally:
                self.db_seconds += time.perf_counter() - started
                self.counts["SELECT 1 (health check)"] += 1

        connection._commit = counted_commit
        connection._rollback = counted_rollback
        connection.is_usable = counted_is_usable

    def __call__(self, execute, sql, params, many, context):
        if not self.connection.get_autocommit() and not self.in_transaction:
            self.in_transaction = True
            self.counts["BEGIN"] += 1
        words = sql.split()
        verb = words[0].upper()
        if verb == "EXECUTE":  # a statement of orchestra.prepared: named, and every one writes
            table = words[1].split("(")[0]
        else:
            table = next((w.strip('"') for w in words if w.strip('"').startswith(_TABLES)), "")
        self.counts[f"{verb} {table}".strip()] += 1
        if verb in {"INSERT", "UPDATE", "DELETE", "WITH", "EXECUTE"}:
            if self.in_transaction:
                self.transaction_writes = True
            else:
                self.durable_commits += 1
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.db_seconds += time.perf_counter() - started

    def reset(self) -> None:
        self.counts.clear()
        self.db_seconds = 0.0
        self.durable_commits = 0


def wal_position(connection: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
        return int(cursor.fetchone()[0])


def backend_cpu(connection: Any) -> tuple[int, float]:
    """(pid, CPU seconds so far) of the PostgreSQL backend serving ``connection``."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    return pid, _proc_cpu(pid)[2]


def measure(label: str, runs: int, counting: Counting, body) -> dict[str, Any]:
    from django.db import connection

    wal_before = wal_position(connection)
    backend, server_before = backend_cpu(connection)
    counting.reset()
    with connection.execute_wrapper(counting):
        started, client_before = time.perf_counter(), time.process_time()
        body()
        wall = time.perf_counter() - started
        client = time.process_time() - client_before
    same_backend, server_after = backend_cpu(connection)
    server = server_after - server_before if same_backend == backend else float("nan")
    counts = dict(counting.counts)
    db_seconds = counting.db_seconds
    wal = wal_position(connection) - wal_before
    round_trips = sum(counts.values())
    return {
        "label": label,
        "round_trips_per_run": round(round_trips / runs, 3),
        "by_kind_per_run": {kind: round(count / runs, 3) for kind, count in sorted(counts.items())},
        "commits_per_run": round(counting.durable_commits / runs, 3),
        "wal_bytes_per_run": round(wal / runs),
        "wall_us_per_run": round(wall / runs * 1e6),
        "db_wait_us_per_run": round(db_seconds / runs * 1e6),
        "python_us_per_run": round((wall - db_seconds) / runs * 1e6),
        "client_cpu_us_per_run": round(client / runs * 1e6),
        "server_cpu_us_per_run": round(server / runs * 1e6) if server == server else None,
    }


def _thousands(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL)
    )
    args = parser.parse_args(argv)
    env = {
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": args.broker_url,
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only-not-secret",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "orchestra.settings",
    }
    os.environ.update(env)
    ensure_database(args.database_url)
    ensure_vhost(args.broker_url)
    migrate({**os.environ, **env})

    import django

    django.setup()
    from django.db import close_old_connections, connection
    from kombu import Connection

    import orchestra.celery  # noqa: F401 - orchestra's app is the current app here
    from bench import peers
    from celeryconfig import RUNS_QUEUE
    from queue_catalog import services as queue_services
    from runs import executor
    from runs.leases import worker_identity
    from runs.models import Scenario
    from runs.services import runs_start, scenario_save

    # As orchestra.celery.keep_database_connections sets it up in a worker.
    connection.settings_dict["CONN_HEALTH_CHECKS"] = False
    connection.close()

    scenario_save(name=SCENARIO_NAME, definition=SCENARIO)
    scenario = Scenario.objects.get(name=SCENARIO_NAME)
    with connection.cursor() as cursor:
        cursor.execute(peers.PEER_TABLES_SQL)
        cursor.execute("TRUNCATE runs_stepresult, runs_testrun CASCADE")
        cursor.execute("TRUNCATE bench_peer_step, bench_peer_run")
    counting = Counting(connection)
    worker = worker_identity()
    started_runs: list = []

    def orchestra_start(n: int) -> None:
        started_runs[:] = runs_start(scenario=scenario, payloads=[{} for _ in range(n)])

    def orchestra_worker(n: int) -> None:
        for run in started_runs:
            close_old_connections()  # task_prerun, as orchestra.celery hooks it
            executor.run_execute(run_id=run.id, worker=worker)
            close_old_connections()  # task_postrun

    def peer_start(n: int) -> None:
        with peers.app.producer_or_acquire() as producer:
            for _ in range(n):
                peers.handwritten.apply_async(args=[{}], producer=producer)

    def peer_worker(n: int) -> None:
        for _ in range(n):
            peers.handwritten.run({})

    lane_run_ids: list[int] = []
    queue_runs_publish = queue_services.runs_publish

    def runs_publish_noting_ids(runs: list) -> None:
        lane_run_ids.extend(run.id for run in runs)
        queue_runs_publish(runs)

    queue_services.runs_publish = runs_publish_noting_ids

    def queue_worker(n: int) -> None:
        # The lane's head starts when its records are created (not measured: one INSERT).
        for position in range(n):
            close_old_connections()
            executor.run_execute(run_id=lane_run_ids[position], worker=worker)
            close_old_connections()

    def queue_enqueue(n: int) -> None:
        lane_run_ids.clear()
        queue_services.queue_records_create(scenario=scenario, payloads=[{} for _ in range(n)])

    phases = [
        ("orchestra start", orchestra_start),
        ("orchestra worker", orchestra_worker),
        ("peer start", peer_start),
        ("peer worker", peer_worker),
        ("queue enqueue", queue_enqueue),
        ("queue worker", queue_worker),
    ]
    results = []
    try:
        # A first, unmeasured round warms caches (plugins, templates, query plans).
        for _, body in phases:
            body(min(100, args.runs))
        for label, body in phases:
            results.append(measure(label, args.runs, counting, lambda b=body: b(args.runs)))
    finally:
        with Connection(args.broker_url) as broker:
            for queue in (RUNS_QUEUE, peers.PEER_QUEUE):
                broker.default_channel.queue_declare(queue=queue, passive=True)
                broker.default_channel.queue_purge(queue)
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE runs_stepresult, runs_testrun CASCADE")
            cursor.execute(peers.DROP_PEER_TABLES_SQL)

    log(f"{args.runs} runs, one process; per run:")
    log(
        f"  {'':<18}{'round trips':>12}{'commits':>9}{'WAL B':>8}{'wall us':>9}{'db us':>8}"
        f"{'python us':>11}{'cpu us':>8}{'pg cpu us':>11}"
    )
    for result in results:
        log(
            f"  {result['label']:<18}{result['round_trips_per_run']:>12g}"
            f"{result['commits_per_run']:>9g}{result['wal_bytes_per_run']:>8,}"
            f"{result['wall_us_per_run']:>9,}{result['db_wait_us_per_run']:>8,}"
            f"{result['python_us_per_run']:>11,}{result['client_cpu_us_per_run']:>8,}"
            f"{_thousands(result['server_cpu_us_per_run']):>11}"
        )
        for kind, count in result["by_kind_per_run"].items():
            log(f"      {kind:<36}{count:>8g}")
    print(json.dumps({"bench": "per_run", "runs": args.runs, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
