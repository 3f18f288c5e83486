"""Fault injection: a steady load, faults injected while it runs, and a Jepsen-style checker.

The load is runs and queue records over a dozen scenarios (some flaky) executed by real worker
processes and beat. Every step of a chaos scenario calls the target's ``/tick`` endpoint with
its run id, delivery attempt and step, so the target holds independent evidence of every
execution. The checker then reads the database and that evidence.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connection, connections
from kombu import Producer

from celeryconfig import RUNS_QUEUE, runs_exchange
from queue_catalog.models import QueueRecord, QueueRun
from queue_catalog.services import queue_records_create
from queue_catalog.states import TERMINAL_STATUSES as RECORD_TERMINAL
from runs.models import DeadLetter, Scenario, StepResult, TestRun
from runs.services import runs_start, scenario_save
from runs.states import TERMINAL_STATUSES as RUN_TERMINAL
from runs.tasks import execute_run
from tests.conftest import broker_connection
from tests.support import WorkerProcess, wait_for

SCENARIOS = 12
FLAKY_EVERY = 4  # every 4th scenario fails its first start per queue record
VICTIM_STEP_SECONDS = 2  # runs started for a kill when the load has drained


def chaos_definition(target_url: str, index: int, work_seconds: float | None = None) -> dict:
    tick = f"{target_url}/tick?run={{{{ run.id }}}}&attempt={{{{ run.attempt }}}}"
    steps = []
    if index % FLAKY_EVERY == 0:
        steps.append(
            {
                "name": "flaky",
                "plugin": "http",
                "with": {"url": f"{target_url}/flaky/chaos-{{{{ queueRecordId }}}}?fail=1"},
                "expect": {"status": 200},
            }
        )
    steps += [
        {
            "name": "a",
            "plugin": "http",
            "with": {"url": f"{tick}&step=a"},
            "expect": {"status": 200},
        },
        {
            "name": "work",
            "plugin": "delay",
            "with": {"seconds": work_seconds or 0.05 + 0.05 * (index % 4)},
        },
        {
            "name": "b",
            "plugin": "http",
            "with": {"url": f"{tick}&step=b"},
            "expect": {"status": 200},
        },
    ]
    return {"steps": steps}


@dataclass
class Load:
    """What was started, so that nothing can go missing unnoticed."""

    run_ids: set[int] = field(default_factory=set)
    record_ids: set[int] = field(default_factory=set)
    poison: int = 0

    def start(self, scenarios: list[Scenario], runs: int, records: int, rng: random.Random):
        for _ in range(runs):
            (run,) = runs_start(scenario=rng.choice(scenarios), payloads=[{}])
            self.run_ids.add(run.id)
        per_lane = Counter(rng.choice(range(len(scenarios))) for _ in range(records))
        for index, count in per_lane.items():
            created = queue_records_create(scenario=scenarios[index], payloads=[{}] * count)
            self.record_ids |= {record.id for record in created}


def make_scenarios(target_url: str) -> list[Scenario]:
    return [
        scenario_save(name=f"chaos-{i}", definition=chaos_definition(target_url, i))
        for i in range(SCENARIOS)
    ]


def start_runs(load: Load, *, name: str, work_seconds: float, count: int) -> None:
    """Start ``count`` more runs of a chaos scenario (saved as ``name``) whose work step lasts
    ``work_seconds``; the load counts them like the others."""
    target_url = Scenario.objects.get(name="chaos-0").definition["steps"][-1]["with"]["url"]
    base = target_url.split("/tick")[0]
    scenario = scenario_save(
        name=name, definition=chaos_definition(base, 1, work_seconds=work_seconds)
    )
    runs = runs_start(scenario=scenario, payloads=[{}] * count)
    load.run_ids |= {run.id for run in runs}


# --- faults -------------------------------------------------------------------------------------


class Cluster:
    """The worker processes under test; faults kill and replace them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.workers: list[WorkerProcess] = []
        self.started = 0

    def start(self) -> None:
        while len(self.workers) < self.size:
            self.started += 1
            self.workers.append(WorkerProcess(f"chaos{self.started}").start())

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def busy_worker(self, load: Load) -> tuple[WorkerProcess, int]:
        """A worker whose pool child is executing a run right now, and that child (waits for one).

        When nothing is executing (the load drained before this fault's turn), a few runs with
        a longer step are started for the fault to land on; they count in the load like any
        other. The run may end between this look and the kill: the kill then lands between runs.
        """
        busy = TestRun.objects.filter(status="IN_PROGRESS").values_list("worker", flat=True)

        def find():
            pids = {int(owner.rsplit(":", 1)[1]) for owner in busy.all() if ":" in owner}
            for worker in self.workers:
                for child in pids & set(worker.child_pids()):
                    return worker, child
            return None

        found = find()
        if found:
            return found
        start_runs(load, name="chaos-victim", work_seconds=VICTIM_STEP_SECONDS, count=self.size)
        return wait_for(find, timeout=20, interval=0.01, message="a busy worker")


