"""How orchestra shows times to people: one format everywhere, ages, durations.

The format itself is ``DATETIME_FORMAT`` of ``orchestra.formats`` (settings'
``FORMAT_MODULE_PATH``), so the admin's own date fields and these helpers agree.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext as _
from django.utils.translation import ngettext


def format_time(value: datetime | str | None) -> str:
    """``value`` (a datetime or an ISO 8601 string) as "2026-12-02 02:41:07 UTC"; "—" if none."""
    if value in (None, ""):
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value  # not a time after all: show what was stored
    if timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return formats.date_format(timezone.localtime(value), "DATETIME_FORMAT")


def format_since(value: datetime) -> str:
    """How long ago ``value`` was, to one unit: "40 seconds", "3 minutes", "2 days"."""
    seconds = int((timezone.now() - value).total_seconds())
    if seconds < 60:
        text = ngettext("%(count)d second", "%(count)d seconds", seconds) % {"count": seconds}
        return text.replace(" ", "\xa0")  # number and unit stay together, as in timesince
    return timesince(value, depth=1)


def format_age(value: datetime | None) -> SafeString | str:
    """The age of ``value`` ("3 minutes ago"), with the exact time on hover (``title``)."""
    if value is None:
        return "—"
    age = format_since(value)
    return format_html(
        '<span title="{}" style="white-space:nowrap">{}</span>',
        format_time(value),
        _("%(age)s ago") % {"age": age},
    )


def format_duration(seconds: float | None) -> str:
    """A duration as people read it: "850 ms", "4.2 s", "3 min 05 s", "2 h 10 min"."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return _("%(ms)d ms") % {"ms": round(seconds * 1000)}
    if seconds < 60:
        return _("%(s).1f s") % {"s": seconds}
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return _("%(min)d min %(s)02d s") % {"min": minutes, "s": rest}
    hours, minutes = divmod(minutes, 60)
    return _("%(h)d h %(min)02d min") % {"h": hours, "min": minutes}


def elapsed(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from ``start`` to ``end``; None until both are known."""
    if start is None or end is None:
        return None
    return (end - start).total_seconds()
