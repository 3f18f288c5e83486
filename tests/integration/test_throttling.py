"""Throttling end to end: real workers and beat, judged by a rate-limited target's own log.

Every target here is ``examples/target.py`` as a process of its own, enforcing its own limit
(GCRA on its clock) and logging every request it saw; the verdicts come from that log
(``examples/target_evidence.py``), never from what orchestra stored about itself.
"""

from __future__ import annotations

import pytest

from examples.target_evidence import (
    Entry,
    TargetProcess,
    accepted,
    largest_share,
    refused,
    worst_window,
)
from queue_catalog.models import QueueRecord
from queue_catalog.services import queue_records_create
from runs.models import TestRun
from targets.models import RateKey
from tests.factories import delay_step, make_scenario
from tests.support import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "beat")]

RATE, BURST = 20, 5
LAUNCHES, LANES = 500, 20
BEAT_INTERVAL = 0.5  # the beat fixture's (tests/conftest.py)


class Fleet:
    """The worker processes of this module: one set at a time, restarted when the settings the
    next test needs differ from the running set's."""

    def __init__(self) -> None:
        self.workers: list[WorkerProcess] = []
        self.settings: dict[str, str] | None = None

    def use(self, count: int = 4, **settings: str) -> list[WorkerProcess]:
        """``count`` workers running with ``settings`` (environment variables)."""
        if self.settings != settings or len(self.workers) != count:
            self.stop()
            # The workers know how often the beat fixture sweeps (a parked run's resume uses it).
            env = {"ORCHESTRA_SWEEP_INTERVAL_SECONDS": str(BEAT_INTERVAL), **settings}
            self.workers = [WorkerProcess(f"t{i}", env=env).start() for i in range(count)]
            self.settings = settings
        return self.workers

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []


@pytest.fixture(scope="module")
def fleet(django_db_setup):
    fleet = Fleet()
    yield fleet
    fleet.stop()


@pytest.fixture
def targets():
    """Start rate-limited targets owned by one test; all are stopped afterwards."""
    started: list[TargetProcess] = []

    def start(**options) -> TargetProcess:
        target = TargetProcess(**options).start()
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


def key_of(target: TargetProcess) -> str:
    """The default rate key of a target: its ``scheme://host:port``."""
    return target.url


def get(name: str, target: TargetProcess, path: str, status: int | list[int] = 200) -> dict:
    return {
        "name": name,
        "plugin": "http",
        "with": {"url": f"{target.url}{path}"},
        "expect": {"status": status},
    }


def lane_scenario(target: TargetProcess, lane: str):
    """One request per run, labelled with its lane and launch in the query."""
    return make_scenario([get("call", target, f"/health?lane={lane}&n={{{{ payload.n }}}}")])


def settle(records: list[QueueRecord], timeout: float) -> None:
    ids = [record.id for record in records]
    wait_for(
        lambda: (
            not QueueRecord.objects.filter(id__in=ids, status__in=["SCHEDULED", "RUNNING"]).exists()
        ),
        timeout=timeout,
        interval=0.2,
        message=f"{len(ids)} records to settle",
    )


def finished_run(run: TestRun, timeout: float = 30) -> TestRun:
    wait_for(
        lambda: TestRun.objects.filter(id=run.id, finished_at__isnull=False).exists(),
        timeout=timeout,
        interval=0.1,
        message=f"run {run.id} to finish",
    )
    run.refresh_from_db()
    return run


def launch(scenario) -> TestRun:
    (record,) = queue_records_create(scenario=scenario, payloads=[{}])
    record.refresh_from_db()
    return record.current_run


def gap_after_first_429(entries: list[Entry]) -> float:
    """Seconds between the target's first 429 and the next request it saw."""
    index = next(i for i, entry in enumerate(entries) if entry.status == 429)
    return entries[index + 1].time - entries[index].time


def longest_silence(entries: list[Entry]) -> tuple[float, float]:
    """(seconds, at): the longest stretch without a request, and when it began (target time)."""
    gaps = [(b.time - a.time, a.time) for a, b in zip(entries, entries[1:], strict=False)]
    return max(gaps, default=(0.0, 0.0))


def assert_every_launch_passed_at_its_first_start(records: list[QueueRecord]) -> None:
    records = list(QueueRecord.objects.filter(id__in=[r.id for r in records]))
    problems = [(r.id, r.status, r.start_count, r.errors) for r in records]
    assert all(r.status == "DONE" and r.start_count == 1 for r in records), [
        p for p in problems if p[1] != "DONE" or p[2] != 1
    ][:5]
    runs = TestRun.objects.filter(context__queueRecordId__in=[r.id for r in records])
    assert set(runs.values_list("status", flat=True)) == {"PASSED"}


def launch_lanes(target: TargetProcess) -> list[QueueRecord]:
    per_lane = LAUNCHES // LANES
    records: list[QueueRecord] = []
    scenarios = [lane_scenario(target, f"l{lane}") for lane in range(LANES)]
    for scenario in scenarios:
        payloads = [{"n": n} for n in range(per_lane)]
        records += queue_records_create(scenario=scenario, payloads=payloads)
    return records


