"""Fault injection: a steady load, faults injected while it runs, and a Jepsen-style checker.

The load is runs and queue records over a dozen scenarios (some flaky) executed by real worker
processes and beat. Every request of a chaos step carries its lane, run id, delivery attempt,
queue record id, start count and step to the suite's own target (``tests/chaos/target.py``),
which keeps that, with its own clock's receive and finish instants, as independent evidence of
every execution. The checker then reads the database and that evidence.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import connection, connections
from kombu import Producer

from celeryconfig import RUNS_QUEUE, runs_exchange
from queue_catalog.models import QueueRecord, QueueRun
from queue_catalog.services import RecordConflict, queue_record_cancel, queue_records_create
from queue_catalog.states import TERMINAL_STATUSES as RECORD_TERMINAL
from runs.models import DeadLetter, Scenario, StepResult, TestRun
from runs.services import RunConflict, run_cancel, runs_start, scenario_save
from runs.states import TERMINAL_STATUSES as RUN_TERMINAL
from runs.tasks import execute_run
from tests.chaos.target import BINARY_KINDS, HUGE_KINDS, Evidence, Request
from tests.conftest import broker_connection
from tests.support import WorkerProcess, wait_for

SCENARIOS = 12
FLAKY_EVERY = 4  # every 4th scenario fails its first start per queue record
VICTIM_STEP_SECONDS = 2  # runs started for a kill when the load has drained
# The chaos workers' lease (the tests' default is 6 s): a paused worker loses it sooner.
LEASE_SECONDS = 4
# Lower than the default, so that huge bodies stay cheap to send.
MAX_RESPONSE_BYTES = 65536
WORKER_ENV = {
    "ORCHESTRA_RUN_LEASE_SECONDS": str(LEASE_SECONDS),
    "ORCHESTRA_MAX_RESPONSE_BYTES": str(MAX_RESPONSE_BYTES),
}


def step_url(target_url: str, endpoint: str, *, lane: str, step: str, **query: object) -> str:
    """The URL of a chaos step: the endpoint, and who sends the request, for the target's log."""
    sender = (
        f"lane={lane}&step={step}&run={{{{ run.id }}}}&attempt={{{{ run.attempt }}}}"
        "&record={{ queueRecordId }}&start={{ queueStartCount }}"
    )
    extra = "".join(f"&{name}={value}" for name, value in query.items())
    return f"{target_url}/{endpoint}?{sender}{extra}"


def tick(target_url: str, lane: str, step: str, hold: float = 0) -> dict:
    """A step calling the target's ``/tick``, which answers after ``hold`` seconds."""
    url = step_url(target_url, "tick", lane=lane, step=step, **({"hold": hold} if hold else {}))
    return {"name": step, "plugin": "http", "with": {"url": url}, "expect": {"status": 200}}


def work(seconds: float, name: str = "work") -> dict:
    return {"name": name, "plugin": "delay", "with": {"seconds": seconds}}


def chaos_definition(
    target_url: str, lane: str, index: int, work_seconds: float | None = None
) -> dict:
    """Steps ``a`` (a tick), ``work`` (a delay) and ``b`` (a tick the target holds a little, so
    that cancels land while it is in flight); a flaky first step for every 4th scenario."""
    steps = []
    if index % FLAKY_EVERY == 0:
        url = step_url(target_url, "flaky/chaos-{{ queueRecordId }}", lane=lane, step="flaky")
        steps.append(
            {
                "name": "flaky",
                "plugin": "http",
                "with": {"url": url + "&fail=1"},
                "expect": {"status": 200},
            }
        )
    steps += [
        tick(target_url, lane, "a"),
        work(work_seconds or 0.05 + 0.05 * (index % 4)),
        tick(target_url, lane, "b", hold=0.1 * (index % 3)),
    ]
    return {"steps": steps}


@dataclass
class Cancel:
    """A cancel that the service accepted: what, when (the target's clock), and its run."""

    kind: str  # "run" or "record"
    id: int
    run_id: int | None
    at: float
    db_at: datetime  # the database's clock, which orchestra's finished_at is on


@dataclass
class Pause:
    """A worker stopped (SIGSTOP) while executing ``attempt`` of ``run_id``, and resumed."""

    run_id: int
    attempt: int
    resumed: float  # the target's clock
    taken_over: bool


