"""The throttle against the real PostgreSQL: permits, pushbacks and slots, across processes,
and the executor obeying them with real worker processes and a real rate-limited target."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.db import connection

from plugins.base import Pushback
from targets.models import RateKey
from targets.throttle import permit_revoked, permit_take, pushback_record, slot_release, slot_take
from tests.support import ROOT, worker_database_url

# A process that takes permits of one key as fast as it can and prints their slots.
_HAMMER = """
import json, sys, django
django.setup()
from targets.throttle import permit_take
slots = []
for _ in range(int(sys.argv[2])):
    permit = permit_take(key=sys.argv[1])
    slots.append([permit.at.timestamp(), permit.wait])
print(json.dumps(slots))
"""


def _hammer(key: str, processes: int, permits: int) -> list[float]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": worker_database_url(),
    }
    started = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, key, str(permits)],
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
def test_an_unconfigured_key_is_created_on_first_use_and_unlimited():
    permits = [permit_take(key="http://fresh.test:80") for _ in range(50)]

    assert all(p.reserved and p.wait == 0 and p.reason == "" for p in permits)
    key = RateKey.objects.get(name="http://fresh.test:80")
    assert key.requests_total == 50
    assert key.throttled_waits_total == 0


@pytest.mark.django_db(transaction=True)
def test_a_pushback_blocks_the_key_then_releases_waiters_at_the_learned_pace():
    first = permit_take(key="blocked")
    blocked_for = pushback_record(key="blocked", pushback=Pushback(429, 2.0, "2"), sent_at=first.at)
    assert blocked_for == pytest.approx(2.0, abs=0.1)

    after = [permit_take(key="blocked") for _ in range(5)]
    key = RateKey.objects.get(name="blocked")
    assert key.pushbacks_total == 1
    assert key.recent_pushbacks[-1]["status"] == 429
    assert key.learned_interval_seconds > 0
    assert all(p.reason == "blocked" for p in after)
    assert after[0].at >= key.blocked_until
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(after, after[1:], strict=False)]
    assert gaps == pytest.approx([key.learned_interval_seconds] * 4, rel=0.01)


@pytest.mark.django_db(transaction=True)
def test_a_pushback_in_flight_from_before_the_last_one_does_not_slow_the_key_again():
    RateKey.objects.create(name="inflight", requests=10, interval_seconds=1.0)
    permits = [permit_take(key="inflight") for _ in range(3)]
    pushback_record(key="inflight", pushback=Pushback(429, 1.0, "1"), sent_at=permits[2].at)
    learned = RateKey.objects.get(name="inflight").learned_interval_seconds
    pushback_record(key="inflight", pushback=Pushback(429, 1.0, "1"), sent_at=permits[0].at)

    key = RateKey.objects.get(name="inflight")
    assert key.learned_interval_seconds == learned
    assert key.consecutive_pushbacks == 1
    assert key.pushbacks_total == 2


@pytest.mark.django_db(transaction=True)
def test_a_pushback_revokes_permits_given_for_slots_inside_the_block():
    RateKey.objects.create(name="revoke", requests=10, interval_seconds=1.0)
    early = permit_take(key="revoke")
    late = [permit_take(key="revoke") for _ in range(30)][-1]  # ~3 s ahead
    pushback_record(key="revoke", pushback=Pushback(429, 1.0, "1"), sent_at=early.at)

    assert permit_revoked(early) or early.at >= RateKey.objects.get(name="revoke").blocked_until
    assert not permit_revoked(late)


@pytest.mark.django_db(transaction=True)
def test_a_permit_too_far_away_is_not_reserved_and_parked_runs_are_spaced_at_the_pace():
    RateKey.objects.create(name="far", requests=10, interval_seconds=1.0)
    first = permit_take(key="far")
    pushback_record(key="far", pushback=Pushback(429, 30.0, "30"), sent_at=first.at)
    tat = RateKey.objects.get(name="far").tat

    parked = [permit_take(key="far", reserve_within=1.0) for _ in range(3)]
    assert not any(p.reserved for p in parked)
    assert RateKey.objects.get(name="far").tat == tat  # nothing reserved
    releases = [p.release_in for p in parked]
    assert releases[0] == pytest.approx(30, abs=0.5)
    assert releases[1] - releases[0] == pytest.approx(0.12, abs=0.02)  # learned: slower than 0.1


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