# --- 500 launches, 20 lanes, 4 workers, one key --------------------------------------------------


def test_500_launches_at_a_configured_limit_never_exceed_it_and_no_run_fails(fleet, targets):
    fleet.use(4)
    target = targets(rate=RATE, burst=BURST)
    RateKey.objects.create(name=key_of(target), requests=RATE, interval_seconds=1, burst=BURST)

    records = launch_lanes(target)
    settle(records, timeout=90)

    assert_every_launch_passed_at_its_first_start(records)
    entries = target.entries()
    assert len(accepted(entries)) == LAUNCHES
    # The target's own log: what it let through obeyed its limit, and so did what orchestra sent,
    # but for the jitter between orchestra's clock (the database's) and the target's arrivals.
    times = [e.time for e in accepted(entries)]
    assert worst_window(times, rate=RATE, burst=BURST).excess <= 1e-9
    arrivals = worst_window([e.time for e in entries], rate=RATE, burst=BURST, slack_seconds=0.1)
    assert arrivals.excess <= 0, arrivals
    assert len(refused(entries)) <= LAUNCHES // 100, len(refused(entries))
    # Nor far below it: 500 requests at 20/s (burst 5) need 24.75 s at least.
    span = times[-1] - times[0]
    assert span <= 1.3 * (LAUNCHES - BURST) / RATE, span
    assert longest_silence(entries)[0] < 1.5, longest_silence(entries)


