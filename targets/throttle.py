"""The fleet-wide throttle: permits, pushbacks and concurrency slots of rate keys.

The only writer of a :class:`targets.models.RateKey`'s state. Every decision is made on the
database's clock (``clock_timestamp()``), never a worker's, so workers on any host agree.

**Permits (GCRA).** Each outbound request takes a permit: one statement locks the key's row,
reserves the next slot after its theoretical arrival time ``tat`` and returns how long the
caller must wait for it (0: go now). The emission interval ``T`` is the configured
``interval_seconds / requests`` or the learned one, whichever is slower (neither: unlimited,
``T = 0``, requests still counted); ``burst`` slots may be taken at once (tolerance
``(burst - 1) * T``). Slots are handed out in the order the statements get the row, so waiters
are served first come, first served: lanes sharing a key take turns. ``blocked_until`` (a
pushback) is the earliest slot; a pushback also moves ``tat`` past the block, so the waiters are
released at the key's pace afterwards, not all at once.

A caller that would wait longer than ``reserve_within`` gets no slot (reserving one it will not
use would waste it): it is told when to come back, on a second timeline (``release_tat``) that
spaces the returning runs at the key's pace. That is how a parked run learns its ``resume_at``.

**Pushbacks.** :func:`pushback_record` blocks the key for every worker (``Retry-After`` capped by
``ORCHESTRA_MAX_RETRY_AFTER``, else a default backoff that grows with pushbacks in a row) and
learns the unpublished limit: the pace the target accepted since the last pushback, slowed down
(``targets.policies``); every request sent while the key is busy probes a little faster again.
A configured key learns only when the target refuses its configured pace again soon (a lone
429 is jitter: the block answers it), and forgets what it learned after ``QUIET_SECONDS``
without a pushback, ``QUICK_PROBE`` per request, back to the configured interval.

**Concurrency.** ``max_concurrent`` is enforced with session-level advisory locks, one per slot,
on the two-int key ``(-key_id, slot)``: the first int of orchestra's other two-int locks is a
positive namespace (``orchestra.api.idempotency``) and the queue's lane locks use the single
bigint form, a key space of its own, so none can clash. PostgreSQL frees them when the
session's connection ends, so a dead worker never holds a slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from orchestra.prepared import PreparedStatement
from plugins.base import Pushback
from targets import policies
from targets.models import RateKey

#: Recent pushbacks kept on a key.
RECENT_PUSHBACKS = 20
#: A key idle this long starts a new busy spell: learning counts requests from there.
BUSY_GAP_SECONDS = 2.0

# The emission interval of row ``k`` in seconds: configured or learned, whichever is slower.
_INTERVAL = """GREATEST(CASE WHEN k.requests > 0 THEN k.interval_seconds / k.requests ELSE 0 END,
                COALESCE(k.learned_interval_seconds, 0))"""

# One statement per permit. ``locked`` reads the key's row FOR UPDATE (READ COMMITTED hands it
# the latest version after any concurrent permit), ``slot`` computes the GCRA decision from it,
# and the UPDATE writes it back to the row this statement already holds.
_PERMIT = PreparedStatement(
    "orchestra_rate_permit",
    f"""
WITH clock AS (SELECT clock_timestamp() AS now),
locked AS (
    SELECT k.id, k.tat, k.blocked_until, k.release_tat, k.burst, k.window_started_at,
           clock.now, {_INTERVAL} AS t,
           GREATEST(clock.now, COALESCE(k.blocked_until, clock.now)) AS open
      FROM targets_ratekey k, clock
     WHERE k.name = %(name)s::text
       FOR UPDATE OF k
), slot AS (
    SELECT *, make_interval(secs => t) AS t_iv,
           GREATEST(open, COALESCE(tat, now) - make_interval(secs => (burst - 1) * t)) AS at
      FROM locked
), decided AS (
    SELECT *, EXTRACT(EPOCH FROM at - now)::float8 AS wait,
           EXTRACT(EPOCH FROM at - now)::float8 <= %(reserve_within)s::float8 AS reserved,
           GREATEST(COALESCE(release_tat, at), at) AS release,
           (window_started_at IS NULL
            OR at > COALESCE(tat, now) + make_interval(secs => %(busy_gap)s::float8)) AS new_spell
      FROM slot
)
UPDATE targets_ratekey k SET
    tat = CASE WHEN d.reserved THEN GREATEST(COALESCE(d.tat, d.now), d.open) + d.t_iv
               ELSE k.tat END,
    release_tat = CASE WHEN d.reserved THEN k.release_tat ELSE d.release + d.t_iv END,
    learned_interval_seconds = CASE
        WHEN NOT d.reserved OR k.learned_interval_seconds IS NULL THEN k.learned_interval_seconds
        WHEN k.requests > 0
             AND k.last_pushback_at < d.now - make_interval(secs => %(quiet)s::float8)
             THEN NULLIF(GREATEST(k.learned_interval_seconds * (1 - %(quick_probe)s::float8),
                                  k.interval_seconds / k.requests),
                         k.interval_seconds / k.requests)
        WHEN d.tat IS NULL OR d.tat < d.now THEN k.learned_interval_seconds
        WHEN k.learned_interval_seconds * (1 - %(probe)s::float8) < %(shortest)s::float8 THEN NULL
        WHEN k.learned_interval_seconds > k.ceiling_interval_seconds * %(near)s::float8
             THEN k.learned_interval_seconds * (1 - %(quick_probe)s::float8)
        ELSE k.learned_interval_seconds * (1 - %(probe)s::float8) END,
    window_started_at = CASE WHEN d.reserved AND d.new_spell THEN d.at ELSE k.window_started_at END,
    window_requests = CASE WHEN NOT d.reserved THEN k.window_requests
                           WHEN d.new_spell THEN 1 ELSE k.window_requests + 1 END,
    requests_total = k.requests_total + d.reserved::int,
    throttled_waits_total = k.throttled_waits_total + (d.wait > 0 OR NOT d.reserved)::int,
    wait_seconds_total = k.wait_seconds_total + CASE
        WHEN d.reserved THEN GREATEST(d.wait, 0)
        ELSE GREATEST(EXTRACT(EPOCH FROM d.release - d.now)::float8, 0) END,
    updated_at = d.now
  FROM decided d
 WHERE k.id = d.id
