"""Worker memory over many runs: does a worker's RSS stay flat?

2 worker processes (``celery worker -c 1``) execute N one-step runs (``delay 0``) in batches of
N/10; after each batch the bench reads the resident set size (VmRSS) of every worker process and
its pool child from /proc. It prints RSS per batch (main processes and pool children apart) and
the growth between the end of the warm-up (the first batch) and the end; "flat" means less
than 5 %.

    .venv/bin/python bench/memory.py [--runs 10000] [--quick]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
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
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/orchestra_bench_memory"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/orchestra_bench_memory"
DEFINITION = {"steps": [{"name": "wait", "plugin": "delay", "with": {"seconds": 0}}]}
FLAT_BELOW = 0.05


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_rss_kib(pool: Pool) -> dict[str, int]:
    """Resident memory of the worker (main) processes and of their pool children, in KiB."""
    main = children = 0
    for worker in pool.workers:
        pid = worker.process.pid
        main += rss_kib(pid)
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        children += sum(rss_kib(int(child)) for child in found.stdout.split())
    return {"rss_kib": main + children, "main_kib": main, "children_kib": children}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1,000 runs")
    parser.add_argument("--layout", choices=["2x1", "1x2"], default="2x1")
    parser.add_argument("--loglevel", default="warning")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_MEMORY_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("BENCH_MEMORY_BROKER_URL", DEFAULT_BROKER_URL)
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1000
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
    os.environ.update(env)
    ensure_database(args.database_url)
    ensure_vhost(args.broker_url)
    migrate(env)

    import django

    django.setup()
    from django.db import connection

    from celeryconfig import CONTROL_QUEUE, RUNS_QUEUE, dead_letter_queue, task_queues
    from orchestra.celery import app
    from runs.services import runs_start, scenario_save

    def passed() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs_testrun WHERE status = 'PASSED'")
            return cursor.fetchone()[0]

    scenario = scenario_save(name="bench-memory", definition=DEFINITION)
    batch = max(1, args.runs // 10)
    samples = []
    with ExitStack() as stack:
        broker = Broker(args.broker_url)
        stack.callback(broker.close)
        broker.purge([*task_queues, dead_letter_queue])
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE runs_stepresult, runs_testrun CASCADE")
        pool = Pool("memory", app, RUNS_QUEUE, CONTROL_QUEUE)
        stack.callback(pool.stop)
        pool.start("orchestra", env, args)
        pool.wait_ready(broker)
        pool.consume(True)
        samples.append({"runs": 0, **worker_rss_kib(pool)})
        for done in range(batch, args.runs + 1, batch):
            runs_start(scenario=scenario, payloads=[{}] * batch)
            deadline = time.monotonic() + 120
            while passed() < done:
                pool.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out at {passed()} of {done} runs")
                time.sleep(0.05)
            samples.append({"runs": done, **worker_rss_kib(pool)})
            log(
                f"{done:>6} runs: workers' RSS {samples[-1]['rss_kib'] / 1024:.1f} MiB"
                f" (main processes {samples[-1]['main_kib'] / 1024:.1f},"
                f" pool children {samples[-1]['children_kib'] / 1024:.1f})"
            )
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE runs_stepresult, runs_testrun CASCADE")

    first, last = samples[1], samples[-1]
    runs_between = last["runs"] - first["runs"]

    def growth(key: str) -> float:
        return (last[key] - first[key]) / first[key]

    result = {
        "bench": "memory",
        "runs": args.runs,
        "samples": samples,
        "rss_after_first_batch_mib": round(first["rss_kib"] / 1024, 1),
        "rss_at_end_mib": round(last["rss_kib"] / 1024, 1),
        "growth_after_warmup": round(growth("rss_kib"), 4),
        "pool_children_growth": round(growth("children_kib"), 4),
        "main_processes_growth": round(growth("main_kib"), 4),
        "main_processes_kib_per_1000_runs": round(
            (last["main_kib"] - first["main_kib"]) / runs_between * 1000, 1
        ),
        "flat": growth("rss_kib") < FLAT_BELOW,
    }
    log(
        f"RSS after {batch:,} runs {result['rss_after_first_batch_mib']} MiB, after"
        f" {args.runs:,} runs {result['rss_at_end_mib']} MiB: growth {growth('rss_kib'):+.1%}"
        f" ({'flat' if result['flat'] else 'growing'}); pool children"
        f" {growth('children_kib'):+.1%}, main processes {growth('main_kib'):+.1%}"
        f" ({result['main_processes_kib_per_1000_runs']} KiB per 1,000 runs)"
    )
    if args.plot:
        bar_chart(
            args.plot,
            [
                (
                    f"worker RSS ({name}) after N runs",
                    "MiB",
                    {f"{s['runs']:,}": s[key] / 1024 for s in samples[1::3]},
                )
                for name, key in (("main processes", "main_kib"), ("pool", "children_kib"))
            ],
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
