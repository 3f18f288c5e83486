"""The throttle against the real PostgreSQL: permits, pushbacks and slots, across processes,
and the executor obeying them with real worker processes and a real rate-limited target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from django.db import connection
from django.db.models import F
from django.db.models.functions import Now

from plugins.base import Pushback
from runs.models import TestRun
from runs.services import run_cancel, run_start, runs_sweep
from runs.states import RunStatus
from targets.models import RateKey
from targets.policies import QUICK_PROBE, QUIET_SECONDS
from targets.throttle import permit_revoked, permit_take, pushback_record, slot_release, slot_take
from tests.factories import delay_step, make_scenario
from tests.integration.test_engine_faults import finished, recorded_steps
from tests.support import ROOT, WorkerProcess, wait_for, worker_database_url

# A process that takes permits of one key as fast as it can and prints their slots.
# With "send", it sleeps for each permit and notes when it would send (the host's monotonic
# clock, which all its processes share).
_HAMMER = """
import json, sys, time, django
django.setup()
from targets.throttle import permit_take
slots = []
for _ in range(int(sys.argv[2])):
    permit = permit_take(key=sys.argv[1])
    if sys.argv[3] == "send":
        time.sleep(permit.wait)
        slots.append([time.monotonic(), permit.wait])
    else:
        slots.append([permit.at.timestamp(), permit.wait])
