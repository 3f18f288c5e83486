"""The checker over the rate-limited target's log, on hand-made logs whose verdicts are known."""

from __future__ import annotations

import json

import pytest

from examples.target_evidence import (
    Entry,
    largest_share,
    most_in_any,
    per_second,
    read_log,
    summary,
    worst_window,
)


def entry(time: float, status: int = 200, lane: str = "") -> Entry:
    return Entry(time=time, path="/health", query={"lane": lane} if lane else {}, status=status)


def test_a_steady_stream_at_the_rate_after_a_full_burst_is_exactly_at_the_limit():
    # 5 at once, then one every 50 ms: GCRA(20/s, burst 5) accepts every one of them.
    times = [0.0] * 5 + [0.05 * n for n in range(1, 41)]
    window = worst_window(times, rate=20, burst=5)
    assert window.excess == pytest.approx(0)


def test_one_request_too_early_is_found_wherever_it_hides():
    times = [0.05 * n for n in range(200)]
    times.insert(120, times[120] - 0.001)  # two requests 1 ms apart, in a stream with no burst
    window = worst_window(times, rate=20, burst=1)
    # e.g. 5.95, 5.999 and 6.0: three requests where 1 + 20 * 0.05 = 2 may pass.
    assert window.excess == pytest.approx(1)
    assert window.end == pytest.approx(6.0)
    assert worst_window(times[:120], rate=20, burst=1).excess == pytest.approx(0)


def test_a_burst_larger_than_allowed_exceeds_the_limit_by_the_extra_requests():
    window = worst_window([1.0] * 8, rate=20, burst=5)
    assert (window.count, window.allowed, window.excess) == (8, 5, 3)


def test_requests_spread_over_a_long_window_only_count_against_that_window():
    # 40 requests in the first second (far over), then silence: the excess is 40 - (5 + 20 * ~1).
    times = [n / 40 for n in range(40)] + [100.0]
    window = worst_window(times, rate=20, burst=5)
    assert window.excess == pytest.approx(40 - 5 - 20 * (39 / 40))
    assert window.start == 0.0


def test_slack_forgives_jitter_of_that_many_seconds():
    times = [0.0, 0.04]  # 10 ms early for 20/s without a burst
    assert worst_window(times, rate=20, burst=1).excess > 0
    assert worst_window(times, rate=20, burst=1, slack_seconds=0.01).excess <= 1e-9


def test_no_requests_have_no_window():
    assert worst_window([], rate=20, burst=5) is None


def test_the_sliding_window_count_finds_the_densest_second():
    times = [0.1, 0.5, 0.9, 1.05, 1.2, 1.3, 2.5]
    assert most_in_any(times, 1.0) == 5  # 0.5 .. 1.3
    assert most_in_any([], 1.0) == 0


def test_requests_per_second_counts_accepted_and_refused_apart():
    entries = [entry(10.0), entry(10.5, 429), entry(11.2), entry(13.9, 429)]
    assert per_second(entries) == [(0, 1, 1), (1, 1, 0), (2, 0, 0), (3, 0, 1)]
    assert per_second(entries, origin=9.0)[0] == (0, 0, 0)
    assert per_second([]) == []


@pytest.mark.parametrize(
    ("labels", "stretch", "share"),
    [
        (list("abababab"), 4, 0.5),
        (list("aaaabbbb"), 4, 1.0),
        (list("aaabbabb"), 4, 0.75),
        (list("ab"), 4, 1.0),
        ([], 4, 0.0),
    ],
)
def test_the_largest_share_of_one_lane_in_any_stretch(labels, stretch, share):
    assert largest_share(labels, stretch) == share


def test_the_summary_judges_accepted_requests_and_all_arrivals_apart():
    entries = [entry(0.0)] * 5 + [entry(0.0, 429)] * 3 + [entry(1.0)]
    figures = summary(entries, rate=20, burst=5)
    assert (figures["requests"], figures["accepted"], figures["refused"]) == (9, 6, 3)
    assert figures["accepted_excess"] <= 0 < figures["arrivals_excess"]
    assert figures["most_accepted_in_1s"] == 6


def test_the_log_is_read_line_by_line(tmp_path):
    path = tmp_path / "log.jsonl"
    line = {"time": 1.5, "path": "/health", "query": {"lane": "a"}, "status": 429}
    path.write_text(json.dumps(line) + "\n")
    assert read_log(path) == [Entry(1.5, "/health", {"lane": "a"}, 429)]
    assert read_log(tmp_path / "missing.jsonl") == []
