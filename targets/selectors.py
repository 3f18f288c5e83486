"""Reads of rate keys: the rows with the database's clock, and what a key's state means now.

A key's state is GCRA's one timestamp, ``tat`` (the theoretical arrival time): each request moves
it ``emission interval`` seconds on from ``max(tat, now)``, and a request may go while it leaves
``tat`` at most ``burst`` intervals ahead of now. So ``tat - now`` is the part of the burst in
use, measured in intervals. Every comparison uses the database's ``now()`` (annotated on the
rows as ``db_now``), the one clock the throttle uses on every host.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet
from django.db.models.functions import Now

from targets.models import RateKey


@dataclass(frozen=True)
class RateKeyUse:
    """How much of a key's budget is in use at one instant."""

    # Seconds between two requests that the key allows: the configured ``interval / requests``
    # or the interval learned from the target's 429s, whichever is longer; None: unlimited.
    emission_interval_seconds: float | None
    requests_per_second: float | None
    # Requests' worth of the burst spent (0 .. burst); None: unlimited.
    burst_used: float | None
    # Seconds until the next request may go (a block, or a burst spent); 0: now.
    next_request_in_seconds: float
    blocked: bool
    blocked_for_seconds: float


def emission_interval(key: RateKey) -> float | None:
    """Seconds between requests: configured or learned, the stricter; None when neither is set."""
    intervals = [key.learned_interval_seconds] if key.learned_interval_seconds else []
    if key.requests:
        intervals.append(key.interval_seconds / key.requests)
    return max(intervals, default=None)


def rate_key_use(*, key: RateKey, now: datetime) -> RateKeyUse:
    """The use of ``key`` at ``now`` (the database's clock), from its GCRA state. Pure."""
    blocked_for = (key.blocked_until - now).total_seconds() if key.blocked_until else 0.0
    blocked_for = max(blocked_for, 0.0)
    interval = emission_interval(key)
    if interval is None:
        return RateKeyUse(
            emission_interval_seconds=None,
            requests_per_second=None,
            burst_used=None,
            next_request_in_seconds=round(blocked_for, 3),
            blocked=blocked_for > 0,
            blocked_for_seconds=round(blocked_for, 3),
        )
    ahead = max((key.tat - now).total_seconds(), 0.0) if key.tat else 0.0
    # A request may go once tat is at most (burst - 1) intervals ahead: it then adds one.
    burst_wait = max(ahead - interval * (key.burst - 1), 0.0)
    return RateKeyUse(
        emission_interval_seconds=interval,
        requests_per_second=round(1 / interval, 6),
        burst_used=round(min(ahead / interval, key.burst), 3),
        next_request_in_seconds=round(max(blocked_for, burst_wait), 3),
        blocked=blocked_for > 0,
        blocked_for_seconds=round(blocked_for, 3),
    )


def rate_key_list() -> QuerySet[RateKey]:
    """Every key by name, each row with the database's clock as ``db_now``."""
    return RateKey.objects.annotate(db_now=Now()).order_by("name")


def rate_key_get(*, rate_key_id: int) -> RateKey:
    """One key with ``db_now``; raises ``RateKey.DoesNotExist``."""
    return rate_key_list().get(id=rate_key_id)