print(json.dumps(slots))
"""


def _hammer(key: str, processes: int, permits: int, mode: str = "slots") -> list[float]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": worker_database_url(),
    }
    started = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, key, str(permits), mode],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    slots = []
    for process in started:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        slots += json.loads(out)
    return sorted(at for at, _wait in slots)


def _most_in_any_window(slots: list[float], window: float) -> int:
    most, first = 0, 0
    for last, at in enumerate(slots):
        while at - slots[first] > window:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.django_db(transaction=True)
def test_permits_of_many_processes_never_exceed_burst_plus_rate_in_any_window():
    RateKey.objects.create(name="gcra", requests=20, interval_seconds=1.0, burst=3)
    slots = _hammer("gcra", processes=4, permits=30)

    assert len(slots) == 120
    for window in (0.0, 0.05, 0.25, 1.0, 3.0):
        # burst at once, then one per 50 ms: at most burst + window / T slots in any window
        allowed = 3 + int(window / 0.05 + 1e-9)
        assert _most_in_any_window(slots, window) <= allowed, window
    # and the slots are packed: the whole lot spans (n - burst) intervals
    assert slots[-1] - slots[0] == pytest.approx((120 - 3) * 0.05, abs=0.02)
    key = RateKey.objects.get(name="gcra")
    assert key.requests_total == 120
    assert key.throttled_waits_total >= 110


@pytest.mark.django_db(transaction=True)
def test_processes_sleeping_for_their_permits_send_at_the_rate_in_every_window():
    RateKey.objects.create(name="sends", requests=20, interval_seconds=1.0, burst=2)
    sends = _hammer("sends", processes=4, permits=15, mode="send")

    assert len(sends) == 60
    # Sleeping is late by a millisecond or so, never early: one send of slack at most.
    for window in (0.05, 0.5, 1.0):
        assert _most_in_any_window(sends, window) <= 2 + int(window / 0.05 + 1e-9) + 1, window
    assert sends[-1] - sends[0] == pytest.approx((60 - 2) * 0.05, abs=0.15)


@pytest.mark.django_db(transaction=True)
def test_an_unconfigured_key_is_created_on_first_use_and_unlimited():
    permits = [permit_take(key="http://fresh.test:80") for _ in range(50)]

    assert all(p.reserved and p.wait == 0 and p.reason == "" for p in permits)
    key = RateKey.objects.get(name="http://fresh.test:80")
    assert key.requests_total == 50
    assert key.throttled_waits_total == 0


@pytest.mark.django_db(transaction=True)
def test_a_pushback_blocks_the_key_then_releases_waiters_at_the_learned_pace():
    first = permit_take(key="blocked")
    blocked_for = pushback_record(
        key="blocked", pushback=Pushback(429, 2.0, "2"), given_at=first.given_at
    )
    assert blocked_for == pytest.approx(2.0, abs=0.1)

    learned = RateKey.objects.get(name="blocked").learned_interval_seconds
    after = [permit_take(key="blocked") for _ in range(5)]
    key = RateKey.objects.get(name="blocked")
    assert key.pushbacks_total == 1
    assert key.recent_pushbacks[-1]["status"] == 429
    assert learned > 0
    assert all(p.reason == "blocked" for p in after)
    assert after[0].at == key.blocked_until
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(after, after[1:], strict=False)]
    assert gaps[0] == pytest.approx(learned, rel=0.02)
    # far below the pace refused, the key probes upward quickly (QUICK_PROBE per request)
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert key.learned_interval_seconds == pytest.approx(
        learned * (1 - QUICK_PROBE) ** 5, rel=0.001
    )


@pytest.mark.django_db(transaction=True)
def test_a_pushback_in_flight_from_before_the_last_one_does_not_slow_the_key_again():
    RateKey.objects.create(name="inflight")
    permits = [permit_take(key="inflight") for _ in range(3)]
    pushback_record(key="inflight", pushback=Pushback(429, 1.0, "1"), given_at=permits[2].given_at)
    learned = RateKey.objects.get(name="inflight").learned_interval_seconds
    pushback_record(key="inflight", pushback=Pushback(429, 1.0, "1"), given_at=permits[0].given_at)

    key = RateKey.objects.get(name="inflight")
    assert key.learned_interval_seconds == learned
    assert key.consecutive_pushbacks == 1
    assert key.pushbacks_total == 2


@pytest.mark.django_db(transaction=True)
def test_a_pushback_revokes_the_permits_given_before_it_and_restarts_the_slots_after_the_block():
    RateKey.objects.create(name="revoke", requests=10, interval_seconds=1.0)
    early = permit_take(key="revoke")
    late = [permit_take(key="revoke") for _ in range(30)][-1]  # ~3 s ahead, at the old pace
    pushback_record(key="revoke", pushback=Pushback(429, 1.0, "1"), given_at=early.given_at)
    again = permit_take(key="revoke")

    assert permit_revoked(early) and permit_revoked(late)
    assert not permit_revoked(again)
    blocked_until = RateKey.objects.get(name="revoke").blocked_until
    assert again.at == blocked_until  # not behind the 30 revoked slots


@pytest.mark.django_db(transaction=True)
def test_a_permit_too_far_away_is_not_reserved_and_parked_runs_are_spaced_at_the_pace():
    RateKey.objects.create(name="far", requests=10, interval_seconds=1.0)
    first = permit_take(key="far")
    pushback_record(key="far", pushback=Pushback(429, 30.0, "30"), given_at=first.given_at)
    tat = RateKey.objects.get(name="far").tat

    parked = [permit_take(key="far", reserve_within=1.0) for _ in range(3)]
    assert not any(p.reserved for p in parked)
    assert RateKey.objects.get(name="far").tat == tat  # nothing reserved
    releases = [p.release_in for p in parked]
    assert releases[0] == pytest.approx(30, abs=0.5)
    # a lone 429 on a configured key blocks it but teaches nothing: the configured pace
    assert releases[1] - releases[0] == pytest.approx(0.1, abs=0.02)


@pytest.mark.django_db(transaction=True)
def test_a_configured_key_learns_only_when_refused_again_soon_and_forgets_after_quiet():
    RateKey.objects.create(name="jitter", requests=20, interval_seconds=1.0, burst=5)
    first = permit_take(key="jitter")
    pushback_record(key="jitter", pushback=Pushback(429, 0.0, "0"), given_at=first.given_at)
    key = RateKey.objects.get(name="jitter")
    assert (key.learned_interval_seconds, key.consecutive_pushbacks) == (None, 1)
    paced = [permit_take(key="jitter") for _ in range(12)]
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(paced[5:], paced[6:], strict=False)]
    assert gaps == pytest.approx([0.05] * len(gaps), abs=1e-6)  # still the configured pace

    # Refused again after 12 requests: the configured pace itself is too fast.
    pushback_record(key="jitter", pushback=Pushback(429, 0.0, "0"), given_at=paced[-1].given_at)
    learned = RateKey.objects.get(name="jitter").learned_interval_seconds
    assert learned == pytest.approx(0.05 * 2)  # refused soon: targets.policies.FAR_SLOWDOWN

    # No pushback for longer than QUIET_SECONDS: each request forgets QUICK_PROBE of it.
    RateKey.objects.filter(name="jitter").update(
        last_pushback_at=F("last_pushback_at") - timedelta(seconds=QUIET_SECONDS + 1)
    )
    permit_take(key="jitter")
    assert RateKey.objects.get(name="jitter").learned_interval_seconds == pytest.approx(
        learned * (1 - QUICK_PROBE)
    )
    for _ in range(200):
        permit_take(key="jitter")
    assert RateKey.objects.get(name="jitter").learned_interval_seconds is None


@pytest.mark.django_db(transaction=True)
def test_concurrency_slots_are_exact_and_freed_when_the_session_ends():
    RateKey.objects.create(name="conc", max_concurrent=2)
    permit = permit_take(key="conc")
    mine = slot_take(permit)
    assert mine == 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert cursor.fetchone()[0] == 1  # one slot taken, no more
    # Another session (a process) takes the second slot and then finds none left.
    script = (
        "import django,sys; django.setup()\n"
        "from targets.throttle import permit_take, slot_take\n"
        "p = permit_take(key='conc'); print(slot_take(p))\n"
        "from django.db import connection\n"
        "c = connection.cursor()\n"
        "c.execute('SELECT pg_try_advisory_lock(-%s::int, 1)', [p.key_id])\n"
        "print(c.fetchone()[0])\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env["DATABASE_URL"] = worker_database_url()
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"]
    # That process is gone: its slot is free again; ours is still held.
    assert slot_take(permit) == 1
    slot_release(permit, 1)
    slot_release(permit, mine)
    assert slot_take(permit) == 0
    slot_release(permit, 0)


@pytest.mark.django_db(transaction=True)
def test_slot_locks_do_not_clash_with_the_bigint_lane_locks():
    """The lane lock on the bigint whose halves are a slot's two ints is another lock."""
    import psycopg2

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(-5, 0)")
    other = psycopg2.connect(worker_database_url())
    other.autocommit = True
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(((-5)::bigint << 32))")
            assert cursor.fetchone()[0]
            cursor.execute("SELECT pg_try_advisory_lock(-5, 0)")
            assert not cursor.fetchone()[0]
    finally:
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(-5, 0)")