def kill_child(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """SIGKILL the pool child executing a run, in the middle of its steps."""
    worker, child = cluster.busy_worker(load)
    subprocess.run(["kill", "-9", str(child)], check=True)
    return f"killed pool child {child} of {worker.name}"


def kill_worker(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """SIGKILL a whole worker (main process and children) mid-run; start a replacement."""
    worker, _ = cluster.busy_worker(load)
    worker.kill()
    cluster.workers.remove(worker)
    cluster.start()
    return f"killed worker {worker.name}"


def terminate_database_connections(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """pg_terminate_backend on every other connection to this session's test database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        (count,) = cursor.fetchone()
    return f"terminated {count} database connections"


def close_broker_connections(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Close every RabbitMQ connection of this session's vhost (workers, beat)."""
    vhost = settings.TEST_BROKER_VHOST
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "vhost"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = [line.split("\t")[0] for line in listing.splitlines() if line.endswith(f"\t{vhost}")]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "chaos: connection closed"],
            capture_output=True,
            check=False,
        )
    return f"closed {len(pids)} broker connections"


def duplicate_deliveries(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Deliver the message of some runs again (finished, running and queued ones)."""
    chosen = rng.sample(sorted(load.run_ids), k=min(10, len(load.run_ids)))
    for run_id in chosen:
        execute_run.apply_async(args=[run_id], priority=5)
    return f"delivered {len(chosen)} run messages twice"


def poison_messages(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Publish messages no worker can process: they must end as dead letters, not vanish."""
    bodies = [b"{not json at all", json.dumps([["not-a-run-id"], {}, {}]).encode()]
    with broker_connection() as conn:
        for body in bodies:
            Producer(conn.default_channel).publish(
                body,
                exchange=runs_exchange,
                routing_key=RUNS_QUEUE,
                content_type="application/json",
                content_encoding="utf-8",
                headers={"task": "runs.execute_run", "id": str(uuid.uuid4()), "lang": "py"},
                declare=[],
            )
    load.poison += len(bodies)
    return f"published {len(bodies)} poison messages"


def crash_before_publish(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Runs committed as QUEUED whose message never went out (a crash after the commit)."""
    scenarios = list(Scenario.objects.filter(name__startswith="chaos-"))
    for _ in range(5):
        scenario = rng.choice(scenarios)
        run = TestRun.objects.create(scenario=scenario, definition=scenario.definition)
        load.run_ids.add(run.id)
    return "committed 5 runs without publishing them"


# With `make chaos`, the suite has a RabbitMQ node and a PostgreSQL cluster of its own
# (scripts/chaos_services.sh), which it may restart; the shared ones it must never touch.
PRIVATE_SERVICES = bool(os.environ.get("CHAOS_PGDATA")) and os.environ.get(
    "RABBITMQ_NODENAME", ""
).startswith("orchestra-chaos@")
OUTAGE_SECONDS = 2  # how long a restarted service stays down


def restart_broker(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Stop the suite's own RabbitMQ node's application for a while, then start it again."""
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True)
    time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a condition
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True)
    return f"RabbitMQ stopped for {OUTAGE_SECONDS} s and started again"


def restart_database(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Restart the suite's own PostgreSQL server (fast shutdown: every connection is cut)."""
    control = [os.environ["CHAOS_PG_CTL"], "-D", os.environ["CHAOS_PGDATA"], "-w"]
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *control, "-m", "fast", "stop"],
        check=True,
        capture_output=True,
    )
    time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a condition
    log = Path(os.environ["CHAOS_PGDATA"]).parent / "log"  # the server's output, not a pipe
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *control, "-l", str(log), "start"],
        check=True,
        capture_output=True,
    )
    connections.close_all()  # this process's connection died with the server
    return f"PostgreSQL stopped for {OUTAGE_SECONDS} s and started again"


LONG_STEP_SECONDS = 8  # longer than the suite's broker's consumer_timeout (5 s)


