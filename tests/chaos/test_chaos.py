"""Nothing is lost, nothing runs twice, one lane never overlaps itself: under injected faults.

The short variant (``test_short_mixed_faults``) runs in ``make test``: one load with every kind
of fault injected once, in a random order (``CHAOS_FAULTS=cancel,pause`` picks some instead).
``make chaos`` (``CHAOS_FULL=1``) also runs each kind on its own under a bigger load, then
several mixed rounds. Each prints the checker's counts.
"""

from __future__ import annotations

import os
import random
import threading
import time
from contextlib import suppress

import pytest

from queue_catalog.models import QueueRecord
from queue_catalog.services import RecordConflict, queue_record_cancel
from runs.models import TestRun
from runs.services import RunConflict, run_cancel
from tests.chaos.harness import (
    FAULTS,
    Cluster,
    Load,
    check,
    database_summary,
    inject,
    make_scenarios,
    settle,
)
from tests.chaos.target import make_server
from tests.conftest import purge_queues
from tests.support import BeatProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db")]

FULL = os.environ.get("CHAOS_FULL") == "1"
SEED = int(os.environ.get("CHAOS_SEED", str(random.SystemRandom().randrange(10**6))))
# Every run and record must be terminal within this bound after the last fault: a lease (6 s in
# the tests) plus a few sweeps, delivery retries and the rest of the load.
SETTLE_SECONDS = 120


@pytest.fixture
def target():
    server = make_server()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture
def cluster(django_db_setup):
    nodes = Cluster(size=3)
    nodes.start()
    beat = BeatProcess(interval=0.5).start()
    yield nodes
    cancel_leftovers()  # after a failed round, so that the next test starts from a settled queue
    beat.stop()
    nodes.stop()
    purge_queues()


def cancel_leftovers() -> None:
    for record_id in QueueRecord.objects.filter(status__in=["SCHEDULED", "RUNNING"]).values_list(
        "id", flat=True
    ):
        with suppress(RecordConflict):
            queue_record_cancel(record_id=record_id)
    for run_id in TestRun.objects.filter(status__in=["QUEUED", "IN_PROGRESS"]).values_list(
        "id", flat=True
    ):
        with suppress(RunConflict):
            run_cancel(run_id=run_id)


def run_round(target, cluster: Cluster, faults: list[str], runs: int, records: int, seed: int):
    rng = random.Random(seed)
    url = f"http://127.0.0.1:{target.server_port}"
    scenarios = make_scenarios(url)
    load = Load(url, target.evidence)
    load.start(scenarios, runs, records, rng)
    started = time.monotonic()
    log = []
    for name in faults:
        log.append(f"{time.monotonic() - started:5.1f}s {name}: {inject(name, cluster, load, rng)}")
    settle(load, SETTLE_SECONDS)
    took = time.monotonic() - started
    verdict = check(load, target.evidence.snapshot())
    counts = verdict.counts()
    print(
        f"\nchaos seed {seed}, faults {faults}: {len(load.run_ids)} runs + {len(load.record_ids)}"
        f" records settled in {took:.1f}s (bound {SETTLE_SECONDS}s); runs: {database_summary()}"
    )
    print("  " + "\n  ".join(log))
    print("  " + "  ".join(f"{name} {count}" for name, count in counts.items()))
    violations = [
        f"  {name}: {item}"
        for name, items in vars(verdict).items()
        if name != "recovered"
        for item in items[:20]
    ]
    print("\n".join(violations))
    assert verdict.clean, "the checker found violations (printed above): " + ", ".join(
        f"{name} {count}" for name, count in counts.items() if count and name != "recovered"
    )
    # The faults really happened.
    if "cancel" in faults:
        assert {cancel.kind for cancel in load.cancels} == {"run", "record"}
    if "pause" in faults:
        assert all(pause.taken_over for pause in load.pauses)
    return counts


def test_short_mixed_faults(target, cluster):
    faults = [name for name in os.environ.get("CHAOS_FAULTS", "").split(",") if name]
    if not faults:
        faults = list(FAULTS)
        random.Random(SEED).shuffle(faults)

    counts = run_round(target, cluster, faults, runs=60, records=40, seed=SEED)

    if {"kill-child", "kill-worker"} & set(faults):
        assert counts["recovered"] >= 1  # the kills did hit runs in the middle of their steps


@pytest.mark.skipif(not FULL, reason="the full fault-injection suite runs with `make chaos`")
@pytest.mark.parametrize("fault", list(FAULTS))
def test_one_kind_of_fault_under_load(target, cluster, fault):
    faults = [fault] * (3 if fault in ("kill-child", "kill-worker", "db-connections") else 1)
    run_round(target, cluster, faults, runs=150, records=100, seed=SEED)
    if fault == "long-step":  # the broker did take the deliveries back, the fault really happened
        logs = "".join(worker.log.read_text() for worker in cluster.workers)
        assert "PRECONDITION_FAILED - delivery acknowledgement" in logs


@pytest.mark.skipif(not FULL, reason="the full fault-injection suite runs with `make chaos`")
@pytest.mark.parametrize("round_number", range(3))
def test_random_mix_of_faults_under_load(target, cluster, round_number):
    rng = random.Random(SEED + round_number)
    faults = [rng.choice(list(FAULTS)) for _ in range(8)]
    run_round(target, cluster, faults, runs=150, records=100, seed=SEED + round_number)