# ---------------------------------------------------------------------------------------------
# The executor with real worker processes, against a target that pushes back and logs every hit.


class _PushingBack(BaseHTTPRequestHandler):
    """``/hit?tag=T&refuse=N&retry_after=R&delay=S``: the first N hits of tag T get 429
    (Retry-After R when given), the others 200, each after S seconds. Every hit is logged with
    its start and end: the independent evidence."""

    hits: list[dict]
    lock: threading.Lock
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self) -> None:
        query = {key: values[0] for key, values in parse_qs(urlparse(self.path).query).items()}
        with self.lock:
            seen = sum(1 for hit in self.hits if hit["tag"] == query["tag"])
            hit = {**query, "at": time.monotonic()}
            self.hits.append(hit)
        time.sleep(float(query.get("delay", 0)))
        hit["end"] = time.monotonic()
        refused = seen < int(query.get("refuse", 0))
        body = json.dumps({"hit": seen + 1, "echo": query.get("echo")}).encode()
        self.send_response(429 if refused else 200)
        if refused and "retry_after" in query:
            self.send_header("Retry-After", query["retry_after"])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class PushbackTarget:
    def __init__(self) -> None:
        self.hits: list[dict] = []
        handler = type("Handler", (_PushingBack,), {"hits": self.hits, "lock": threading.Lock()})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hit"

    def times(self, tag: str) -> list[float]:
        return [hit["at"] for hit in list(self.hits) if hit["tag"] == tag]


@pytest.fixture(scope="module")
def pushback_target():
    target = PushbackTarget()
    threading.Thread(target=target.server.serve_forever, daemon=True).start()
    yield target
    target.server.shutdown()


@pytest.fixture(scope="module")
def throttled_worker(django_db_setup):
    """One worker (one slot): waits up to 2 s sleep in the step, a run may wait 12 s in all."""
    worker = WorkerProcess(
        "throttled",
        env={"ORCHESTRA_THROTTLE_SLEEP_SECONDS": "2", "ORCHESTRA_MAX_THROTTLE_WAIT": "12"},
    ).start()
    yield worker
    worker.stop()


def _call(target: PushbackTarget, name: str, tag: str, key: str, **query) -> dict:
    return {
        "name": name,
        "plugin": "http",
        "rate_key": key,
        "with": {"url": target.url, "query": {"tag": tag, **query}},
        "expect": {"status": 200},
    }


def _tries(run: TestRun, position: int) -> list[dict]:
    return run.steps.get(position=position).tries