def test_500_launches_find_an_unpublished_limit_through_its_429s_and_no_run_fails(fleet, targets):
    fleet.use(4)
    target = targets(rate=RATE, burst=BURST)

    records = launch_lanes(target)
    settle(records, timeout=120)

    # Every 429 was waited out and the request sent again: no start, no attempt spent on it.
    assert_every_launch_passed_at_its_first_start(records)
    entries = target.entries()
    assert len(accepted(entries)) == LAUNCHES
    assert worst_window([e.time for e in accepted(entries)], rate=RATE, burst=BURST).excess <= 1e-9
    key = RateKey.objects.get(name=key_of(target))
    assert key.pushbacks_total == len(refused(entries)) > 0
    assert key.learned_interval_seconds is not None
    # Once learned, the limit is obeyed: the second half of the requests got (almost) no 429.
    second_half = entries[len(entries) // 2 :]
    assert len(refused(second_half)) <= max(3, len(second_half) // 50), len(refused(second_half))
    # A 429 here blocks the key for 1 s (its Retry-After); then the waiters are released at the
    # key's pace. The target never sits idle much longer while launches are left: that would be
    # runs parked past the key's reopening.
    silence = longest_silence(entries)
    assert silence[0] < 3, f"no request for {silence[0]:.1f} s from {silence[1]:.1f}"


# --- Retry-After in every form -------------------------------------------------------------------


def two_calls(target: TargetProcess):
    """Two requests in a row: past a limit of one per interval, the second is refused once."""
    return make_scenario([get("first", target, "/health"), get("second", target, "/health")])


def pushback_waits(run: TestRun, step: str) -> list[dict]:
    """The throttled waits a step's stored tries record for pushbacks."""
    tries = run.steps.get(name=step).tries
    return [w for t in tries for w in t.get("throttled", []) if w["reason"].startswith("pushback")]


@pytest.mark.parametrize(
    ("form", "date_skew", "blocked", "least", "most"),
    [
        ("seconds", 0, (2, 2), 1.9, 5.0),  # "2"
        # "<date 2 s after Date>" (whole seconds: 2 or 3), Date an hour ahead of every clock
        # orchestra has: only measuring against the response's own Date gives that (its own
        # clock would say an hour and more) ...
        ("date", 3600, (2, 3), 1.9, 6.0),
        ("date", -3600, (2, 3), 1.9, 6.0),  # ... and an hour behind (its clock: long past, 0 s)
        ("huge", 0, (3, 3), 2.9, 7.0),  # "86400", capped by ORCHESTRA_MAX_RETRY_AFTER=3
    ],
)
def test_retry_after_is_obeyed_in_every_form(fleet, targets, form, date_skew, blocked, least, most):
    fleet.use(4, ORCHESTRA_MAX_RETRY_AFTER="3")
    target = targets(rate=0.5, burst=1, retry_after=form, date_skew=date_skew)

    run = finished_run(launch(two_calls(target)))

    assert run.status == "PASSED", run.error
    entries = target.entries()
    assert [e.status for e in entries] == [200, 429, 200]
    assert least <= gap_after_first_429(entries) <= most
    (wait,) = pushback_waits(run, "second")
    assert wait["key"] == key_of(target) and blocked[0] <= wait["seconds"] <= blocked[1], wait


def test_a_malformed_retry_after_is_ignored_and_the_default_backoff_applies(fleet, targets):
    fleet.use(4, ORCHESTRA_MAX_RETRY_AFTER="3")
    target = targets(rate=1, burst=1, retry_after="malformed")

    run = finished_run(launch(two_calls(target)))

    assert run.status == "PASSED", run.error
    entries = target.entries()
    assert [e.status for e in entries][:2] == [200, 429] and entries[-1].status == 200
    # Not sent again at once (that would be hammering) nor never: a default backoff of about 1 s.
    assert 0.8 <= gap_after_first_429(entries) <= 4
    assert len(refused(entries)) <= 2
    assert pushback_waits(run, "second")[0]["seconds"] == 1  # the default backoff


# --- exempt steps and the throttle budget --------------------------------------------------------


def test_a_step_that_expects_429_receives_it_passes_and_blocks_nobody(fleet, targets):
    fleet.use(4, ORCHESTRA_MAX_RETRY_AFTER="3")
    target = targets(rate=1, burst=1, retry_after="huge")
    scenario = make_scenario(
        [
            get("use the budget", target, "/health"),
            get("test the limiter", target, "/health", status=429),
            delay_step("let the target's limit pass", 1.2),
            get("call again", target, "/health"),
        ]
    )

    run = finished_run(launch(scenario))

    assert run.status == "PASSED", run.error
    limiter = run.steps.get(name="test the limiter")
    assert limiter.status == "PASSED" and limiter.response["status"] == 429
    entries = target.entries()
    assert [e.status for e in entries] == [200, 429, 200]
    # A block would have held the last call ~3 s (Retry-After 86400, capped at 3 s).
    assert gap_after_first_429(entries) < 2.5
    key = RateKey.objects.get(name=key_of(target))
    assert (
        key.blocked_until is None
        or key.blocked_until <= run.steps.get(name="test the limiter").finished_at
    )


def test_a_run_past_its_throttle_budget_ends_error_and_says_why(fleet, targets):
    fleet.use(4, ORCHESTRA_MAX_THROTTLE_WAIT="2")
    target = targets(rate=1 / 60, burst=1)  # Retry-After: 60

    run = finished_run(launch(two_calls(target)), timeout=30)

    assert run.status == "ERROR"
    step = run.steps.get(name="second")
    assert step.status == "ERROR"
    assert "throttled for" in step.error and key_of(target) in step.error, step.error
    assert "throttled for" in run.error, run.error
    # The target was not hammered while the budget lasted.
    assert len(refused(target.entries())) <= 2


# --- lanes and keys ------------------------------------------------------------------------------


def test_a_blocked_key_does_not_delay_a_lane_on_another_key(fleet, targets):
    fleet.use(4)
    slow = targets(rate=0.5, burst=1)  # Retry-After: 2
    fast = targets()
    # As many lanes waiting on the slow key as there are workers: holding a slot while waiting
    # would stop every worker.
    slow_records = [
        record
        for lane in range(4)
        for record in queue_records_create(
            scenario=lane_scenario(slow, f"slow{lane}"), payloads=[{"n": 0}, {"n": 1}]
        )
    ]
    wait_for(lambda: refused(slow.entries()), timeout=15, message="the slow key to push back")
    fast_records = queue_records_create(
        scenario=lane_scenario(fast, "fast"), payloads=[{"n": n} for n in range(20)]
    )

    settle(fast_records, timeout=20)

    assert_every_launch_passed_at_its_first_start(fast_records)
    fast_entries = fast.entries()
    assert fast_entries[-1].time - fast_entries[0].time < 8
    # The slow lanes were still waiting on their key when the fast lane was done with its 20.
    assert len(accepted(slow.entries())) < len(slow_records)
    assert QueueRecord.objects.filter(
        id__in=[r.id for r in slow_records], status__in=["SCHEDULED", "RUNNING"]
    ).exists()
    settle(slow_records, timeout=60)
    assert_every_launch_passed_at_its_first_start(slow_records)


def test_two_lanes_on_one_key_take_turns(fleet, targets):
    fleet.use(4)
    # The target forgives 0.1 s of jitter (burst 2) that the key never uses (burst 1).
    target = targets(rate=10, burst=2)
    RateKey.objects.create(name=key_of(target), requests=10, interval_seconds=1, burst=1)
    # Lane "a" has a head start: it owns the key alone for a moment, then "b" joins.
    first = queue_records_create(
        scenario=lane_scenario(target, "a"), payloads=[{"n": n} for n in range(60)]
    )
    wait_for(lambda: len(target.entries()) >= 5, timeout=15, message="lane a to be under way")
    second = queue_records_create(
        scenario=lane_scenario(target, "b"), payloads=[{"n": n} for n in range(40)]
    )

    settle(first + second, timeout=60)

    assert_every_launch_passed_at_its_first_start(first + second)
    lanes = [e.query["lane"] for e in accepted(target.entries())]
    both = lanes[lanes.index("b") : len(lanes) - lanes[::-1].index("b")]
    assert len(both) >= 60
    assert largest_share(both, stretch=10) <= 0.7, "".join(both)
    assert len(refused(target.entries())) <= 2
