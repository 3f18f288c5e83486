"""What a rate key's GCRA state means at one instant: a table of keys and clocks, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from targets.models import RateKey
from targets.selectors import RateKeyUse, rate_key_use

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def key(**fields) -> RateKey:
    return RateKey(name="http://target:80", **fields)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def use(interval, rps, burst_used, next_in, blocked_for=0.0) -> RateKeyUse:
    return RateKeyUse(
        emission_interval_seconds=interval,
        requests_per_second=rps,
        burst_used=burst_used,
        next_request_in_seconds=next_in,
        blocked=blocked_for > 0,
        blocked_for_seconds=blocked_for,
    )


CASES = [
    # (key, expected use at NOW)
    pytest.param(key(), use(None, None, None, 0.0), id="never-configured-unlimited"),
    pytest.param(key(tat=at(30)), use(None, None, None, 0.0), id="unlimited-ignores-a-stale-tat"),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5),
        use(0.05, 20.0, 0.0, 0.0),
        id="configured-never-used",
    ),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5, tat=at(-10)),
        use(0.05, 20.0, 0.0, 0.0),
        id="tat-in-the-past-burst-whole",
    ),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5, tat=at(0.1)),
        use(0.05, 20.0, 2.0, 0.0),
        id="two-of-five-used",
    ),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5, tat=at(0.2)),
        use(0.05, 20.0, 4.0, 0.0),
        id="four-used-one-may-go-now",
    ),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5, tat=at(0.25)),
        use(0.05, 20.0, 5.0, 0.05),
        id="burst-spent-next-in-one-interval",
    ),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5, tat=at(1.0)),
        use(0.05, 20.0, 5.0, 0.8),
        id="overdrawn-burst-capped-wait-grows",
    ),
    pytest.param(
        key(requests=100, interval_seconds=60, burst=1, tat=at(0.3)),
        use(0.6, 1.666667, 0.5, 0.3),
        id="per-minute-no-burst",
    ),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5, learned_interval_seconds=0.5, tat=at(1)),
        use(0.5, 2.0, 2.0, 0.0),
        id="learned-interval-stricter-than-configured",
    ),
    pytest.param(
        key(requests=1, interval_seconds=1, burst=1, learned_interval_seconds=0.1),
        use(1.0, 1.0, 0.0, 0.0),
        id="configured-stricter-than-learned",
    ),
    pytest.param(
        key(learned_interval_seconds=0.25, tat=at(0.25)),
        use(0.25, 4.0, 1.0, 0.25),
        id="unconfigured-limited-by-what-429s-taught",
    ),
    pytest.param(
        key(blocked_until=at(12.5)),
        use(None, None, None, 12.5, blocked_for=12.5),
        id="unlimited-but-blocked-by-the-target",
    ),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5, tat=at(1.0), blocked_until=at(0.5)),
        use(0.05, 20.0, 5.0, 0.8, blocked_for=0.5),
        id="blocked-shorter-than-the-burst-wait",
    ),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5, blocked_until=at(0)),
        use(0.05, 20.0, 0.0, 0.0),
        id="block-ending-now-is-over",
    ),
    pytest.param(
        key(requests=20, interval_seconds=1, burst=5, blocked_until=at(-60)),
        use(0.05, 20.0, 0.0, 0.0),
        id="block-in-the-past-is-over",
    ),
]


@pytest.mark.parametrize(("rate_key", "expected"), CASES)
def test_rate_key_use_from_its_state_and_the_database_clock(rate_key, expected):
    assert rate_key_use(key=rate_key, now=NOW) == expected