@pytest.mark.integration
@pytest.mark.usefixtures("live_db", "throttled_worker")
def test_a_429_blocks_the_key_and_the_request_is_sent_again_after_it_spending_no_retry(
    pushback_target,
):
    step = _call(pushback_target, "refused once", "once", "k-once", refuse="1", retry_after="1")
    run = finished(run_start(scenario=make_scenario([step])))

    assert run.status == RunStatus.PASSED, run.error
    first, second = pushback_target.times("once")
    assert second - first >= 0.95  # the target's Retry-After, obeyed
    tries = _tries(run, 0)
    assert len(tries) == 1  # retry.attempts untouched: the re-send is inside the try
    reasons = [wait["reason"] for wait in tries[0]["throttled"]]
    assert reasons == ["pushback 429", "blocked"]
    assert tries[0]["throttled"][1]["seconds"] == pytest.approx(1.0, abs=0.2)
    key = RateKey.objects.get(name="k-once")
    assert key.pushbacks_total == 1 and key.requests_total == 2
    assert key.recent_pushbacks[0]["retry_after"] == "1"


@pytest.mark.integration
@pytest.mark.usefixtures("live_db", "throttled_worker")
def test_a_step_that_expects_429_gets_it_as_its_result_and_blocks_nobody(pushback_target):
    step = _call(pushback_target, "tests the limiter", "exempt", "k-exempt", refuse="5")
    step["expect"] = {"status": 429}
    run = finished(run_start(scenario=make_scenario([step])))

    assert run.status == RunStatus.PASSED, run.error
    assert len(pushback_target.times("exempt")) == 1
    key = RateKey.objects.get(name="k-exempt")
    assert key.blocked_until is None and key.pushbacks_total == 0
    assert "throttled" not in _tries(run, 0)[0]


@pytest.mark.integration
@pytest.mark.usefixtures("live_db", "throttled_worker", "beat")
def test_past_the_throttle_budget_the_step_ends_error_saying_why(pushback_target):
    # Each 429 asks for 5 s: longer than a step may sleep, so the run parks each time, and
    # its budget (12 s) is kept across the parks: the third block would pass it.
    step = _call(pushback_target, "always refused", "budget", "k-budget", refuse="99")
    step["with"]["query"]["retry_after"] = "5"
    run = finished(run_start(scenario=make_scenario([step])), timeout=60)

    assert run.status == RunStatus.ERROR
    error = run.steps.get(position=0).error
    # Two parks of 5 s each (less the part each resumed run slept in the step) were spent.
    assert error.startswith("throttled for ") and "by k-budget" in error, error
    assert 9 <= int(error.split()[2]) <= 12, error
    assert "ORCHESTRA_MAX_THROTTLE_WAIT" in error
    assert len(pushback_target.times("budget")) == 3
    assert run.throttle_seconds <= 12
    assert recorded_steps(run) == {1: [0]}  # one attempt: parking never counts as one


@pytest.mark.integration
@pytest.mark.usefixtures("live_db", "throttled_worker", "beat")
def test_a_parked_run_gives_its_worker_back_and_resumes_at_the_step_it_stopped_on(
    pushback_target,
):
    steps = [
        _call(pushback_target, "before", "p-before", "k-park"),
        _call(pushback_target, "refused", "p-refused", "k-park", refuse="1", retry_after="4"),
        _call(pushback_target, "after", "p-after", "k-after"),
    ]
    steps[0]["capture"] = {"seen": "$.hit"}  # kept across the park
    steps[2]["with"]["query"]["seen"] = "{{ seen }}"
    run = run_start(scenario=make_scenario(steps))

    def parked() -> bool:
        run.refresh_from_db()
        return run.status == RunStatus.QUEUED and run.resume_at is not None

    wait_for(parked, timeout=20, message="the run to park")
    assert run.resume == {
        "position": 1,
        "captures": {"seen": 1},
        "waits": run.resume["waits"],
    }
    # The only worker is free meanwhile: another run on another key executes at once.
    other = run_start(scenario=make_scenario([_call(pushback_target, "x", "p-other", "k-other")]))
    assert finished(other, timeout=3).status == RunStatus.PASSED

    run = finished(run, timeout=30)
    assert run.status == RunStatus.PASSED, run.error
    assert len(pushback_target.times("p-before")) == 1  # not executed again
    first, second = pushback_target.times("p-refused")
    assert second - first >= 3.95
    assert [hit["seen"] for hit in pushback_target.hits if hit["tag"] == "p-after"] == ["1"]
    assert recorded_steps(run) == {1: [0, 1, 2]}
    waits = _tries(run, 1)[0]["throttled"]
    assert [wait["reason"] for wait in waits][:2] == ["pushback 429", "blocked, parked"]
    assert run.resume_at is None