@dataclass
class Load:
    """What was started, so that nothing can go missing unnoticed, and what the faults did."""

    target_url: str
    evidence: Evidence
    run_ids: set[int] = field(default_factory=set)
    record_ids: set[int] = field(default_factory=set)
    poison: int = 0
    cancels: list[Cancel] = field(default_factory=list)
    pauses: list[Pause] = field(default_factory=list)
    # Runs executing while a fault could interrupt them: they may be executed again.
    disturbed: set[int] = field(default_factory=set)

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
        scenario_save(name=f"chaos-{i}", definition=chaos_definition(target_url, f"chaos-{i}", i))
        for i in range(SCENARIOS)
    ]


def save_scenario(name: str, steps: list[dict]) -> Scenario:
    return scenario_save(name=name, definition={"steps": steps})


def start_runs(load: Load, *, name: str, work_seconds: float, count: int) -> list[int]:
    """Start ``count`` more runs of a chaos scenario (saved as ``name``) whose work step lasts
    ``work_seconds``; the load counts them like the others."""
    scenario = scenario_save(
        name=name, definition=chaos_definition(load.target_url, name, 1, work_seconds=work_seconds)
    )
    runs = runs_start(scenario=scenario, payloads=[{}] * count)
    load.run_ids |= {run.id for run in runs}
    return [run.id for run in runs]


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
            worker = WorkerProcess(f"chaos{self.started}", env=WORKER_ENV)
            self.workers.append(worker.start())

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


CANCELS = 4  # of runs, and of queue records, per cancel fault; half of them while in flight
CANCEL_HOLD_SECONDS = 1.0  # how long the target holds each of the victims' three requests
CANCEL_WORK_SECONDS = 0.3
CANCEL_LANE = "chaos-cancel"


def cancel_scenario(load: Load) -> Scenario:
    """A scenario whose three requests the target holds for a second each: a cancel lands while
    one is in flight."""
    lane = CANCEL_LANE
    steps = [
        tick(load.target_url, lane, "a", hold=CANCEL_HOLD_SECONDS),
        work(CANCEL_WORK_SECONDS, "work-1"),
        tick(load.target_url, lane, "b", hold=CANCEL_HOLD_SECONDS),
        work(CANCEL_WORK_SECONDS, "work-2"),
        tick(load.target_url, lane, "c", hold=CANCEL_HOLD_SECONDS),
    ]
    return save_scenario(lane, steps)


def ensure_cancel_victims(load: Load, scenario: Scenario, kind: str) -> None:
    """Urgent runs or records of the cancel scenario, so that a cancel always finds one even
    when the load has drained: not stuck behind the load, and neither is the lane's next launch
    (two records are kept in the lane), which would start at once if the lane let it. One run
    at a time, so that a worker stays free for that next launch."""
    if kind == "record":
        active = QueueRecord.objects.filter(scenario=scenario, status__in=["SCHEDULED", "RUNNING"])
        missing = 2 - active.count()
        if missing > 0:
            records = queue_records_create(
                scenario=scenario, payloads=[{}] * missing, priority="urgent"
            )
            load.record_ids |= {record.id for record in records}
    elif (
        not TestRun.objects.filter(scenario=scenario, status__in=["QUEUED", "IN_PROGRESS"])
        .exclude(context__has_key="queueRecordId")
        .exists()
    ):
        runs = runs_start(scenario=scenario, payloads=[{}], priority="urgent")
        load.run_ids |= {run.id for run in runs}


def _cancel_instants() -> tuple[float, datetime]:
    """Now on the target's clock (this process's monotonic one) and on the database's."""
    at = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return at, cursor.fetchone()[0]


