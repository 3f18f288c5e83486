"""Throughput and latency of orchestra, next to a bare Celery no-op and a hand-written peer.

One invocation, one broker (vhost ``orchestra_bench``), one database (``orchestra_bench``):

- **orchestra**: N runs of a scenario with one ``delay`` step of 0 s, bulk-started with
  ``runs.services.runs_start`` and executed by real orchestra workers until every run is PASSED;
- **handwritten**: N messages of ``bench.peers.handwritten`` (insert a run row, mark it in
  progress, insert a step row, mark it passed: four ORM writes), on its own Celery app and tables;
- **noop**: N messages of ``bench.peers.noop``, a task that does nothing;
- **sleep** (only when asked for): N messages of ``bench.peers.sleep``, a task that sleeps
  ``--sleep-ms`` and does nothing else: what Celery and RabbitMQ spend on a task that lasts
  as long as a run;
- **latency**: orchestra runs started one at a time with ``run_start`` at a steady offered load
  (100 runs/s for 10 s by default); latency of a run = ``finished_at - queued_at``.

Method (the same for the three throughput figures): the two worker processes of each app are
started first and consume only an empty queue. A phase starts the N runs (one ``runs_start``
call for orchestra, a loop of N ``apply_async`` on one producer for the peers) while no worker
consumes them, and times that as the *start cost*. Then both workers are told by remote
control to consume the filled queue, and the clock runs from that moment until the last run is
PASSED (``max(finished_at)`` in the database) or, for the no-op, until the queue is first seen
empty (polled every 5 ms; only the two tasks in flight are then unfinished).
throughput = N / drain time. Because orchestra writes its run rows when a run is started and the
hand-written peer writes them in its task, "with start" = N / (start cost + drain time) is
reported too. Each phase starts from purged queues and truncated tables; repetitions interleave
the phases; every figure is the median with min-max. The last line printed is a JSON object.

Run from the repository root: ``.venv/bin/python bench/throughput.py`` (``--help`` for options).
Needs PostgreSQL and RabbitMQ running locally (``make services``); ``rabbitmqctl`` must work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path, where bench/queue.py would shadow the standard
# library's queue module; the repository root takes its place.
if Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/orchestra_bench"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/orchestra_bench"
SCENARIO_NAME = "bench-delay-0"
SCENARIO = {
    "name": SCENARIO_NAME,
    "description": "One delay step of 0 seconds (bench/throughput.py).",
    "steps": [{"name": "wait", "plugin": "delay", "with": {"seconds": 0}}],
}
RESULTS_DIR = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(message, flush=True)


# --- set-up: database, vhost, schema -------------------------------------------------------------


def ensure_database(url: str) -> None:
    """Create the bench database if it does not exist (connecting to ``postgres`` to do it)."""
    import psycopg2

    parsed = urlparse(url)
    name = unquote(parsed.path.lstrip("/"))
    conn = psycopg2.connect(
        dbname="postgres",
        user=unquote(parsed.username or "postgres"),
        password=unquote(parsed.password or ""),
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone() is None:
                log(f"creating database {name}")
                cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def ensure_vhost(broker_url: str) -> None:
    parsed = urlparse(broker_url)
    vhost = unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"
    user = unquote(parsed.username or "guest")

    def rabbitmqctl(*args: str) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True
        ).stdout

    if vhost not in rabbitmqctl("list_vhosts").split():
        log(f"creating RabbitMQ vhost {vhost}")
        rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )


# --- worker processes ----------------------------------------------------------------------------


class Worker:
    """One ``celery worker`` process (prefork) in its own session, stopped by its process group."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.process: subprocess.Popen | None = None
        fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(fd)
        self.log = Path(path)

    def start(self) -> Worker:
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text()[-3000:]
            raise RuntimeError(f"worker {self.name} exited ({self.process.returncode}):\n{tail}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def worker_commands(
    app: str, queues: str, layout: str, prefix: str, loglevel: str
) -> list[tuple[str, list[str]]]:
    """``AxB``: A workers of ``-c B`` each (``2x1``: two ``-c 1`` workers; ``1x2``: one ``-c 2``
    worker: two pool processes)."""
    count, concurrency = (int(part) for part in layout.split("x"))
    commands = []
    for index in range(1, count + 1):
        name = f"{prefix}{index}"
        commands.append(
            (
                name,
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    app,
                    "worker",
                    "-n",
                    f"{name}@%h",
                    "-c",
                    str(concurrency),
                    "-P",
                    "prefork",
                    "-Q",
                    queues,
                    "--without-mingle",
                    "--without-gossip",
                    "-l",
                    loglevel,
                ],
            )
        )
    return commands


