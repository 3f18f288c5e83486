"""The throttle's pure decisions: block lengths and the learned pace (no I/O)."""

from __future__ import annotations

import pytest

from targets.policies import SLOWDOWN, block_seconds, in_a_row, learned_interval


@pytest.mark.parametrize(
    ("retry_after", "in_a_row_", "cap", "seconds"),
    [
        (5.0, 1, 300.0, 5.0),  # the target's word
        (5.0, 4, 300.0, 5.0),  # ... whatever came before
        (0.0, 1, 300.0, 0.0),
        (3600.0, 1, 300.0, 300.0),  # too large: capped
        (None, 1, 300.0, 1.0),  # absent or malformed: the default backoff
        (None, 2, 300.0, 2.0),  # ... doubling in a row
        (None, 4, 300.0, 8.0),
        (None, 20, 300.0, 300.0),  # ... up to the cap
    ],
)
def test_block_seconds(retry_after, in_a_row_, cap, seconds):
    assert block_seconds(retry_after, in_a_row_, cap) == seconds


@pytest.mark.parametrize(
    ("current", "configured", "requests", "seconds", "paced_at"),
    [
        (None, 0.0, 10, 1.0, 0.1),  # 10 accepted in 1 s: 10/s was too fast
        (None, 0.0, 0, 1.0, 1.0),  # refused at once: at least the window per request
        (0.2, 0.0, 10, 1.0, 0.2),  # the learned pace was slower still: that was too fast
        (0.05, 0.1, 100, 1.0, 0.1),  # the configured pace is refused: it is too fast
        (None, 0.0, 5, 0.0, 0.0005),  # no time measured: the shortest interval
        (None, 0.0, 5, -2.0, 0.0005),  # a window opening in the future
    ],
)
def test_learned_interval_slows_down_from_the_slowest_pace_known(
    current, configured, requests, seconds, paced_at
):
    learned = learned_interval(current, configured, requests, seconds)
    assert learned == pytest.approx(paced_at * SLOWDOWN)


def test_learning_converges_onto_a_limit_within_a_few_pushbacks():
    # A target accepting 20/s: each pushback observes the pace that got through.
    interval, pushbacks = 0.001, 0
    while 1 / interval > 20:
        interval = learned_interval(interval, 0.0, 10, 10 * interval)
        pushbacks += 1
    assert pushbacks <= 40
    assert 1 / interval > 20 / SLOWDOWN**2


@pytest.mark.parametrize(
    ("previous", "since", "count"),
    [(0, None, 1), (3, 5.0, 4), (3, 61.0, 1), (1, 60.0, 2)],
)
def test_pushbacks_in_a_row(previous, since, count):
    assert in_a_row(previous, since) == count
