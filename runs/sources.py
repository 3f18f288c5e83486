"""A definition's source text: the YAML (or JSON) people write, read into a definition and back,
and the difference between two texts. Pure functions; nothing here touches the database."""

from __future__ import annotations

import difflib
import json
from typing import Any

import yaml

# YAML aliases let a short text stand for a huge tree ("billion laughs"); a definition made of
# more values than this is refused before anything walks or stores it.
MAX_VALUES = 100_000


class SourceError(ValueError):
    """The text is not YAML/JSON, or does not hold an object; the message says where."""


def definition_from_source(text: str, *, kind: str = "YAML") -> dict[str, Any]:
    """Read a definition from its source text (``kind`` ``JSON`` uses the JSON parser).

    YAML comments and layout are not part of the result; the text itself is what keeps them.
    """
    try:
        definition = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SourceError(f"not valid {kind}: {exc}") from None
    if not isinstance(definition, dict):
        raise SourceError(f"a scenario must be an object (a YAML mapping), not {_kind(definition)}")
    if _count_values(definition, MAX_VALUES) > MAX_VALUES:
        raise SourceError(f"the definition expands to more than {MAX_VALUES} values")
    return definition


def source_from_definition(definition: dict[str, Any]) -> str:
    """The YAML text of a definition that came without one (JSON from the API, old scenarios)."""
    return yaml.safe_dump(definition, sort_keys=False, allow_unicode=True, width=100)


def source_diff(old: str, new: str, *, old_label: str, new_label: str) -> list[str]:
    """The unified diff of two source texts, one line per item, without line ends."""
    return list(
        difflib.unified_diff(
            old.splitlines(),
            new.splitlines(),
            fromfile=old_label,
            tofile=new_label,
            lineterm="",
        )
    )


def _count_values(root: Any, limit: int) -> int:
    """How many values ``root`` holds, counting a shared one at each place it appears; the
    count stops just past ``limit``."""
    count, pending = 0, [root]
    while pending and count <= limit:
        value = pending.pop()
        count += 1
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return count


def _kind(value: Any) -> str:
    if value is None:
        return "an empty text"
    return {list: "a list", str: "a text"}.get(type(value), type(value).__name__)