def _cancel_one(load: Load, kind: str, rng: random.Random, *, in_flight: bool) -> bool:
    """Cancel one running run or record (a victim with a request in flight at the target, if asked);
    False when there is none or it finished meanwhile."""
    # A victim's request that has just begun: the lane's next launch has time to start beside it.
    fresh = time.monotonic() - CANCEL_HOLD_SECONDS / 3
    in_flight_now = load.evidence.in_flight()
    held = {r.run for r in in_flight_now if r.lane == CANCEL_LANE and r.received > fresh}
    if kind == "record":
        running = QueueRecord.objects.filter(id__in=load.record_ids, status="RUNNING")
        candidates = sorted(running.values_list("id", "current_run_id"))
    else:
        running = TestRun.objects.filter(id__in=load.run_ids, status="IN_PROGRESS")
        candidates = [(run_id, run_id) for run_id in sorted(running.values_list("id", flat=True))]
    if in_flight:
        candidates = [c for c in candidates if c[1] in held]
    if not candidates:
        return False
    chosen, run_id = rng.choice(candidates)
    try:
        if kind == "record":
            run_id = queue_record_cancel(record_id=chosen).current_run_id
        else:
            run_cancel(run_id=chosen)
    except (RecordConflict, RunConflict):
        return False
    load.cancels.append(Cancel(kind, chosen, run_id, *_cancel_instants()))
    return True