def long_steps(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Runs whose step outlives the broker's consumer timeout: the broker takes the message
    back and redelivers it while the first worker is still executing the run."""
    start_runs(load, name="chaos-long", work_seconds=LONG_STEP_SECONDS, count=3)
    return f"started 3 runs with a {LONG_STEP_SECONDS} s step (consumer timeout 5 s)"


FAULTS: dict[str, Callable[[Cluster, Load, random.Random], str]] = {
    "kill-child": kill_child,
    "kill-worker": kill_worker,
    "db-connections": terminate_database_connections,
    "broker-connections": close_broker_connections,
    "duplicate": duplicate_deliveries,
    "poison": poison_messages,
    "unpublished": crash_before_publish,
}
if PRIVATE_SERVICES:
    FAULTS |= {
        "restart-broker": restart_broker,
        "restart-database": restart_database,
        "long-step": long_steps,
    }


# --- the checker ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    lost: list = field(default_factory=list)
    duplicated: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    recovered: list = field(default_factory=list)
    overlaps: list = field(default_factory=list)
    disagreements: list = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in vars(self).items()}

    @property
    def clean(self) -> bool:
        counts = self.counts()
        return not any(counts[name] for name in counts if name != "recovered")


def settle(load: Load, timeout: float) -> None:
    """Wait until every run and record started is terminal (or the deadline passes)."""

    def settled() -> bool:
        open_runs = TestRun.objects.filter(id__in=load.run_ids).exclude(status__in=RUN_TERMINAL)
        open_records = QueueRecord.objects.filter(id__in=load.record_ids).exclude(
            status__in=RECORD_TERMINAL
        )
        letters = DeadLetter.objects.filter(run_id_hint__isnull=True).count()
        return not open_runs.exists() and not open_records.exists() and letters >= load.poison

    # What does not settle in time, the checker reports as lost.
    with suppress(AssertionError):
        wait_for(settled, timeout=timeout, interval=0.25, message="every run and record to settle")


def check(load: Load, ticks: list[tuple[float, dict[str, str]]]) -> Verdict:
    verdict = Verdict()
    queue_run_ids = set(
        QueueRun.objects.filter(record_id__in=load.record_ids).values_list("run_id", flat=True)
    )
    all_run_ids = load.run_ids | queue_run_ids
    runs = {run.id: run for run in TestRun.objects.filter(id__in=all_run_ids)}
    steps = defaultdict(list)
    for step in StepResult.objects.filter(run_id__in=all_run_ids):
        steps[step.run_id].append(step)

    # Lost: started but never finished, or missing altogether.
    verdict.lost += [("run", i) for i in all_run_ids - set(runs)]
    verdict.lost += [("run", r.id, r.status) for r in runs.values() if r.status not in RUN_TERMINAL]
    records = {r.id: r for r in QueueRecord.objects.filter(id__in=load.record_ids)}
    verdict.lost += [("record", i) for i in load.record_ids - set(records)]
    verdict.lost += [
        ("record", r.id, r.status) for r in records.values() if r.status not in RECORD_TERMINAL
    ]
    letters = DeadLetter.objects.filter(run_id_hint__isnull=True).count()
    if letters < load.poison:
        verdict.lost.append(("poison messages not dead-lettered", load.poison - letters))

    # Duplicated: one attempt of one run executed a step twice (the target saw it twice).
    executions = Counter(
        (int(q["run"]), int(q["attempt"]), q["step"]) for _, q in ticks if q.get("run")
    )
    verdict.duplicated += [key for key, count in executions.items() if count > 1]

    for run in runs.values():
        final = [s for s in steps[run.id] if s.attempt == run.attempt]
        definition_steps = len(run.definition["steps"])
        if run.status == "PASSED" and (
            len(final) != definition_steps or any(s.status != "PASSED" for s in final)
        ):
            verdict.unexpected.append(("PASSED run with steps not all PASSED", run.id))
        if run.status in ("PASSED", "FAILED") and run.attempt == 0:
            verdict.unexpected.append(("finished run never claimed", run.id))
        if any(s.attempt > run.attempt for s in steps[run.id]):
            verdict.disagreements.append(("step of a later attempt than the run's", run.id))
        if run.status in RUN_TERMINAL and run.attempt > 1:
            verdict.recovered.append(("run", run.id, run.attempt))

    attempts = defaultdict(list)
    for link in QueueRun.objects.filter(record_id__in=load.record_ids).select_related("run"):
        attempts[link.record_id].append(link)
    for record in records.values():
        links = sorted(attempts[record.id], key=lambda link: link.start_number)
        if record.start_count != len(links) or [x.start_number for x in links] != list(
            range(1, len(links) + 1)
        ):
            verdict.disagreements.append(("start count vs runs", record.id, record.start_count))
        failed_starts = [x for x in links if x.run.status != "PASSED"]
        if record.status in ("DONE", "ERROR") and len(record.errors) != len(failed_starts):
            verdict.disagreements.append(("errors vs failed runs", record.id))
        last = links[-1].run if links else None
        if record.status == "DONE" and (last is None or last.status != "PASSED"):
            verdict.unexpected.append(("DONE record whose last run did not pass", record.id))
        if record.status == "ERROR" and record.start_count < record.max_attempts:
            verdict.unexpected.append(("ERROR record with starts left", record.id))
        if any(x.run.attempt > 1 for x in links) and record.status in RECORD_TERMINAL:
            verdict.recovered.append(("record", record.id))

    # Overlaps: two runs of one lane executing at the same time.
    lanes = defaultdict(list)
    for record in records.values():
        for link in attempts[record.id]:
            if link.run.started_at and link.run.finished_at:
                lanes[record.scenario_id].append((link.run.started_at, link.run.finished_at))
    for scenario_id, intervals in lanes.items():
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            if start < end:
                verdict.overlaps.append((scenario_id, start, end))
    return verdict


def database_summary() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM runs_testrun GROUP BY status ORDER BY 1")
        return ", ".join(f"{status} {count}" for status, count in cursor.fetchall())
