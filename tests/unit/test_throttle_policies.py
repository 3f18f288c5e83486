"""The throttle's pure decisions: block lengths and the learned pace (no I/O)."""

from __future__ import annotations

import pytest

from targets.policies import (
    FAR_SLOWDOWN,
    SLOWDOWN,
    TRUSTED_REQUESTS,
    block_seconds,
    in_a_row,
    learned_interval,
    learns,
    refused_interval,
)


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
    ("current", "configured", "requests", "seconds", "paced_at", "slowdown"),
    [
        (None, 0.0, 100, 1.0, 0.01, SLOWDOWN),  # 100 accepted in 1 s: 100/s was too fast
        (None, 0.0, 10, 1.0, 0.1, FAR_SLOWDOWN),  # refused soon: far too fast
        (None, 0.0, 0, 1.0, 1.0, FAR_SLOWDOWN),  # refused at once
        (0.2, 0.0, 100, 1.0, 0.2, SLOWDOWN),  # the learned pace was slower still: too fast
        (0.05, 0.1, 100, 1.0, 0.1, SLOWDOWN),  # the configured pace is refused: too fast
        (None, 0.0, 50, 0.0, 0.0005, SLOWDOWN),  # no time measured: the shortest interval
        (None, 0.0, 50, -2.0, 0.0005, SLOWDOWN),  # a window opening in the future
    ],
)
def test_learned_interval_slows_down_from_the_slowest_pace_known(
    current, configured, requests, seconds, paced_at, slowdown
):
    learned = learned_interval(current, configured, requests, seconds)
    assert learned == pytest.approx(paced_at * slowdown)
    assert refused_interval(current, configured) <= learned


def test_learning_halves_the_pace_while_refused_soon_then_slows_gently():
    # A target accepting 20/s after a burst of 5, a flood at 1000/s: each pushback sees what
    # got through at the pace before it.
    interval, pushbacks = 0.001, 0
    while True:
        rate = 1 / interval
        if rate <= 20:
            break
        accepted = 5 + 20 * (5 / (rate - 20))  # until the burst is used up
        interval = learned_interval(interval, 0.0, int(accepted), accepted * interval)
        pushbacks += 1
    assert pushbacks <= 8
    assert 1 / interval > 20 / FAR_SLOWDOWN


@pytest.mark.parametrize(
    ("previous", "since", "count"),
    [(0, None, 1), (3, 5.0, 4), (3, 61.0, 1), (1, 60.0, 2)],
)
def test_pushbacks_in_a_row(previous, since, count):
    assert in_a_row(previous, since) == count


@pytest.mark.parametrize(
    ("configured", "in_a_row_", "accepted", "learn"),
    [
        (0.0, 1, 0, True),  # nobody configured the key: every pushback teaches
        (0.0, 1, 10_000, True),
        (0.05, 1, 3, False),  # a lone 429 at the configured pace: jitter, the block answers it
        (0.05, 2, TRUSTED_REQUESTS, False),  # again, but long after: still jitter
        (0.05, 2, TRUSTED_REQUESTS - 1, True),  # refused again soon: the pace itself is refused
        (0.05, 5, 0, True),
    ],
)
def test_a_configured_key_learns_only_when_refused_again_soon(
    configured, in_a_row_, accepted, learn
):
    assert learns(configured, in_a_row_, accepted) is learn
