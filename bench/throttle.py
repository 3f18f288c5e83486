"""Launches against a rate-limited API: orchestra next to what Celery users write.

One target for every contender: ``examples/target.py`` enforcing its own limit (GCRA, ``--rate``
per second with ``--burst`` at once, on its clock), answering 429 with ``Retry-After`` past it
and logging every request it saw; the figures come from that log. Each contender sends
``--launches`` requests (one per run) with ``--workers`` worker processes (``celery -c 1``):

- **orchestra, learned**: the launches through the scenario queue, over ``--lanes`` scenarios
  of one ``http`` step; the target's key is not configured: the limit is learned from its 429s;
- **orchestra, configured**: the same, with the key configured at the target's limit;
- **Celery rate_limit**: one task per launch with ``rate_limit`` = limit / workers (Celery's
  limit holds per worker); a 429 fails the run (``bench/throttle_peer.py``);
- **retries with backoff**: no rate limit; a 429 retries the task after a jittered exponential
  backoff (0.5 s doubled, 8 retries), then the run fails.

Each phase: the work is queued while the workers consume nothing; the clock starts when they
are told to consume (remote control) and stops at the last finished run. ideal = launches /
rate; ratio = total / ideal. "429s once known" counts the 429s after the first 10 % of a
phase's requests. orchestra's targets: 0 failed runs, 429s once known under 1 % of the
requests, total at most 1.1 x ideal. The last line printed is one JSON object.

    .venv/bin/python bench/throttle.py [--launches 500] [--rate 20] [--quick] [--plot PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ comes first on sys.path, where bench/queue.py would shadow the standard
# library's queue module; the repository root takes its place.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import ExitStack  # noqa: E402

from bench.plotting import rate_chart  # noqa: E402
from bench.throughput import (  # noqa: E402
    ROOT,
    Broker,
    Pool,
    Worker,
    ensure_database,
    ensure_vhost,
    log,
    migrate,
)
from examples.target_evidence import (  # noqa: E402
    Entry,
    TargetProcess,
    accepted,
    per_second,
    refused,
    worst_window,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/orchestra_bench_throttle"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/orchestra_bench_throttle"
CONTENDERS = ("orchestra-learned", "orchestra-configured", "celery-rate-limit", "retries")
LABELS = {
    "orchestra-learned": "orchestra, limit learned from 429s",
    "orchestra-configured": "orchestra, key configured",
    "celery-rate-limit": "Celery rate_limit per worker",
    "retries": "retries with backoff",
}
#: Launches of the unmeasured warm-up phase (orchestra's workers' first runs).
WARM_UP = 40
#: The share of a phase's first requests during which the limit may still be unknown.
LEARNING_SHARE = 0.1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=500)
    parser.add_argument("--lanes", type=int, default=20, help="scenarios orchestra spreads over")
    parser.add_argument("--workers", type=int, default=4, help="worker processes per contender")
    parser.add_argument("--rate", type=float, default=20, help="the target's requests per second")
    parser.add_argument("--burst", type=int, default=5, help="the target's requests at once")
    parser.add_argument("--sweep-interval", type=float, default=1.0, help="orchestra's beat")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes")
    parser.add_argument("--loglevel", default="warning")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_THROTTLE_DATABASE_URL", DEFAULT_DATABASE_URL),
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("BENCH_THROTTLE_BROKER_URL", DEFAULT_BROKER_URL)
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.launches, args.lanes = 100, 10
    args.contenders = args.contenders.split(",")
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; choose from {CONTENDERS}")
    args.layout = f"{args.workers}x1"
    return args


def sql(statement: str, params: list | None = None) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.fetchall() if cursor.description else []


def wait_until(done: Callable[[], bool], timeout: float, what: str, pool: Pool) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        pool.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def judge(args, entries: list[Entry], started: float, finished: float) -> dict:
    """The target's view of one phase, and the time it took."""
    ideal = args.launches / args.rate
    known = entries[int(len(entries) * LEARNING_SHARE) :]
    window = worst_window([e.time for e in accepted(entries)], rate=args.rate, burst=args.burst)
    return {
        "requests": len(entries),
        "refused": len(refused(entries)),
        "refused_once_known_pct": round(100 * len(refused(known)) / max(1, len(known)), 2),
        "total_s": round(finished - started, 2),
        "ideal_s": round(ideal, 2),
        "ratio": round((finished - started) / ideal, 3),
        "accepted_excess": None if window is None else round(window.excess, 3),
        "per_second": per_second(entries, origin=started),
    }