# --- broker helpers ------------------------------------------------------------------------------


class Broker:
    """One connection of the bench to the bench vhost, for purging and watching queues."""

    def __init__(self, url: str) -> None:
        from kombu import Connection

        self.connection = Connection(url)
        self.connection.ensure_connection(max_retries=3)
        self.channel = self.connection.channel()

    def depth(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of ``queue``; unacknowledged messages are not counted."""
        _, messages, consumers = self.channel.queue_declare(queue=queue, passive=True)
        return messages, consumers

    def purge(self, queues: list) -> None:
        for queue in queues:
            bound = queue(self.channel)
            bound.declare()
            bound.purge()

    def server_version(self) -> str:
        properties = self.connection.connection.server_properties
        version = properties.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)

    def close(self) -> None:
        self.connection.release()


# --- phases --------------------------------------------------------------------------------------


class Pool:
    """The two worker processes of one Celery app, idle until a phase lets them consume.

    They are started consuming only ``idle_queue`` (which stays empty); a phase fills ``queue``
    first and then tells them, by remote control, to consume it too: both start within a few
    milliseconds of each other, fully booted, which is when the clock starts.
    """

    def __init__(self, label: str, app: Any, queue: str, idle_queue: str) -> None:
        self.label = label
        self.app = app
        self.queue = queue
        self.idle_queue = idle_queue
        self.workers: list[Worker] = []

    @property
    def nodes(self) -> list[str]:
        return [f"{worker.name}@{socket.gethostname()}" for worker in self.workers]

    def start(self, app_name: str, env: dict[str, str], args: argparse.Namespace) -> None:
        for name, command in worker_commands(
            app_name, self.idle_queue, args.layout, f"bench-{self.label}-", args.loglevel
        ):
            self.workers.append(Worker(name, command, env).start())

    def wait_ready(self, broker: Broker, timeout: float = 90) -> None:
        """Ready = consuming ``idle_queue`` and answering remote control (a ping)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            consumers = broker.depth(self.idle_queue)[1]
            if consumers >= len(self.workers):
                replies = self.app.control.ping(destination=self.nodes, timeout=0.5)
                if len(replies) == len(self.workers):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for the {self.label} workers")
            time.sleep(0.1)

    def consume(self, consuming: bool) -> None:
        control = self.app.control
        if consuming:
            replies = control.add_consumer(self.queue, destination=self.nodes, reply=True)
        else:
            replies = control.cancel_consumer(self.queue, destination=self.nodes, reply=True)
        if len(replies) != len(self.workers):
            raise RuntimeError(f"{self.label} workers answered {replies} to a consumer change")

    def check_alive(self) -> None:
        for worker in self.workers:
            worker.check_alive()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


class Bench:
    def __init__(self, args: argparse.Namespace, broker: Broker) -> None:
        from django.db import connection

        from bench import peers
        from celeryconfig import CONTROL_QUEUE, RUNS_QUEUE, dead_letter_queue, task_queues
        from orchestra.celery import app as orchestra_app
        from runs.models import Scenario

        self.args = args
        self.broker = broker
        self.connection = connection
        self.peers = peers
        self.orchestra_queues = [*task_queues, dead_letter_queue]
        self.peer_queues = list(peers.app.conf.task_queues)
        self.scenario = Scenario.objects.get(name=SCENARIO_NAME)
        self.orchestra_pool = Pool("orchestra", orchestra_app, RUNS_QUEUE, CONTROL_QUEUE)
        self.peer_pool = Pool("peer", peers.app, peers.PEER_QUEUE, peers.IDLE_QUEUE)
        self.completed = False

    @property
    def pools(self) -> list[Pool]:
        return [self.orchestra_pool, self.peer_pool]

    def sql(self, statement: str, params: list | None = None) -> list[tuple]:
        with self.connection.cursor() as cursor:
            cursor.execute(statement, params or [])
            return cursor.fetchall() if cursor.description else []

    def reset_orchestra(self) -> None:
        self.broker.purge(self.orchestra_queues)
        self.sql("TRUNCATE runs_stepresult, runs_testrun CASCADE")

    def reset_peers(self) -> None:
        self.broker.purge(self.peer_queues)
        self.sql("TRUNCATE bench_peer_step, bench_peer_run")

    def wait_passed(self, table: str, n: int, pool: Pool) -> float:
        """Wait until ``n`` rows of ``table`` are PASSED; return the last ``finished_at``."""
        deadline = time.monotonic() + 120 + n / 20
        while True:
            passed, failed = self.sql(
                f"SELECT count(*) FILTER (WHERE status = 'PASSED'),"
                f" count(*) FILTER (WHERE status IN ('FAILED', 'ERROR', 'CANCELLED'))"
                f" FROM {table}"
            )[0]
            if failed:
                raise RuntimeError(f"{failed} row(s) of {table} did not pass")
            if passed >= n:
                break
            pool.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {passed}/{n} rows of {table} passed")
            time.sleep(0.05)
        (last,) = self.sql(f"SELECT max(finished_at) FROM {table}")[0]
        return last.timestamp()

    def wait_drained(self, queue: str, n: int, pool: Pool) -> float:
        """Wait until ``queue`` has no ready message (polled every 5 ms); return that time."""
        deadline = time.monotonic() + 60 + n / 200
        while self.broker.depth(queue)[0]:
            if time.monotonic() > deadline:
                pool.check_alive()
                raise RuntimeError(f"timed out waiting for {queue} to drain")
            time.sleep(0.005)
        return time.time()

    def orchestra(self, n: int) -> dict[str, float]:
        from runs.services import runs_start

        self.reset_orchestra()
        started = time.perf_counter()
        runs_start(scenario=self.scenario, payloads=[{} for _ in range(n)])
        start_seconds = time.perf_counter() - started
        return self._drain(n, start_seconds, self.orchestra_pool, "runs_testrun")

    def handwritten(self, n: int) -> dict[str, float]:
        self.reset_peers()
        start_seconds = self._publish(self.peers.handwritten, n, args=[{}])
        return self._drain(n, start_seconds, self.peer_pool, "bench_peer_run")

    def noop(self, n: int) -> dict[str, float]:
        self.reset_peers()
        start_seconds = self._publish(self.peers.noop, n)
        return self._drain(n, start_seconds, self.peer_pool, None)

    def sleep(self, n: int) -> dict[str, float]:
        self.reset_peers()
        start_seconds = self._publish(self.peers.sleep, n, args=[self.args.sleep_ms / 1000])
        return self._drain(n, start_seconds, self.peer_pool, None)

    def _publish(self, task: Any, n: int, **options: Any) -> float:
        started = time.perf_counter()
        with task.app.producer_or_acquire() as producer:
            for _ in range(n):
                task.apply_async(producer=producer, **options)
        return time.perf_counter() - started

    def _drain(self, n: int, start_seconds: float, pool: Pool, table: str | None) -> dict:
        """Let ``pool`` consume the ``n`` waiting messages; time it until the last is done."""
        pids = [worker.process.pid for worker in pool.workers if worker.process]
        cpu_before = cpu_snapshot(pids)
        clock = time.time()
        pool.consume(True)
        try:
            if table is None:
                finished = self.wait_drained(pool.queue, n, pool)
            else:
                finished = self.wait_passed(table, n, pool)
        finally:
            pool.consume(False)
        drain = finished - clock
        cpu_after = cpu_snapshot(pids)
        cpu = {party: (cpu_after[party] - cpu_before[party]) / n * 1e6 for party in cpu_before}
        cpu["total"] = sum(cpu.values())
        return {
            "runs": n,
            "per_s": round(n / drain, 1),
            "drain_seconds": round(drain, 3),
            "start_seconds": round(start_seconds, 3),
            "start_us_per_run": round(start_seconds / n * 1e6),
            "with_start_per_s": round(n / (start_seconds + drain), 1),
            "cpu_us_per_run": {party: round(value) for party, value in cpu.items()},
        }

    def latency(self, rate: float, seconds: float) -> dict[str, float]:
        """Start runs one by one at ``rate`` per second (open loop: a late start never shifts
        the later ones); return latency percentiles in milliseconds."""
        from runs.services import run_start

        self.reset_orchestra()
        count = round(rate * seconds)
        self.orchestra_pool.consume(True)
        try:
            started = time.monotonic()
            worst_lag = 0.0
            for index in range(count):
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    worst_lag = max(worst_lag, -delay)
                run_start(scenario=self.scenario)
            offered = count / (time.monotonic() - started)
            self.wait_passed("runs_testrun", count, self.orchestra_pool)
        finally:
            self.orchestra_pool.consume(False)
        latencies = sorted(
            row[0] * 1000
            for row in self.sql(
                "SELECT EXTRACT(EPOCH FROM finished_at - queued_at)::float FROM runs_testrun"
            )
        )
        return {
            "runs": count,
            "achieved_per_s": round(offered, 1),
            "worst_start_lag_ms": round(worst_lag * 1000, 1),
            "p50_ms": round(percentile(latencies, 50), 1),
            "p90_ms": round(percentile(latencies, 90), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
            "max_ms": round(latencies[-1], 1),
        }


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all CPUs, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def cpu_busy_elsewhere(seconds: float = 0.5) -> float | None:
    """Share of the machine's CPU time (0-1) that was busy during ``seconds``, while the bench
    itself and its idle workers do nothing: other people's processes."""
    try:
        busy_before, total_before = machine_cpu()
        time.sleep(seconds)
        busy_after, total_after = machine_cpu()
    except OSError:
        return None
    return round((busy_after - busy_before) / max(0.01, total_after - total_before), 2)


class NoiseMeter:
    """How much of the machine's CPU others used during a phase: machine busy time minus the
    CPU of the bench's own parties (workers, PostgreSQL, RabbitMQ, this process), as a share
    of all CPU time. PostgreSQL and RabbitMQ are counted as ours, so others' use of them hides
    in our figures: this measures other processes only."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __enter__(self) -> NoiseMeter:
        self.machine_before = machine_cpu()
        self.ours_before = sum(cpu_snapshot(self.pids).values())
        self.share = 0.0
        return self

    def __exit__(self, *exc_info: object) -> None:
        busy_after, total_after = machine_cpu()
        ours = sum(cpu_snapshot(self.pids).values()) - self.ours_before
        busy = busy_after - self.machine_before[0]
        total = total_after - self.machine_before[1]
        self.share = round(max(0.0, busy - ours) / max(0.01, total), 3)


def _proc_cpu(pid: int | str) -> tuple[str, int, float, float]:
    """(command name, parent pid, own CPU seconds, reaped children's CPU seconds) of a process."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / ticks
    children = (int(fields[13]) + int(fields[14])) / ticks
    return name, int(fields[1]), own, children


def cpu_snapshot(worker_pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far by each party of a phase, from /proc: the workers' pool processes
    and main (consumer) processes, PostgreSQL, RabbitMQ and this process.

    PostgreSQL backends that have exited are counted through the postmaster's reaped-children
    time, so a connection per task is visible too. Other users of the same PostgreSQL and
    RabbitMQ are counted as well: on a quiet machine that is noise.
    """
    parties = {"worker_pool": 0.0, "worker_main": 0.0, "postgresql": 0.0, "rabbitmq": 0.0}
    main_pids = set(worker_pids)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            name, parent, own, children = _proc_cpu(entry)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        pid = int(entry)
        if pid in main_pids:
            parties["worker_main"] += own
        elif parent in main_pids:
            parties["worker_pool"] += own
        elif name == "postgres":
            parties["postgresql"] += own + children
        elif name in ("beam.smp", "erl_child_setup"):
            parties["rabbitmq"] += own
    own = os.times()
    parties["bench"] = own.user + own.system
    return parties


def wait_for_quiet(threshold: float, max_wait: float) -> float | None:
    """Wait up to ``max_wait`` seconds for other processes to use less than ``threshold`` of
    the CPU (measured over 0.5 s); return the last measurement."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = cpu_busy_elsewhere()
        if busy is None or busy < threshold or time.monotonic() > deadline:
            return busy


def describe(phase: str, sample: dict) -> str:
    noise = f"others {sample['others_cpu_share']:.0%}"
    if phase == "latency":
        return (
            f"offered {sample['achieved_per_s']}/s p50 {sample['p50_ms']} ms "
            f"p99 {sample['p99_ms']} ms max {sample['max_ms']} ms ({noise})"
        )
    return (
        f"{sample['per_s']:>8.1f}/s (drain {sample['drain_seconds']:.2f} s; start "
        f"{sample['start_us_per_run']} us/run; {noise})"
    )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "samples": [round(v, 2) for v in values],
    }


# --- report --------------------------------------------------------------------------------------


def summarise(samples: dict[str, list[dict]], args: argparse.Namespace, env_info: dict) -> dict:
    kinds = [kind for kind in ("orchestra", "handwritten", "noop", "sleep") if samples[kind]]

    def figure(key: str) -> dict[str, dict]:
        return {kind: spread([sample[key] for sample in samples[kind]]) for kind in kinds}

    result: dict[str, Any] = {
        "bench": "throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **env_info,
        "runs": args.runs,
        "repeat": args.repeat,
        "layout": args.layout,
        "whatif": args.whatif,
        "method": "pre-published, then drained by 2 idle worker processes: first consume to "
        "last PASSED",
        "throughput_per_s": figure("per_s"),
        "start_us_per_run": figure("start_us_per_run"),
        "with_start_per_s": figure("with_start_per_s"),
        "cpu_us_per_run": {
            kind: {
                party: round(statistics.median(s["cpu_us_per_run"][party] for s in samples[kind]))
                for party in samples[kind][0]["cpu_us_per_run"]
            }
            for kind in kinds
        },
        "others_cpu_share": {
            kind: [sample["others_cpu_share"] for sample in samples[kind]]
            for kind in [*kinds, "latency"]
            if samples[kind]
        },
    }
    ratios = {}
    for key, suffix in (("per_s", ""), ("with_start_per_s", "_with_start")):
        for peer in ("handwritten", "noop"):
            if samples["orchestra"] and samples[peer]:
                paired = [
                    mine[key] / theirs[key]
                    for mine, theirs in zip(samples["orchestra"], samples[peer], strict=False)
                ]
                mine, theirs = (
                    statistics.median(sample[key] for sample in samples[kind])
                    for kind in ("orchestra", peer)
                )
                ratios[f"orchestra_to_{peer}{suffix}"] = {
                    **spread(paired),
                    "of_medians": round(mine / theirs, 3),
                }
    result["ratios"] = ratios
    if samples["latency"]:
        result["latency_ms"] = {
            "offered_per_s": args.rate,
            "seconds": args.latency_seconds,
            **{
                key: spread([sample[key] for sample in samples["latency"]])
                for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "achieved_per_s")
            },
        }
    return result


def print_table(result: dict) -> None:
    def fmt(figure: dict, digits: int = 0) -> str:
        return (
            f"{figure['median']:,.{digits}f} "
            f"({figure['min']:,.{digits}f}-{figure['max']:,.{digits}f})"
        )

    whatif = f", what-if {result['whatif']}" if result["whatif"] else ""
    log("")
    log(
        f"{result['runs']} runs x {result['repeat']} repetitions, workers {result['layout']}"
        f"{whatif}, {result['cpus']} CPUs; median (min-max)"
    )
    log(f"  {'':<12} {'drain runs/s':>24} {'start us/run':>20} {'with start runs/s':>24}")
    for kind, figure in result["throughput_per_s"].items():
        start = result["start_us_per_run"][kind]
        with_start = result["with_start_per_s"][kind]
        log(f"  {kind:<12} {fmt(figure):>24} {fmt(start):>20} {fmt(with_start):>24}")
    parties = list(next(iter(result["cpu_us_per_run"].values()), {}))
    if parties:
        log("  CPU time per run (us, median), all processes of the machine by party:")
        log("  " + " " * 12 + "".join(f"{party:>12}" for party in parties))
        for kind, cpu in result["cpu_us_per_run"].items():
            log(f"  {kind:<12}" + "".join(f"{cpu[party]:>12,}" for party in parties))
    for name, figure in result["ratios"].items():
        log(f"  {name:<37} {fmt(figure, 2):>18}   ratio of medians {figure['of_medians']:.2f}")
    if "latency_ms" in result:
        latency = result["latency_ms"]
        log(f"  latency at {latency['offered_per_s']:g} runs/s offered, finished_at - queued_at:")
        for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
            log(f"    {key[:-3]:<4} {fmt(latency[key], 1):>24} ms")


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("--plot: matplotlib is not installed; no plot written")
        return
    kinds = list(result["throughput_per_s"])
    figures = [result["throughput_per_s"][kind] for kind in kinds]
    medians = [figure["median"] for figure in figures]
    errors = [
        [m - f["min"] for m, f in zip(medians, figures, strict=True)],
        [f["max"] - m for m, f in zip(medians, figures, strict=True)],
    ]
    panels = 2 if "latency_ms" in result else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels + 1, 4), squeeze=False)
    axis = axes[0][0]
    axis.bar(
        kinds, medians, yerr=errors, capsize=6, color=["#3b7dd8", "#999999", "#cccccc", "#dddddd"]
    )
    axis.set_yscale("log")
    axis.set_ylabel("runs/s (log)")
    axis.set_title(f"{result['runs']} one-step runs, 2 worker processes")
    for index, median in enumerate(medians):
        axis.annotate(f"{median:,.0f}", (index, median), ha="center", va="bottom")
    if panels == 2:
        latency = result["latency_ms"]
        keys = ["p50_ms", "p90_ms", "p99_ms", "max_ms"]
        values = [latency[key]["median"] for key in keys]
        lat_errors = [
            [v - latency[k]["min"] for v, k in zip(values, keys, strict=True)],
            [latency[k]["max"] - v for v, k in zip(values, keys, strict=True)],
        ]
        axis = axes[0][1]
        axis.bar([key[:-3] for key in keys], values, yerr=lat_errors, capsize=6, color="#3b7dd8")
        axis.set_ylabel("ms")
        axis.set_title(f"orchestra latency at {latency['offered_per_s']:g} runs/s offered")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    log(f"plot written to {path}")


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3000, help="runs per throughput phase")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of every phase")
    parser.add_argument(
        "--layout",
        choices=["2x1", "1x2"],
        default="2x1",
        help="two 'celery worker -c 1' processes (2x1) or one 'celery worker -c 2' (1x2)",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="offered runs/s for latency")
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="duration of the latency phase"
    )
    parser.add_argument(
        "--phases",
        default="orchestra,handwritten,noop,latency",
        help="comma-separated subset of orchestra,handwritten,noop,sleep,latency",
    )
    parser.add_argument(
        "--sleep-ms", type=float, default=3.0, help="how long a task of the sleep phase sleeps"
    )
    parser.add_argument("--warmup", type=int, default=200, help="untimed runs per phase first")
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.2,
        help="before each phase, wait for the machine's CPU to be less busy than this (0-1)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=15.0, help="longest wait for that, in seconds"
    )
    parser.add_argument(
        "--max-noise",
        type=float,
        default=0.1,
        help="redo a phase when other processes used more than this share of the CPU (0-1)",
    )
    parser.add_argument("--retries", type=int, default=2, help="at most this many redos")
    parser.add_argument("--loglevel", default="WARNING", help="log level of every worker")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL)
    )
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    parser.add_argument(
        "--whatif",
        choices=["reconnect"],
        help="run the orchestra workers with a proposed change (see bench/whatif.py)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    args.phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    unknown = set(args.phases) - {"orchestra", "handwritten", "noop", "sleep", "latency"}
    if unknown:
        parser.error(f"unknown phases: {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and SIGHUP) unwind like Ctrl-C does, so every started process is stopped; Ctrl-C
    # is restored in case the shell started us with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))

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

    import celery
    import django

    django.setup()
    from django.db import connection

    import orchestra.celery  # noqa: F401 - orchestra's app is the current app here
    from bench import peers
    from runs.services import scenario_save

    scenario_save(name=SCENARIO_NAME, definition=SCENARIO)
    with connection.cursor() as cursor:
        cursor.execute(peers.PEER_TABLES_SQL)
        cursor.execute("SHOW server_version")
        postgres_version = cursor.fetchone()[0]

    samples: dict[str, list[dict]] = {
        "orchestra": [],
        "handwritten": [],
        "noop": [],
        "sleep": [],
        "latency": [],
    }
    with ExitStack() as stack:
        broker = Broker(args.broker_url)
        stack.callback(broker.close)
        stack.callback(_drop_peer_tables, peers.DROP_PEER_TABLES_SQL)
        bench = Bench(args, broker)
        stack.callback(_stop_all, bench)
        env_info = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "celery": celery.__version__,
            "django": django.get_version(),
            "postgresql": postgres_version,
            "rabbitmq": broker.server_version(),
        }

        orchestra_app = "bench.whatif" if args.whatif else "orchestra"
        orchestra_env = {**env, "ORCHESTRA_WHATIF": args.whatif or ""}
        peer_env = {**env, "DJANGO_SETTINGS_MODULE": "bench.peer_settings"}
        pools = []
        if {"orchestra", "latency"} & set(args.phases):
            pools.append((bench.orchestra_pool, orchestra_app, orchestra_env))
        if {"handwritten", "noop", "sleep"} & set(args.phases):
            pools.append((bench.peer_pool, "bench.peers", peer_env))
        # Declared (and emptied) before any worker or watcher looks at them.
        bench.reset_orchestra()
        bench.reset_peers()
        for pool, app_name, worker_env in pools:
            pool.start(app_name, worker_env, args)
        for pool, _, _ in pools:
            pool.wait_ready(broker)
        log(f"workers ready ({args.layout})")

        try:
            run_phases(bench, args, samples)
        except (KeyboardInterrupt, SystemExit):
            bench.completed = True  # interrupted, not failed: the worker logs are not needed
            raise
        bench.reset_orchestra()
        bench.reset_peers()
        bench.completed = True

    result = summarise(samples, args, env_info)
    print_table(result)
    if args.plot:
        plot(result, args.plot)
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        (RESULTS_DIR / f"throughput-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return 0


def run_phases(bench: Bench, args: argparse.Namespace, samples: dict[str, list[dict]]) -> None:
    """The warm-up, then ``args.repeat`` repetitions of every phase, into ``samples``."""
    if args.warmup:
        for phase in args.phases:
            if phase == "latency":
                continue
            getattr(bench, phase)(min(args.warmup, args.runs))
        log(f"warm-up done ({args.warmup} runs per phase)")

    pids = [w.process.pid for pool in bench.pools for w in pool.workers if w.process]
    for repetition in range(1, args.repeat + 1):
        for phase in args.phases:
            tries = []
            for _ in range(1 + args.retries):
                # Other processes on the machine skew the figures: wait a little for a
                # quiet moment, measure how much CPU they took meanwhile, and do the phase
                # again when it was too much.
                load = wait_for_quiet(args.quiet_below, args.quiet_wait)
                with NoiseMeter(pids) as noise:
                    if phase == "latency":
                        sample = bench.latency(args.rate, args.latency_seconds)
                    else:
                        sample = getattr(bench, phase)(args.runs)
                sample["cpu_busy_before"] = load
                sample["others_cpu_share"] = noise.share
                tries.append(sample)
                log(f"[{repetition}/{args.repeat}] {phase:<11} {describe(phase, sample)}")
                if noise.share <= args.max_noise:
                    break
                log(f"    others used {noise.share:.0%} of the CPU meanwhile")
            samples[phase].append(min(tries, key=lambda s: s["others_cpu_share"]))


def _stop_all(bench: Bench) -> None:
    for pool in bench.pools:
        pool.stop()
    logs = [worker.log for pool in bench.pools for worker in pool.workers]
    if bench.completed:
        for path in logs:
            path.unlink(missing_ok=True)
    elif logs:
        log("worker logs kept: " + ", ".join(str(path) for path in logs))


def _drop_peer_tables(statement: str) -> None:
    from django.db import DatabaseError, connection

    try:
        connection.close()  # an interrupted query may have left it unusable
        with connection.cursor() as cursor:
            cursor.execute(statement)
    except DatabaseError as exc:
        log(f"could not drop the peer tables: {exc}")


if __name__ == "__main__":
    sys.exit(main())