RETURNING k.id, d.now, d.reserved, GREATEST(d.wait, 0),
          GREATEST(EXTRACT(EPOCH FROM d.release - d.now)::float8, 0), d.at,
          CASE WHEN d.blocked_until > d.now THEN 'blocked' WHEN d.wait > 0 THEN 'rate' ELSE '' END,
          d.t, k.max_concurrent
""",
)

_ENSURE_KEY = """
INSERT INTO targets_ratekey (name, interval_seconds, burst, requests_total, pushbacks_total,
                             throttled_waits_total, wait_seconds_total, recent_pushbacks,
                             window_requests, consecutive_pushbacks, created_at, updated_at)
VALUES (%s, 1.0, 1, 0, 0, 0, 0, '[]'::jsonb, 0, 0, now(), now())
ON CONFLICT (name) DO NOTHING
"""


@dataclass(frozen=True)
class Permit:
    """The throttle's answer for one request on key ``key``.

    ``reserved``: a slot is the caller's; it sends in ``wait`` seconds (0: now). Not reserved:
    the wait was longer than the caller was prepared to wait in place; it should come back in
    ``release_in`` seconds (its place among the runs released from this key) and ask again.
    """

    key_id: int
    key: str
    #: When the throttle answered, on the database clock (what a later pushback is compared to).
    given_at: datetime
    reserved: bool
    wait: float
    release_in: float
    #: The slot's instant on the database clock.
    at: datetime
    #: Why the caller waits: "blocked" (a pushback), "rate", or "" (it does not).
    reason: str
    #: The key's emission interval in seconds (0: unlimited).
    interval: float
    max_concurrent: int | None


def permit_take(*, key: str, reserve_within: float = math.inf) -> Permit:
    """Reserve the next slot of ``key`` for one request, unless it is more than
    ``reserve_within`` seconds away; the row of a key nobody configured is created on first use."""
    params = {
        "name": key,
        "reserve_within": reserve_within if math.isfinite(reserve_within) else 1e18,
        "busy_gap": BUSY_GAP_SECONDS,
        "probe": policies.PROBE,
        "quick_probe": policies.QUICK_PROBE,
        "near": policies.NEAR,
        "shortest": policies.SHORTEST_LEARNED_INTERVAL,
        "quiet": policies.QUIET_SECONDS,
    }
    with connection.cursor() as cursor:
        _PERMIT.execute(cursor, params)
        row = cursor.fetchone()
        if row is None:
            cursor.execute(_ENSURE_KEY, [key])
            _PERMIT.execute(cursor, params)
            row = cursor.fetchone()
    key_id, given_at, reserved, wait, release_in, at, reason, interval, max_concurrent = row
    return Permit(
        key_id, key, given_at, reserved, wait, release_in, at, reason, interval, max_concurrent
    )


def permit_revoked(permit: Permit) -> bool:
    """Whether a pushback came after ``permit`` was given, or blocked its key past its slot
    (checked by a caller that slept until its slot): then it must take a new permit, paced as
    the key is paced now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT last_pushback_at > %s OR blocked_until > %s FROM targets_ratekey WHERE id = %s",
            [permit.given_at, permit.at, permit.key_id],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def pushback_record(*, key: str, pushback: Pushback, given_at: datetime) -> float:
    """Block ``key`` for every worker after ``pushback`` (to a request whose permit was given
    at ``given_at``) and learn from it; returns the seconds from now until the key opens.

    The permits given before it are revoked (``permit_revoked``): their slots were paced too
    fast, so the key's slots start again after the block. A pushback to a request sent on a
    permit older than the key's last pushback was in flight when that one came: it still
    extends the block to its own ``Retry-After``, but neither counts as one more in a row nor
    slows the key down again.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            (now,) = cursor.fetchone()
        rate_key = RateKey.objects.select_for_update().get(name=key)
        last = rate_key.last_pushback_at
        fresh = last is None or given_at >= last
        in_a_row = rate_key.consecutive_pushbacks
        configured = _configured_interval(rate_key)
        if fresh:
            since_last = None if last is None else (now - last).total_seconds()
            in_a_row = policies.in_a_row(rate_key.consecutive_pushbacks, since_last)
        if fresh and policies.learns(configured, in_a_row, rate_key.window_requests):
            window = rate_key.window_started_at
            window_seconds = 0.0 if window is None else (now - window).total_seconds()
            rate_key.ceiling_interval_seconds = policies.refused_interval(
                rate_key.learned_interval_seconds, configured
            )
            rate_key.learned_interval_seconds = policies.learned_interval(
                rate_key.learned_interval_seconds,
                configured,
                rate_key.window_requests,
                window_seconds,
            )
        seconds = policies.block_seconds(
            pushback.retry_after, in_a_row, settings.ORCHESTRA_MAX_RETRY_AFTER
        )
        blocked_until = max(rate_key.blocked_until or now, now + timedelta(seconds=seconds))
        interval = max(configured, rate_key.learned_interval_seconds or 0.0)
        tolerance = timedelta(seconds=(rate_key.burst - 1) * interval)
        rate_key.blocked_until = blocked_until
        # A fresh pushback revoked every permit given before it: their slots are free again.
        earliest = blocked_until + tolerance
        rate_key.tat = earliest if fresh else max(rate_key.tat or now, earliest)
        rate_key.release_tat = max(rate_key.release_tat or now, blocked_until)
        if fresh:
            rate_key.consecutive_pushbacks = in_a_row
            rate_key.last_pushback_at = now
            rate_key.window_started_at = blocked_until
            rate_key.window_requests = 0
        rate_key.pushbacks_total += 1
        entry = {
            "at": now.isoformat(),
            "status": pushback.status,
            "retry_after": pushback.header,
            "blocked_seconds": round(seconds, 3),
        }
        rate_key.recent_pushbacks = [*rate_key.recent_pushbacks, entry][-RECENT_PUSHBACKS:]
        rate_key.save(update_fields=[*_PUSHBACK_FIELDS])
    return max(0.0, (blocked_until - now).total_seconds())


_PUSHBACK_FIELDS = (
    "learned_interval_seconds",
    "ceiling_interval_seconds",
    "blocked_until",
    "tat",
    "release_tat",
    "consecutive_pushbacks",
    "last_pushback_at",
    "window_started_at",
    "window_requests",
    "pushbacks_total",
    "recent_pushbacks",
    "updated_at",
)


def _configured_interval(rate_key: RateKey) -> float:
    if not rate_key.requests:
        return 0.0
    return rate_key.interval_seconds / rate_key.requests


# Tries the slots in order and stops at the first it gets: the Limit node pulls one row at a
# time through the filter, so no second lock is taken. Session locks stack, so the slots this
# session holds already (read first: pg_locks shows the first int as an unsigned oid) are left
# out, or one session could take one slot twice.
_SLOTS_HELD = """
SELECT coalesce(array_agg(objid::int), '{}') FROM pg_locks
 WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND objsubid = 2
   AND classid = (4294967296 - %(key_id)s)::oid
