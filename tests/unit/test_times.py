"""How times, ages and durations read: one format with seconds and the zone, in every language."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone, translation

from orchestra.times import elapsed, format_age, format_duration, format_since, format_time

AT = datetime(2026, 12, 2, 2, 41, 7, 654321, tzinfo=UTC)


@pytest.mark.parametrize("language", ["en", "ru"])
@pytest.mark.parametrize(
    "value",
    [AT, AT.isoformat(), AT.replace(tzinfo=None), "2026-12-02T05:41:07.654321+03:00"],
)
def test_a_time_reads_to_the_second_with_its_zone_in_every_language(value, language):
    with translation.override(language):
        assert format_time(value) == "2026-12-02 02:41:07 UTC"


@pytest.mark.parametrize(("value", "shown"), [(None, "—"), ("", "—"), ("not a time", "not a time")])
def test_a_missing_or_unreadable_time_is_shown_as_it_is(value, shown):
    assert format_time(value) == shown


@pytest.mark.parametrize(
    ("seconds", "en", "ru"),
    [
        (None, "—", "—"),
        (0.0004, "0 ms", "0 мс"),
        (0.1824, "182 ms", "182 мс"),
        (3.44, "3.4 s", "3.4 с"),
        (185, "3 min 05 s", "3 мин 05 с"),
        (7800, "2 h 10 min", "2 ч 10 мин"),
    ],
)
def test_a_duration_reads_in_the_unit_that_fits(seconds, en, ru):
    with translation.override("en"):
        assert format_duration(seconds) == en
    with translation.override("ru"):
        assert format_duration(seconds) == ru


@pytest.mark.parametrize(
    ("ago", "en", "ru"),
    [
        (timedelta(seconds=1), "1 second", "1 секунда"),
        (timedelta(seconds=42), "42 seconds", "42 секунды"),
        (timedelta(minutes=3, seconds=20), "3 minutes", "3 минуты"),
    ],
)
def test_an_age_counts_seconds_then_the_largest_unit(ago, en, ru):
    moment = timezone.now() - ago
    with translation.override("en"):
        assert format_since(moment) == en.replace(" ", "\xa0")
    with translation.override("ru"):
        assert format_since(moment) == ru.replace(" ", "\xa0")


def test_an_age_shows_the_exact_time_on_hover():
    html = format_age(AT)

    assert html.startswith('<span title="2026-12-02 02:41:07 UTC"')
    assert html.endswith(" ago</span>")
    assert format_age(None) == "—"


def test_elapsed_is_known_only_once_both_ends_are():
    assert elapsed(AT, AT + timedelta(seconds=2.5)) == 2.5
    assert elapsed(AT, None) is None and elapsed(None, AT) is None
