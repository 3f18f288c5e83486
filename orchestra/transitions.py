"""The mechanism behind the state machines of runs and queue records: a conditional UPDATE.

Each state machine (``runs.states``, ``queue_catalog.states``) declares which statuses a status
may be entered from; :func:`conditional_transition` enforces that table and changes the row only
if it is still in a source status, so two processes can never both win a transition.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.db import models


class IllegalTransition(ValueError):
    """A transition its state machine does not allow: a programming error."""


def conditional_transition(
    model: type[models.Model],
    allowed_sources: Mapping[str, frozenset[str]],
    object_id: int,
    *,
    to: str,
    sources: set[str] | frozenset[str] | None = None,
    **conditions_and_fields,
) -> bool:
    """Move row ``object_id`` of ``model`` to status ``to`` if it is in one of ``sources``.

    ``sources`` defaults to every status ``to`` may be entered from; naming a status outside that
    set raises :class:`IllegalTransition`. Keyword arguments starting with ``where_`` add
    conditions (``where_worker="host:12"``); the rest are fields to set. Returns False when the
    row was not in a source status: another process got there first.
    """
    allowed = allowed_sources.get(to)
    if allowed is None:
        raise IllegalTransition(f"no transition leads to {to}")
    sources = allowed if sources is None else frozenset(sources)
    if not sources <= allowed:
        raise IllegalTransition(f"{sorted(sources - allowed)} -> {to} is not allowed")
    conditions = {
        key.removeprefix("where_"): value
        for key, value in conditions_and_fields.items()
        if key.startswith("where_")
    }
    fields = {k: v for k, v in conditions_and_fields.items() if not k.startswith("where_")}
    updated = model.objects.filter(id=object_id, status__in=sources, **conditions).update(
        status=to, **fields
    )
    return updated == 1


def sources_sql(
    allowed_sources: Mapping[str, frozenset[str]], to: str, column: str = "status"
) -> str:
    """``status IN ('A', 'B')``: the raw-SQL condition that ``to`` may be entered, from the same
    table of allowed transitions as :func:`conditional_transition` (statuses are constants of
    the state machine, never user input)."""
    allowed = allowed_sources.get(to)
    if allowed is None:
        raise IllegalTransition(f"no transition leads to {to}")
    quoted = ", ".join(f"'{status}'" for status in sorted(allowed))
    return f"{column} IN ({quoted})"
