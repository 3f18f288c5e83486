"""Pure rules of schedules, notifications and trends: cron parsing, the fire gap, the delivery
backoff, the webhook signature, the trend chart."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from launches.schedules import cron_fields, fire_gap
from notifications.services import backoff_seconds, body_bytes, signature
from runs.trends import TrendPoint, trend_svg


@pytest.mark.parametrize(
    ("expression", "fields"),
    [
        ("*/15 * * * *", ("*/15", "*", "*", "*", "*")),
        ("30 2 * * 1-5", ("30", "2", "*", "*", "1-5")),
        ("  0  0 1 1 sun ", ("0", "0", "1", "1", "sun")),
    ],
)
def test_cron_fields_accepts_five_fields(expression, fields):
    assert tuple(cron_fields(expression).values()) == fields


@pytest.mark.parametrize(
    "expression", ["* * * *", "* * * * * *", "61 * * * *", "* 25 * * *", "x * * * *"]
)
def test_cron_fields_refuses_what_cron_would(expression):
    with pytest.raises(ValueError):
        cron_fields(expression)


@pytest.mark.parametrize(
    ("cron", "interval", "gap"),
    [
        ("* * * * *", None, timedelta(seconds=30)),
        ("", 2, timedelta(seconds=1)),
        ("", 3600, timedelta(minutes=30)),
    ],
)
def test_fire_gap_is_half_the_shortest_period(cron, interval, gap):
    assert fire_gap(cron=cron, interval_seconds=interval) == gap


@pytest.mark.parametrize(("attempt", "seconds"), [(1, 10), (2, 20), (3, 40), (6, 320), (20, 3600)])
def test_backoff_doubles_up_to_an_hour(attempt, seconds):
    assert backoff_seconds(attempt, base=10) == seconds


def test_the_signature_covers_timestamp_and_body():
    body = body_bytes({"b": 1, "a": [1, 2]})
    assert body == b'{"a":[1,2],"b":1}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k", 1700000000, body) == f"sha256={expected}"
    assert signature("k", 1700000001, body) != signature("k", 1700000000, body)
    assert signature("other", 1700000000, body) != signature("k", 1700000000, body)


def test_the_trend_draws_one_bar_and_one_outcome_per_run_scaled_to_the_longest():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    points = [
        TrendPoint(run_id=i, status=s, finished_at=at + timedelta(minutes=i), seconds=d)
        for i, (s, d) in enumerate([("PASSED", 1.0), ("FAILED", 4.0), ("ERROR", 0.0)])
    ]
    svg = trend_svg(points)
    assert svg.count('class="outcome"') == 3 and svg.count("<rect") == 6
    assert "4.00s" in svg and "run 1: FAILED, 4.000s" in svg
    assert "no finished runs" in trend_svg([])