def cancel_running(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Cancel running runs and running queue records (through the services), half of them
    victims with a request in flight at the target."""
    scenario = cancel_scenario(load)
    plan = [(kind, n < CANCELS // 2) for n in range(CANCELS) for kind in ("run", "record")]
    rng.shuffle(plan)
    done = Counter()
    for kind, in_flight in plan:
        ensure_cancel_victims(load, scenario, kind)
        with suppress(AssertionError):  # nothing to cancel for a while: the count tells
            wait_for(
                lambda kind=kind, in_flight=in_flight: _cancel_one(
                    load, kind, rng, in_flight=in_flight
                ),
                timeout=10,
                interval=0.05,
                message=f"a running {kind} to cancel",
            )
            done[kind, in_flight] += 1
    counts = ", ".join(
        f"{n} {kind}s{' in flight' * held}" for (kind, held), n in sorted(done.items())
    )
    return f"cancelled {counts}"


PAUSE_WORK_SECONDS = 2  # the victims' work step, during which the pause lands
PAUSE_BOUND_SECONDS = LEASE_SECONDS + 30  # the longest a worker stays stopped


def pause_worker(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """SIGSTOP the pool child (or the whole worker) executing a run in its work step, until its
    lease lapsed and another worker took the run over; then SIGCONT. The stale owner must not
    send anything more to the target. Two victims, paused together when both are found: two
    chances for a race between resuming and noticing the loss."""
    victims = set(start_runs(load, name="chaos-pause", work_seconds=PAUSE_WORK_SECONDS, count=2))

    def in_work_step() -> list[tuple[WorkerProcess, int, int, int]]:
        steps = defaultdict(set)
        for request in load.evidence.snapshot():
            if request.run in victims:
                steps[request.run, request.attempt].add(request.step)
        found = []
        owners = TestRun.objects.filter(id__in=victims, status="IN_PROGRESS")
        for run_id, attempt, owner in owners.values_list("id", "attempt", "worker"):
            if steps[run_id, attempt] != {"a"} or ":" not in owner:
                continue
            pid = int(owner.rsplit(":", 1)[1])
            found += [(w, pid, run_id, attempt) for w in cluster.workers if pid in w.child_pids()]
        return sorted(found, key=lambda victim: victim[2])

    paused = wait_for(in_work_step, timeout=30, interval=0.02, message="a run in its work step")
    with suppress(AssertionError):  # the other victim too, if it reaches its work step soon
        paused = wait_for(
            lambda: both if len(both := in_work_step()) > 1 else None,
            timeout=PAUSE_WORK_SECONDS / 2,
            interval=0.02,
            message="both runs in their work step",
        )
    signals = []
    for worker, pid, _, _ in paused:
        whole = rng.random() < 0.5
        signals.append((os.killpg, worker.pid) if whole else (os.kill, pid))
        signals[-1][0](signals[-1][1], signal.SIGSTOP)
    stopped = time.monotonic()
    runs = {run_id: attempt for _, _, run_id, attempt in paused}

    def taken_over() -> set[int]:
        moved = TestRun.objects.filter(id__in=runs).values_list("id", "attempt", "status")
        return {i for i, attempt, status in moved if attempt > runs[i] or status in RUN_TERMINAL}

    try:
        with suppress(AssertionError):  # reported below; the checker judges the runs
            wait_for(
                lambda: taken_over() == set(runs),
                timeout=PAUSE_BOUND_SECONDS,
                interval=0.1,
                message="other workers to take the paused runs over",
            )
    finally:
        for send, pid in signals:
            send(pid, signal.SIGCONT)
    resumed, moved = time.monotonic(), taken_over()
    for run_id, attempt in runs.items():
        load.pauses.append(Pause(run_id, attempt, resumed, run_id in moved))
        load.disturbed.add(run_id)
    what = ", ".join(
        f"{'worker' if send is os.killpg else 'pool child of'} {worker.name} (run {run_id}"
        f"{'' if run_id in moved else ' NOT taken over'})"
        for (send, _), (worker, _, run_id, _) in zip(signals, paused, strict=True)
    )
    return f"paused {what} for {resumed - stopped:.1f}s"


BINARY_RUNS = 10


def binary_bodies(cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Runs whose middle step fetches a body no text column takes as it is: random bytes, a PNG,
    NULs (raw and escaped in JSON), NaN, invalid UTF-8, or more than ORCHESTRA_MAX_RESPONSE_BYTES
    (with a length, or chunked)."""
    kinds = [
        *BINARY_KINDS,
        *(rng.choice(BINARY_KINDS) for _ in range(BINARY_RUNS - len(BINARY_KINDS))),
    ]
    for kind in kinds:
        huge = kind in HUGE_KINDS
        size = rng.randrange(2, 4) * MAX_RESPONSE_BYTES if huge else rng.randrange(512, 16384)
        lane = f"chaos-binary-{kind}"
        fetch = {
            "name": "fetch",
            "plugin": "http",
            "with": {
                "url": step_url(
                    load.target_url, "binary", lane=lane, step="fetch", kind=kind, size=size
                )
            },
            "expect": {"status": 200},
        }
        if kind in ("json-nul", "nan"):
            fetch["capture"] = {"value": "$.value"}  # a NUL, a NaN as a captured value
        scenario = save_scenario(
            lane, [tick(load.target_url, lane, "a"), fetch, tick(load.target_url, lane, "b")]
        )
        (run,) = runs_start(scenario=scenario, payloads=[{}])
        load.run_ids.add(run.id)
    return f"started {len(kinds)} runs fetching {', '.join(sorted(set(kinds)))} bodies"


FAULTS: dict[str, Callable[[Cluster, Load, random.Random], str]] = {
    "kill-child": kill_child,
    "kill-worker": kill_worker,
    "db-connections": terminate_database_connections,
    "broker-connections": close_broker_connections,
    "duplicate": duplicate_deliveries,
    "poison": poison_messages,
    "unpublished": crash_before_publish,
    "cancel": cancel_running,
    "pause": pause_worker,
    "binary": binary_bodies,
}
if PRIVATE_SERVICES:
    FAULTS |= {
        "restart-broker": restart_broker,
        "restart-database": restart_database,
        "long-step": long_steps,
    }


# Faults that may interrupt any run executing meanwhile, so that it is executed again as a new
# attempt. A pause interrupts only the runs it stopped, which it notes itself.
DISRUPTIVE = {
    "kill-child",
    "kill-worker",
    "db-connections",
    "broker-connections",
    "restart-broker",
    "restart-database",
    "long-step",
}


def inject(name: str, cluster: Cluster, load: Load, rng: random.Random) -> str:
    """Inject fault ``name``; note the runs it may have interrupted (executing before or after)."""

    def executing() -> set[int]:
        return set(TestRun.objects.filter(status="IN_PROGRESS").values_list("id", flat=True))

    disruptive = name in DISRUPTIVE
    before = executing() if disruptive else set()
    outcome = FAULTS[name](cluster, load, rng)
    if disruptive:
        load.disturbed |= before | executing()
    return outcome


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


def check(load: Load, requests: list[Request]) -> Verdict:
    """Judge the outcome from the database and from the target's evidence (``requests``)."""
    verdict = Verdict()
    links = list(QueueRun.objects.filter(record_id__in=load.record_ids).select_related("run"))
    all_run_ids = load.run_ids | {link.run_id for link in links}
    runs = {run.id: run for run in TestRun.objects.filter(id__in=all_run_ids)}
    steps = defaultdict(list)
    for step in StepResult.objects.filter(run_id__in=all_run_ids):
        steps[step.run_id].append(step)
    seen = defaultdict(list)  # run id -> the target's requests of that run, in receive order
    for request in requests:
        if request.run in runs:
            seen[request.run].append(request)
        else:
            verdict.unexpected.append(
                ("the target saw a launch nobody started", request.path, request.run)
            )

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
    executions = Counter((r.run, r.attempt, r.step) for r in requests if r.run in runs)
    verdict.duplicated += [key for key, count in executions.items() if count > 1]
    # ... or a run was executed by a second attempt with no fault to explain it.
    for run_id, requests in seen.items():
        attempts = sorted({r.attempt for r in requests}, key=str)
        if len(attempts) > 1 and run_id not in load.disturbed:
            verdict.duplicated.append(("executed again with no fault", run_id, attempts))

    for run in runs.values():
        _check_run(verdict, run, steps[run.id], seen[run.id])
    _check_records(verdict, records, links, seen)
    _check_cancels(verdict, load, runs, records, seen)
    _check_pauses(verdict, load, seen)
    _check_lanes(verdict, records, links, seen)
    return verdict


def _check_run(
    verdict: Verdict, run: TestRun, steps: list[StepResult], seen: list[Request]
) -> None:
    final = [s for s in steps if s.attempt == run.attempt]
    definition_steps = len(run.definition["steps"])
    if run.status == "PASSED" and (
        len(final) != definition_steps or any(s.status != "PASSED" for s in final)
    ):
        verdict.unexpected.append(("PASSED run with steps not all PASSED", run.id))
    if run.status in ("PASSED", "FAILED") and run.attempt == 0:
        verdict.unexpected.append(("finished run never claimed", run.id))
    if any(s.attempt > run.attempt for s in steps):
        verdict.disagreements.append(("step of a later attempt than the run's", run.id))
    if run.status in RUN_TERMINAL and run.attempt > 1:
        verdict.recovered.append(("run", run.id, run.attempt))

    # What the target saw of the run against what orchestra stored.
    if any(r.attempt is None or r.attempt > run.attempt for r in seen):
        verdict.disagreements.append(("the target saw a later attempt than the run's", run.id))
    record_id = run.context.get("queueRecordId")
    if any((r.record, r.start) != (record_id, run.context.get("queueStartCount")) for r in seen):
        verdict.disagreements.append(("the target saw another record or start", run.id))
    http_steps = [s["name"] for s in run.definition["steps"] if s["plugin"] == "http"]
    last = {r.step: r for r in seen if r.attempt == run.attempt}
    if run.status == "PASSED" and set(http_steps) - set(last):
        verdict.disagreements.append(("PASSED, but the target missed steps", run.id))
    # A stale attempt sends nothing once a later attempt has begun (fencing by the claim).
    attempted = [r for r in seen if r.attempt is not None]
    first_of = {}
    for request in attempted:
        first_of.setdefault(request.attempt, request.received)
    for request in attempted:
        later = [at for attempt, at in first_of.items() if attempt > request.attempt]
        if later and request.received > min(later):
            verdict.overlaps.append(
                ("stale attempt sent after a later one began", run.id, request.attempt)
            )
            break

    fetches = [r for r in seen if r.path == "/binary"]
    if fetches:
        _check_binary(verdict, run, fetches[-1], seen, final)


def _check_binary(
    verdict: Verdict, run: TestRun, fetch: Request, seen: list[Request], final: list[StepResult]
) -> None:
    """Judged by the last body the target sent the run: one over ORCHESTRA_MAX_RESPONSE_BYTES
    ends its step ERROR and skips the rest; any other is stored (a binary one with its SHA-256)
    and the run passes."""
    if run.status == "CANCELLED":
        return
    kind = fetch.lane.removeprefix("chaos-binary-")
    huge = fetch.body_bytes > MAX_RESPONSE_BYTES
    expected = "ERROR" if huge else "PASSED"
    stored = {s.name: s for s in final}
    if run.status != expected:
        verdict.disagreements.append(
            (f"{kind} body: run {expected} expected", run.id, run.status, run.error[:100])
        )
    elif huge and (stored.get("fetch") is None or stored["fetch"].status != "ERROR"):
        verdict.disagreements.append((f"{kind} body: its step ERROR expected", run.id))
    if huge and any(r.step == "b" and r.attempt == fetch.attempt for r in seen):
        verdict.unexpected.append(("step after a huge body was executed", run.id))
    binary = kind in ("random", "png", "invalid-utf8")
    if (
        binary
        and not huge
        and "fetch" in stored
        and (fetch.body_sha256 not in json.dumps(stored["fetch"].response))
    ):
        verdict.disagreements.append((f"{kind} body stored without its SHA-256", run.id))


def _check_records(verdict: Verdict, records: dict, links: list[QueueRun], seen: dict) -> None:
    attempts = defaultdict(list)
    for link in links:
        attempts[link.record_id].append(link)
    for record in records.values():
        ordered = sorted(attempts[record.id], key=lambda link: link.start_number)
        if record.start_count != len(ordered) or [x.start_number for x in ordered] != list(
            range(1, len(ordered) + 1)
        ):
            verdict.disagreements.append(("start count vs runs", record.id, record.start_count))
        failed_starts = [x for x in ordered if x.run.status != "PASSED"]
        if record.status in ("DONE", "ERROR") and len(record.errors) != len(failed_starts):
            verdict.disagreements.append(("errors vs failed runs", record.id))
        last = ordered[-1].run if ordered else None
        if record.status == "DONE" and (last is None or last.status != "PASSED"):
            verdict.unexpected.append(("DONE record whose last run did not pass", record.id))
        if record.status == "ERROR" and record.start_count < record.max_attempts:
            verdict.unexpected.append(("ERROR record with starts left", record.id))
        if any(x.run.attempt > 1 for x in ordered) and record.status in RECORD_TERMINAL:
            verdict.recovered.append(("record", record.id))


def _check_cancels(verdict: Verdict, load: Load, runs: dict, records: dict, seen: dict) -> None:
    """A cancelled record ends CANCELLED. Its run, or a cancelled run, ends CANCELLED unless it
    had finished first (by the end of the cancel call). Requests already in flight, or of the
    step it was about to start, may still reach the target after the cancel; a request of a
    second step means the worker went on past a step boundary after the cancel: a violation."""
    for cancel in load.cancels:
        if cancel.kind == "record" and records[cancel.id].status != "CANCELLED":
            verdict.unexpected.append(
                ("cancelled record ended", cancel.id, records[cancel.id].status)
            )
        run = runs.get(cancel.run_id)
        if run is None:
            continue
        if run.status != "CANCELLED" and (
            run.finished_at is None or run.finished_at > cancel.db_at
        ):
            verdict.unexpected.append(("cancelled run ended", run.id, run.status))
        after = {(r.attempt, r.step) for r in seen[run.id] if r.received > cancel.at}
        if len(after) > 1:
            verdict.unexpected.append(
                ("cancelled run went on to a new step", run.id, sorted(after, key=str))
            )


def _check_pauses(verdict: Verdict, load: Load, seen: dict) -> None:
    """Once resumed, a paused owner whose run was taken over sends nothing more."""
    for pause in load.pauses:
        late = [
            r
            for r in seen[pause.run_id]
            if r.attempt == pause.attempt and r.received > pause.resumed
        ]
        if pause.taken_over and late:
            verdict.overlaps.append(
                ("paused owner sent after the takeover", pause.run_id, late[0].step)
            )


def _check_lanes(verdict: Verdict, records: dict, links: list[QueueRun], seen: dict) -> None:
    """Two launches of one lane in flight at the target at the same time, by its clock: each
    launch (a run, all its attempts) spans its first request's receipt to its last one's end,
    so the next launch of a cancelled record starts only after the cancelled one went quiet."""
    now = time.monotonic()
    lanes = defaultdict(list)
    for link in links:
        requests = seen[link.run_id]
        if requests:
            start = min(r.received for r in requests)
            end = max(r.finished if r.finished is not None else now for r in requests)
            lanes[records[link.record_id].scenario_id].append((start, end, link.run_id))
    for scenario_id, spans in lanes.items():
        spans.sort()
        busy_until, busy_run = spans[0][1], spans[0][2]
        for start, end, run_id in spans[1:]:
            if start < busy_until:
                verdict.overlaps.append(
                    ("lane", scenario_id, busy_run, run_id, round(busy_until - start, 3))
                )
            if end > busy_until:
                busy_until, busy_run = end, run_id


def database_summary() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM runs_testrun GROUP BY status ORDER BY 1")
        return ", ".join(f"{status} {count}" for status, count in cursor.fetchall())
