"""Template tags of orchestra's admin pages."""

from __future__ import annotations

from collections.abc import Callable

from django import template
from django.utils.translation import ngettext

from orchestra.times import format_age, format_since, format_time

register = template.Library()

# "14 queue records", "14 записей очереди": a count needs every plural form of its language,
# which a model's one ``verbose_name_plural`` cannot give (Russian has three).
COUNTED: dict[str, Callable[[int], str]] = {
    "runs.scenario": lambda n: ngettext("%(count)d scenario", "%(count)d scenarios", n),
    "runs.testrun": lambda n: ngettext("%(count)d test run", "%(count)d test runs", n),
    "runs.stepresult": lambda n: ngettext("%(count)d step result", "%(count)d step results", n),
    "runs.deadletter": lambda n: ngettext("%(count)d dead letter", "%(count)d dead letters", n),
    "queue_catalog.queuerecord": lambda n: ngettext(
        "%(count)d queue record", "%(count)d queue records", n
    ),
}


@register.simple_tag
def counted(opts, count: int) -> str:
    """``count`` objects of the model ``opts`` describes, in the plural form the number needs."""
    phrase = COUNTED.get(opts.label_lower)
    if phrase is None:
        name = opts.verbose_name if count == 1 else opts.verbose_name_plural
        return f"{count} {name}"
    return phrase(count) % {"count": count}


@register.filter
def exact_time(value) -> str:
    """A time in orchestra's one format: "2026-12-02 02:41:07 UTC"."""
    return format_time(value)


@register.filter
def age(value):
    """The age of a time ("3 minutes ago"), the exact time on hover."""
    return format_age(value)


@register.filter
def since(value) -> str:
    """How long ago ``value`` was: "40 seconds", "3 minutes"."""
    return format_since(value)
