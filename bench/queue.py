"""The scenario queue end to end: records/s through lanes, hand-off gaps, and dispatch cost.

Two parts, both against the same broker and database as orchestra's own processes:

- **drain**: R records over L lanes (scenarios with one ``delay 0`` step) are enqueued while
  2 worker processes are idle; then the workers start consuming and the clock runs until every
  record is terminal. Prints records/s, and per lane the largest gap between one run's end and
  the next run's start (p50/p99 over lanes); checks that no two runs of a lane overlapped and
  that every lane finished its records in creation order.
- **dispatch**: with D records waiting (100, then 100,000, over 100 lanes whose head is
  running), the time to enqueue one record into an idle lane (it starts at once), the time of
  a lane's hand-off to its next record (``lane_dispatch``; a new record then joins that lane's
  tail, so the depth stays the same), and of one ``queue_sweep``.
  Medians and p99 of K samples each; the target is 100,000 within 1.5x of 100.

    .venv/bin/python bench/queue.py [--records 10000] [--lanes 100] [--repeat 3] [--quick]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where this file would shadow the
# standard library's ``queue`` module; the repository root goes there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import os
import signal
import statistics
import time
from contextlib import ExitStack

from bench.throughput import (
    ROOT,
    Broker,
    Pool,
    Worker,
    ensure_database,
    ensure_vhost,
    log,
    migrate,
    percentile,
    spread,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/orchestra_bench_queue"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/orchestra_bench_queue"
DEFINITION = {"steps": [{"name": "wait", "plugin": "delay", "with": {"seconds": 0}}]}
DEPTHS = (100, 100_000)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="records per drain")
    parser.add_argument("--lanes", type=int, default=100, help="scenarios the records spread over")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of the drain")
    parser.add_argument("--samples", type=int, default=200, help="dispatch samples per depth")
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes")
    parser.add_argument("--layout", choices=["2x1", "1x2"], default="2x1")
    parser.add_argument("--loglevel", default="warning")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_QUEUE_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("BENCH_QUEUE_BROKER_URL", DEFAULT_BROKER_URL)
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.lanes, args.repeat, args.samples = 200, 10, 1, 20
    return args


def sql(statement: str, params: list | dict | None = None) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.fetchall() if cursor.description else []


def reset(broker: Broker) -> None:
    from celeryconfig import dead_letter_queue, task_queues

    broker.purge([*task_queues, dead_letter_queue])
    sql(
        "TRUNCATE queue_catalog_queuerun, queue_catalog_queuerecord, runs_stepresult,"
        " runs_testrun CASCADE"
    )


def scenarios(prefix: str, count: int) -> list:
    from runs.services import scenario_save

    return [scenario_save(name=f"{prefix}-{i}", definition=DEFINITION) for i in range(count)]


# --- drain ---------------------------------------------------------------------------------------


def drain(args: argparse.Namespace, pool: Pool, broker: Broker, lanes: list) -> dict:
    """Enqueue, then let the workers loose; figures of one repetition."""
    from queue_catalog.services import queue_records_create

    reset(broker)
    per_lane = args.records // len(lanes)
    started = time.perf_counter()
    for scenario in lanes:
        queue_records_create(scenario=scenario, payloads=[{"n": n} for n in range(per_lane)])
    enqueue_seconds = time.perf_counter() - started
    total = per_lane * len(lanes)

    clock = time.time()
    pool.consume(True)
    deadline = time.monotonic() + 120 + total / 20
    try:
        while True:
            ((open_records,),) = sql(
                "SELECT count(*) FROM queue_catalog_queuerecord"
                " WHERE status IN ('SCHEDULED', 'RUNNING')"
            )
            if not open_records:
                break
            pool.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {open_records} records still open")
            time.sleep(0.05)
    finally:
        pool.consume(False)
    ((last_finished, done, not_done),) = sql(
        "SELECT extract(epoch FROM max(finished_at)), count(*) FILTER (WHERE status = 'DONE'),"
        " count(*) FILTER (WHERE status <> 'DONE') FROM queue_catalog_queuerecord"
    )
    seconds = float(last_finished) - clock
    return {
        "records": total,
        "done": done,
        "not_done": not_done,
        "seconds": round(seconds, 3),
        "records_per_s": round(total / seconds, 1),
        "enqueue_records_per_s": round(total / enqueue_seconds, 1),
        **lane_figures(),
    }


def lane_figures() -> dict:
    """Per lane: the largest gap between consecutive runs, overlaps, and order violations."""
    rows = sql(
        """
        SELECT r.scenario_id, r.lane_position, t.started_at, t.finished_at
          FROM queue_catalog_queuerun q
          JOIN queue_catalog_queuerecord r ON r.id = q.record_id
          JOIN runs_testrun t ON t.id = q.run_id
         ORDER BY r.scenario_id, t.started_at
        """
    )
    return lane_check(rows)


# --- the peer: procrastinate with one lock per scenario ---------------------------------------


def peer_available() -> bool:
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        log("procrastinate is not installed here: the peer is skipped (`make bench` runs it)")
        return False
    return True


def peer_drain(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """The same workload through procrastinate: R jobs over L locks, 2 worker processes."""
    import psycopg2

    from bench import procrastinate_peer as peer

    dsn = env["BENCH_PEER_DSN"]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_lane_run, bench_lane_step")
        cursor.execute(peer.TABLES_SQL)
        cursor.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        has_schema = cursor.fetchone()[0]
        if has_schema:
            cursor.execute("DELETE FROM procrastinate_jobs")
    per_lane = args.records // args.lanes
    with peer.app.open():
        if not has_schema:
            peer.app.schema_manager.apply_schema()
        started = time.perf_counter()
        for lane in range(args.lanes):
            peer.lane_record.configure(lock=f"lane-{lane}").batch_defer(
                *({"lane": lane, "position": n} for n in range(per_lane))
            )
        enqueue_seconds = time.perf_counter() - started
    total = per_lane * args.lanes
    command = [sys.executable, "-m", "procrastinate", "--app=bench.procrastinate_peer.app"]
    workers = [
        Worker(f"procrastinate-{i}", [*command, "worker", "--concurrency", "1"], env).start()
        for i in (1, 2)
    ]
    try:
        deadline = time.monotonic() + 120 + total / 20
        while True:
            with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM bench_lane_run WHERE status = 'PASSED'")
                if cursor.fetchone()[0] >= total:
                    break
            for worker in workers:
                worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for the procrastinate peer")
            time.sleep(0.1)
    finally:
        for worker in workers:
            worker.stop()
            worker.log.unlink(missing_ok=True)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT lane, position, started_at, finished_at FROM bench_lane_run"
            " ORDER BY lane, started_at"
        )
        rows = cursor.fetchall()
    seconds = (max(r[3] for r in rows) - min(r[2] for r in rows)).total_seconds()
    return {
        "records": total,
        "seconds": round(seconds, 3),
        "records_per_s": round(total / seconds, 1),
        "enqueue_records_per_s": round(total / enqueue_seconds, 1),
        **lane_check(rows),
    }


def lane_check(rows: list[tuple]) -> dict:
    """(lane, position, started, finished) ordered by lane and start: gaps, overlaps, order."""
    largest_gap_ms: dict[int, float] = {}
    overlaps = out_of_order = 0
    previous: tuple | None = None
    for lane, position, run_started, run_finished in rows:
        if previous is not None and previous[0] == lane:
            gap_ms = (run_started - previous[3]).total_seconds() * 1000
            overlaps += gap_ms < 0
            out_of_order += position < previous[1]
            largest_gap_ms[lane] = max(largest_gap_ms.get(lane, 0.0), gap_ms)
        previous = (lane, position, run_started, run_finished)
    gaps = sorted(largest_gap_ms.values())
    return {
        "lane_gap_p50_ms": round(percentile(gaps, 50), 2) if gaps else None,
        "lane_gap_p99_ms": round(percentile(gaps, 99), 2) if gaps else None,
        "overlaps": overlaps,
        "out_of_order": out_of_order,
    }


# --- dispatch ------------------------------------------------------------------------------------


def fill_waiting(depth: int, busy_lanes: list) -> None:
    """``depth`` SCHEDULED records behind a RUNNING head in each of ``busy_lanes``."""
    ids = [scenario.id for scenario in busy_lanes]
    sql(
        """
        INSERT INTO queue_catalog_queuerecord
            (scenario_id, payload, context, status, process_code, start_count, errors,
             priority, max_attempts, created_at)
        SELECT (%(ids)s::bigint[])[1 + n %% %(lanes)s], '{}'::jsonb, '{}'::jsonb,
               CASE WHEN n <= %(lanes)s THEN 'RUNNING' ELSE 'SCHEDULED' END,
               '', 0, '[]'::jsonb, 'normal', 5, now()
          FROM generate_series(1, %(total)s) AS n
        """,
        {"ids": ids, "lanes": len(ids), "total": depth + len(ids)},
    )
    sql("ANALYZE queue_catalog_queuerecord")


def timed(samples: list[float], action) -> None:
    started = time.perf_counter()
    action()
    samples.append((time.perf_counter() - started) * 1000)


def dispatch(args: argparse.Namespace, broker: Broker, depth: int, busy: list, idle: list) -> dict:
    """Dispatch timings with ``depth`` records waiting; no worker consumes meanwhile."""
    from queue_catalog.models import QueueRecord
    from queue_catalog.services import lane_dispatch, queue_record_create, queue_sweep

    reset(broker)
    fill_waiting(depth, busy)
    enqueue_ms: list[float] = []
    handoff_ms: list[float] = []
    sweep_ms: list[float] = []
    for n in range(args.samples):
        # Into an idle lane: the record is inserted and started in one go.
        scenario = idle[n % len(idle)]
        sql(
            "UPDATE queue_catalog_queuerecord SET status = 'DONE'"
            " WHERE scenario_id = %s AND status = 'RUNNING'",
            [scenario.id],
        )
        timed(enqueue_ms, lambda s=scenario: queue_record_create(scenario=s, payload={}))
        # A busy lane's hand-off: its running head ends, the next waiting record starts.
        lane = busy[n % len(busy)]
        sql(
            "UPDATE queue_catalog_queuerecord SET status = 'DONE'"
            " WHERE scenario_id = %s AND status = 'RUNNING'",
            [lane.id],
        )
        timed(handoff_ms, lambda s=lane: lane_dispatch(scenario_id=s.id))
        # Keep the depth: a new record joins the tail of the lane that just moved on.
        QueueRecord.objects.create(scenario=lane, payload={})
        if n % 10 == 0:
            timed(sweep_ms, queue_sweep)
    return {
        "waiting": depth,
        "enqueue_ms": summary(enqueue_ms),
        "handoff_ms": summary(handoff_ms),
        "sweep_ms": summary(sweep_ms),
    }


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(percentile(ordered, 99), 3),
        "n": len(ordered),
    }


# --- report --------------------------------------------------------------------------------------


def report(drains: list[dict], dispatches: list[dict]) -> dict:
    result = {
        "bench": "queue",
        "records_per_s": spread([d["records_per_s"] for d in drains]),
        "enqueue_records_per_s": spread([d["enqueue_records_per_s"] for d in drains]),
        "lane_gap_p50_ms": spread([d["lane_gap_p50_ms"] for d in drains]),
        "lane_gap_p99_ms": spread([d["lane_gap_p99_ms"] for d in drains]),
        "overlaps": sum(d["overlaps"] for d in drains),
        "out_of_order": sum(d["out_of_order"] for d in drains),
        "not_done": sum(d["not_done"] for d in drains),
        "drains": drains,
        "dispatch": dispatches,
    }
    small, large = dispatches[0], dispatches[-1]
    result["dispatch_ratio"] = {
        name: round(large[name]["p50"] / small[name]["p50"], 2)
        for name in ("enqueue_ms", "handoff_ms", "sweep_ms")
    }
    return result


def print_table(result: dict) -> None:
    def fmt(figure: dict) -> str:
        return f"{figure['median']} ({figure['min']}-{figure['max']})"

    drains = result["drains"]
    log(f"drain: {drains[0]['records']} records, median (min-max) of {len(drains)}")
    log(f"  records/s           {fmt(result['records_per_s'])}")
    log(f"  enqueue records/s   {fmt(result['enqueue_records_per_s'])}")
    log(f"  lane gap p50 ms     {fmt(result['lane_gap_p50_ms'])}")
    log(f"  lane gap p99 ms     {fmt(result['lane_gap_p99_ms'])}")
    log(
        f"  overlaps {result['overlaps']}, out of order {result['out_of_order']},"
        f" not DONE {result['not_done']}"
    )
    if "procrastinate" in result:
        peer = result["procrastinate"]
        log(
            f"  procrastinate, one lock per scenario: {fmt(peer['records_per_s'])} records/s,"
            f" overlaps {peer['overlaps']}, out of order {peer['out_of_order']};"
            f" orchestra / procrastinate {result['ratio_to_procrastinate']}"
        )
    log("dispatch, ms p50 / p99:")
    for row in result["dispatch"]:
        log(
            f"  {row['waiting']:>7} waiting: enqueue into an idle lane"
            f" {row['enqueue_ms']['p50']} / {row['enqueue_ms']['p99']},"
            f" hand-off {row['handoff_ms']['p50']} / {row['handoff_ms']['p99']},"
            f" sweep {row['sweep_ms']['p50']} / {row['sweep_ms']['p99']}"
        )
    log(f"  ratio {DEPTHS[-1]:,} / {DEPTHS[0]} waiting (p50): {result['dispatch_ratio']}")


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    drains = {"orchestra": result["drains"]}
    if "procrastinate" in result:
        drains["procrastinate, one lock per scenario"] = result["procrastinate"]["drains"]
    width = 0.8 / len(drains)
    for offset, (label, rows) in enumerate(drains.items()):
        left.bar(
            [n + offset * width for n in range(1, len(rows) + 1)],
            [row["records_per_s"] for row in rows],
            width=width,
            label=label,
        )
    left.set_xticks(
        [n + width * (len(drains) - 1) / 2 for n in range(1, len(result["drains"]) + 1)]
    )
    left.set_xticklabels([str(n) for n in range(1, len(result["drains"]) + 1)])
    left.set(title="queue drain, 10,000 records over 100 lanes", xlabel="repetition")
    left.set(ylabel="records/s")
    left.legend(loc="lower right")
    names = ["enqueue_ms", "handoff_ms", "sweep_ms"]
    for offset, row in enumerate(result["dispatch"]):
        right.bar(
            [i + offset * 0.4 for i in range(len(names))],
            [row[name]["p50"] for name in names],
            width=0.4,
            label=f"{row['waiting']:,} waiting",
        )
    right.set_xticks([i + 0.2 for i in range(len(names))], ["enqueue", "hand-off", "sweep"])
    right.set(title="dispatch p50", ylabel="ms")
    right.legend()
    figure.tight_layout()
    figure.savefig(path)
    log(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": args.broker_url,
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only-not-secret",
        "LOG_LEVEL": args.loglevel.upper(),
        "DJANGO_SETTINGS_MODULE": "orchestra.settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    peer_url = f"{args.database_url}_peer"
    env["BENCH_PEER_DSN"] = peer_url.replace("postgres://", "postgresql://", 1)
    os.environ.update(env)
    ensure_database(args.database_url)
    ensure_vhost(args.broker_url)
    migrate(env)
    with_peer = peer_available()
    if with_peer:
        ensure_database(peer_url)

    import django

    django.setup()
    from celeryconfig import CONTROL_QUEUE, RUNS_QUEUE
    from orchestra.celery import app

    peer_drains: list[dict] = []
    drains: list[dict] = []
    dispatches: list[dict] = []
    with ExitStack() as stack:
        broker = Broker(args.broker_url)
        stack.callback(broker.close)
        stack.callback(reset, broker)
        reset(broker)
        lanes = scenarios("bench-lane", args.lanes)
        pool = Pool("queue", app, RUNS_QUEUE, CONTROL_QUEUE)
        stack.callback(pool.stop)
        pool.start("orchestra", env, args)
        pool.wait_ready(broker)
        log(f"workers ready ({args.layout})")
        for repetition in range(1, args.repeat + 1):
            figures = drain(args, pool, broker, lanes)
            drains.append(figures)
            log(
                f"[{repetition}/{args.repeat}] {figures['records_per_s']} records/s,"
                f" lane gap p50 {figures['lane_gap_p50_ms']} ms"
                f" p99 {figures['lane_gap_p99_ms']} ms, overlaps {figures['overlaps']}"
            )
            if with_peer:
                figures = peer_drain(args, env)
                peer_drains.append(figures)
                log(
                    f"[{repetition}/{args.repeat}] procrastinate {figures['records_per_s']}"
                    f" records/s, overlaps {figures['overlaps']},"
                    f" out of order {figures['out_of_order']}"
                )
        pool.stop()
        busy = scenarios("bench-busy-lane", 100)
        idle = scenarios("bench-idle-lane", 20)
        for depth in DEPTHS:
            dispatches.append(dispatch(args, broker, depth, busy, idle))
            log(f"dispatch measured with {depth:,} records waiting")

    result = report(drains, dispatches)
    if peer_drains:
        result["procrastinate"] = {
            "records_per_s": spread([d["records_per_s"] for d in peer_drains]),
            "enqueue_records_per_s": spread([d["enqueue_records_per_s"] for d in peer_drains]),
            "overlaps": sum(d["overlaps"] for d in peer_drains),
            "out_of_order": sum(d["out_of_order"] for d in peer_drains),
            "drains": peer_drains,
        }
        result["ratio_to_procrastinate"] = round(
            result["records_per_s"]["median"] / result["procrastinate"]["records_per_s"]["median"],
            2,
        )
    print_table(result)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result), flush=True)
    failed = result["overlaps"] or result["out_of_order"] or result["not_done"]
    failed = failed or result.get("procrastinate", {}).get("overlaps")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