# --- orchestra -----------------------------------------------------------------------------------


def orchestra_phase(
    args, pool: Pool, broker: Broker, target, configured: bool, launches: int | None = None
) -> dict:
    from celeryconfig import dead_letter_queue, task_queues
    from queue_catalog.services import queue_records_create
    from runs.services import scenario_save
    from targets.models import RateKey

    broker.purge([*task_queues, dead_letter_queue])
    sql(
        "TRUNCATE queue_catalog_queuerun, queue_catalog_queuerecord, runs_stepresult,"
        " runs_testrun, runs_scenario, targets_ratekey CASCADE"
    )
    if configured:
        RateKey.objects.create(
            name=target.url, requests=args.rate, interval_seconds=1, burst=args.burst
        )
    per_lane = (launches or args.launches) // args.lanes
    for lane in range(args.lanes):
        url = f"{target.url}/health?lane=l{lane}&n={{{{ payload.n }}}}"
        step = {"name": "call", "plugin": "http", "with": {"url": url}, "expect": {"status": 200}}
        scenario = scenario_save(name=f"bench-throttle-{lane}", definition={"steps": [step]})
        queue_records_create(scenario=scenario, payloads=[{"n": n} for n in range(per_lane)])

    started = time.time()
    pool.consume(True)
    try:
        wait_until(
            lambda: (
                not sql(
                    "SELECT 1 FROM queue_catalog_queuerecord"
                    " WHERE status IN ('SCHEDULED', 'RUNNING') LIMIT 1"
                )
            ),
            timeout=120 + 10 * args.launches / args.rate,
            what="every record to settle",
            pool=pool,
        )
    finally:
        pool.consume(False)
    ((finished,),) = sql("SELECT EXTRACT(EPOCH FROM max(finished_at)) FROM runs_testrun")
    records = dict(sql("SELECT status, count(*) FROM queue_catalog_queuerecord GROUP BY status"))
    ((failed_runs,),) = sql("SELECT count(*) FROM runs_testrun WHERE status <> 'PASSED'")
    entries = [e for e in target.entries() if e.time >= started]
    return {
        "passed": records.get("DONE", 0),
        "failed": sum(records.values()) - records.get("DONE", 0),
        "failed_runs": failed_runs,
        **judge(args, entries, started, float(finished)),
    }


# --- Celery peers --------------------------------------------------------------------------------


def peer_phase(args, pool: Pool, broker: Broker, target, task) -> dict:
    from bench import throttle_peer

    channel = broker.channel
    for queue in (throttle_peer.QUEUE, throttle_peer.IDLE_QUEUE):
        channel.queue_declare(queue=queue, durable=True, auto_delete=False)
        channel.queue_purge(queue)
    sql(throttle_peer.TABLE_SQL)
    sql("TRUNCATE bench_throttle_peer")
    per_lane = args.launches // args.lanes
    with throttle_peer.app.producer_or_acquire() as producer:
        for lane in range(args.lanes):
            for n in range(per_lane):
                url = f"{target.url}/health?lane=l{lane}&n={n}"
                task.apply_async(args=[url], producer=producer)

    started = time.time()
    pool.consume(True)
    try:
        wait_until(
            lambda: sql("SELECT count(*) FROM bench_throttle_peer")[0][0] >= args.launches,
            timeout=300 + 10 * args.launches / args.rate,
            what="every peer task to finish",
            pool=pool,
        )
    finally:
        pool.consume(False)
    ((passed, failed, finished),) = sql(
        "SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok), max(finished_at)"
        " FROM bench_throttle_peer"
    )
    entries = [e for e in target.entries() if e.time >= started]
    return {
        "passed": passed,
        "failed": failed,
        "failed_runs": failed,
        **judge(args, entries, started, finished),
    }


# --- the invocation ------------------------------------------------------------------------------