@pytest.mark.integration
@pytest.mark.usefixtures("live_db", "throttled_worker")
def test_a_due_parked_run_is_published_by_the_sweep_without_the_publish_grace(settings):
    # Its message was acked when it parked, so nothing is in flight: the grace a just-queued
    # run's first publish gets would only keep it waiting.
    settings.ORCHESTRA_PUBLISH_GRACE_SECONDS = 60
    scenario = make_scenario([delay_step("only step")])
    run = TestRun.objects.create(
        scenario=scenario, definition=scenario.definition, context={"payload": {}}
    )
    TestRun.objects.filter(id=run.id).update(
        resume_at=Now() - timedelta(seconds=0.1),
        resume={"position": 0, "captures": {}, "waits": []},
    )

    assert runs_sweep()["republished"] == 1
    assert runs_sweep()["republished"] == 0  # published now: left alone
    run = finished(run)
    assert run.status == RunStatus.PASSED, run.error
    assert run.resume_at is None


@pytest.mark.integration
@pytest.mark.usefixtures("live_db", "throttled_worker", "beat")
def test_a_parked_run_is_left_alone_by_the_sweep_until_due_and_can_be_cancelled(
    pushback_target,
):
    step = _call(pushback_target, "refused", "p-cancel", "k-cancel", refuse="1", retry_after="10")
    run = run_start(scenario=make_scenario([step]))

    def parked() -> bool:
        run.refresh_from_db()
        return run.status == RunStatus.QUEUED and run.resume_at is not None

    wait_for(parked, timeout=20, message="the run to park")
    time.sleep(2)  # four sweeps (publish grace: 1 s): none may republish it before resume_at
    run.refresh_from_db()
    assert (run.status, run.dispatched_at, run.attempt) == (RunStatus.QUEUED, None, 1)
    assert run_cancel(run_id=run.id).status == RunStatus.CANCELLED
    time.sleep(0.5)  # nothing may come: the evidence is an absence
    assert len(pushback_target.times("p-cancel")) == 1


@pytest.mark.integration
@pytest.mark.usefixtures("live_db", "throttled_worker")
def test_max_concurrent_holds_across_worker_processes(pushback_target, worker_factory):
    worker_factory("second", env={"ORCHESTRA_THROTTLE_SLEEP_SECONDS": "2"})
    RateKey.objects.create(name="k-conc", max_concurrent=1)
    step = _call(pushback_target, "slow", "conc", "k-conc", delay="0.4")
    scenario = make_scenario([step, {**step, "name": "slow again"}])
    runs = [run_start(scenario=scenario) for _ in range(3)]

    assert all(finished(run, timeout=30).status == RunStatus.PASSED for run in runs)
    hits = sorted((hit["at"], hit["end"]) for hit in pushback_target.hits if hit["tag"] == "conc")
    assert len(hits) == 6
    # never two at once: each request started after the one before had ended
    assert all(start >= end for (_, end), (start, _) in zip(hits, hits[1:], strict=False))
    assert len({run.worker for run in TestRun.objects.filter(id__in=[r.id for r in runs])}) == 2
    waits = [w for run in runs for s in run.steps.all() for w in s.tries[0].get("throttled", [])]
    assert {wait["reason"] for wait in waits} == {"concurrency"}


@pytest.mark.integration
@pytest.mark.usefixtures("live_db", "throttled_worker", "beat")
def test_a_run_holding_a_secret_capture_waits_in_place_instead_of_parking(pushback_target):
    steps = [
        _call(pushback_target, "echo", "s-echo", "k-secret", echo="{{ token }}"),
        _call(pushback_target, "refused", "s-refused", "k-secret", refuse="1", retry_after="4"),
    ]
    steps[0]["capture"] = {"echoed": "$.echo"}  # holds the secret: it must not be stored raw
    scenario = make_scenario(steps, variables={"token": "s3cret-t0ken-value"}, secrets=["token"])
    run = finished(run_start(scenario=scenario), timeout=30)

    assert run.status == RunStatus.PASSED, run.error
    assert run.resume is None and run.throttle_seconds == 0  # never parked
    first, second = pushback_target.times("s-refused")
    assert second - first >= 3.95
    waits = _tries(run, 1)[0]["throttled"]
    assert [wait["reason"] for wait in waits] == ["pushback 429", "blocked"]
    assert recorded_steps(run) == {1: [0, 1]}