"""
_SLOT_TAKE = """
SELECT slot FROM generate_series(0, %(slots)s - 1) AS slot
 WHERE slot <> ALL(%(held)s::int[]) AND pg_try_advisory_lock(-%(key_id)s::int, slot)
 LIMIT 1
"""


def slot_take(permit: Permit) -> int | None:
    """One of the key's ``max_concurrent`` slots for this session, or None if all are taken."""
    params = {"slots": permit.max_concurrent, "key_id": permit.key_id}
    with connection.cursor() as cursor:
        cursor.execute(_SLOTS_HELD, params)
        (held,) = cursor.fetchone()
        cursor.execute(_SLOT_TAKE, {**params, "held": held})
        row = cursor.fetchone()
    return None if row is None else row[0]


def slot_release(permit: Permit, slot: int) -> None:
    """Give back the concurrency slot ``slot`` of ``permit``'s key."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(-%s::int, %s)", [permit.key_id, slot])


def wait_note(permit: Permit, seconds: float) -> None:
    """Count a wait the permit did not decide (for a concurrency slot) on the key."""
    RateKey.objects.filter(id=permit.key_id).update(
        throttled_waits_total=F("throttled_waits_total") + 1,
        wait_seconds_total=F("wait_seconds_total") + seconds,
    )