def print_table(args, results: dict[str, dict]) -> None:
    log(
        f"\n{args.launches} launches, target limit {args.rate:g}/s burst {args.burst},"
        f" {args.workers} workers; ideal {args.launches / args.rate:.1f} s"
    )
    log(
        f"{'contender':<36} {'passed':>6} {'failed':>6} {'429s':>6} {'429s known':>10}"
        f" {'total s':>8} {'ratio':>6}"
    )
    for name, figures in results.items():
        log(
            f"{LABELS[name]:<36} {figures['passed']:>6} {figures['failed']:>6}"
            f" {figures['refused']:>6} {figures['refused_once_known_pct']:>9}%"
            f" {figures['total_s']:>8} {figures['ratio']:>6}"
        )


def orchestra_targets_met(figures: dict) -> bool:
    return (
        figures["failed"] == 0
        and figures["failed_runs"] == 0
        and figures["refused_once_known_pct"] < 1
        and figures["ratio"] <= 1.1
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": args.broker_url,
        "BENCH_PEER_DSN": args.database_url.replace("postgres://", "postgresql://"),
        "BENCH_THROTTLE_PEER_RATE_LIMIT": f"{args.rate / args.workers:g}/s",
        "ORCHESTRA_SWEEP_INTERVAL_SECONDS": str(args.sweep_interval),
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
    from bench import throttle_peer
    from celeryconfig import CONTROL_QUEUE, RUNS_QUEUE, dead_letter_queue, task_queues
    from orchestra.celery import app

    results: dict[str, dict] = {}
    with ExitStack() as stack:
        target = stack.enter_context(TargetProcess(rate=args.rate, burst=args.burst))
        broker = Broker(args.broker_url)
        stack.callback(broker.close)
        orchestra_pool = Pool("throttle-orchestra", app, RUNS_QUEUE, CONTROL_QUEUE)
        peer_pool = Pool(
            "throttle-peer", throttle_peer.app, throttle_peer.QUEUE, throttle_peer.IDLE_QUEUE
        )
        beat_dir = Path(tempfile.mkdtemp(prefix="bench-throttle-beat-"))
        beat = Worker(
            "throttle-beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "orchestra",
                "beat",
                "-l",
                args.loglevel,
                "-s",
                str(beat_dir / "schedule"),
                "--pidfile",
                str(beat_dir / "pid"),
            ],
            env,
        )
        for process in (orchestra_pool, peer_pool, beat):
            stack.callback(process.stop)
        broker.purge([*task_queues, dead_letter_queue])
        broker.channel.queue_declare(
            queue=throttle_peer.IDLE_QUEUE, durable=True, auto_delete=False
        )
        orchestra_pool.start("orchestra", env, args)
        peer_pool.start("bench.throttle_peer", env, args)
        beat.start()
        orchestra_pool.wait_ready(broker)
        peer_pool.wait_ready(broker)
        log(f"target {target.url}; {args.workers} workers each ready")
        # Warm-up, not measured: the workers' first runs import, connect and prepare statements.
        orchestra_phase(args, orchestra_pool, broker, target, configured=True, launches=WARM_UP)
        phases = {
            "orchestra-learned": lambda: orchestra_phase(
                args, orchestra_pool, broker, target, configured=False
            ),
            "orchestra-configured": lambda: orchestra_phase(
                args, orchestra_pool, broker, target, configured=True
            ),
            "celery-rate-limit": lambda: peer_phase(
                args, peer_pool, broker, target, throttle_peer.limited
            ),
            "retries": lambda: peer_phase(args, peer_pool, broker, target, throttle_peer.retrying),
        }
        for name in args.contenders:
            time.sleep(1)  # the target's budget refills between phases
            results[name] = phases[name]()
            figures = {k: v for k, v in results[name].items() if k != "per_second"}
            log(f"{LABELS[name]}: {figures}")
        sql("DROP TABLE IF EXISTS bench_throttle_peer")

    print_table(args, results)
    if args.plot:
        rate_chart(
            args.plot,
            [(LABELS[name], figures["per_second"]) for name, figures in results.items()],
            limit=args.rate,
        )
    summary = {
        "bench": "throttle",
        "launches": args.launches,
        "rate": args.rate,
        "burst": args.burst,
        "workers": args.workers,
        **{
            name: {k: v for k, v in figures.items() if k != "per_second"}
            for name, figures in results.items()
        },
    }
    for name in ("orchestra-learned", "orchestra-configured"):
        if name in results:
            summary[f"{name}_targets_met"] = orchestra_targets_met(results[name])
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
