"""Makes any value a plugin returns storable in PostgreSQL ``jsonb`` and ``text``.

A plugin hands back whatever the system under test sent: NUL characters (which neither ``jsonb``
nor ``text`` can hold), lone surrogates (not encodable as UTF-8), NaN and Infinity (not JSON),
bytes, sets, Decimals, arbitrary objects, dict keys that are not strings, structures nested
without end or bigger than any row should be. :func:`storable` is the one place where such a value
becomes plain JSON that PostgreSQL accepts, bounded in depth and size; the executor calls it on
each step's record after redaction, so nothing else on the way to the database has to care.

What changes, and how it reads once stored:

- NUL becomes the six characters ``\\u0000`` and a lone surrogate ``\\udXXX``: visible, not lost;
- NaN, Infinity and -Infinity become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``;
- bytes become a body summary (:func:`plugins.bodies.summarize`): text when they are text,
  otherwise size, SHA-256 and a short base64 preview;
- sets and tuples become lists, Decimals numbers, dates ISO 8601 text, other objects their
  ``str()``; dict keys become strings;
- containers nested deeper than :data:`MAX_DEPTH` and anything past :data:`MAX_CHARS` characters
  (roughly the JSON size) are replaced by a short ``"[truncated: ...]"`` marker.
"""

from __future__ import annotations

import datetime
import math
import re
import uuid
from decimal import Decimal
from enum import Enum
from typing import Any

from plugins.bodies import summarize

MAX_DEPTH = 32
#: The budget of one value (a step's request, response, captures...), in characters.
MAX_CHARS = 262_144
#: Integers wider than this are stored as text: json cannot write them past 4300 digits.
MAX_INT_BITS = 1024
_UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")
_BYTES = (bytes, bytearray, memoryview)
_TIMES = (datetime.date, datetime.time)
_CONTAINERS = (dict, list, tuple, set, frozenset)


def storable(value: Any, *, max_chars: int = MAX_CHARS) -> Any:
    """A copy of ``value`` that PostgreSQL stores as ``jsonb`` (or ``text``, for a string)."""
    return _Walk(max_chars).value(value, 0)


# A surrogate left in a decoded str is unpaired: JSON's escaped pairs decode to one character.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def has_unstorable_text(value: Any) -> bool:
    """Whether a key or string at any depth holds a NUL or an unpaired surrogate: PostgreSQL's
    jsonb stores neither, so input holding one is refused where it enters."""
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(has_unstorable_text(k) or has_unstorable_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_unstorable_text(item) for item in value)
    return False


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates escaped (not bounded: callers cut to their column)."""
    if "\x00" not in text:
        try:
            text.encode("utf-8")  # much faster than the search below, and almost always true
            return text
        except UnicodeEncodeError:
            pass
    return _UNSTORABLE_CHARS.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


class _Walk:
    """One conversion: the character budget is shared by the whole value."""

    def __init__(self, max_chars: int) -> None:
        self.left = max_chars

    def value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return self.text(value)
        if kind is dict or kind is list:
            return self.container(value, depth)
        if value is None or isinstance(value, bool):
            self.left -= 5
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, int):
            self.left -= 20
            if value.bit_length() > MAX_INT_BITS:
                return f"[integer of {value.bit_length()} bits]"
            return int(value)  # an IntEnum or bool subclass stored as the number
        if isinstance(value, float):
            self.left -= 24
            return float(value) if math.isfinite(value) else _non_finite(value)
        if isinstance(value, Decimal):
            return self.value(_decimal(value), depth)
        if isinstance(value, _BYTES):
            return self.value(summarize(bytes(value)), depth)
        if isinstance(value, _TIMES):
            return self.text(value.isoformat())
        if isinstance(value, uuid.UUID):
            return self.text(str(value))
        if isinstance(value, Enum):
            return self.value(value.value, depth)
        if isinstance(value, _CONTAINERS):
            return self.container(value, depth)
        return self.text(_describe(value))

    def text(self, text: str) -> str:
        budget = max(self.left, 0)
        self.left -= len(text) + 2
        if len(text) > budget:
            text = text[:budget] + f"…[truncated: {len(text) - budget} more characters]"
        return storable_text(text)

    def container(self, value: dict | list | tuple | set | frozenset, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            return self.text(f"[truncated: nested deeper than {MAX_DEPTH} levels]")
        self.left -= 2
        if isinstance(value, dict):
            stored: dict[str, Any] = {}
            for count, (key, item) in enumerate(value.items()):
                if self.left <= 0:
                    stored["[truncated]"] = f"{len(value) - count} more entries"
                    break
                name = self.text(_key(key))
                while name in stored:  # 1 and "1" both stored, not one lost
                    name += "'"
                stored[name] = self.value(item, depth + 1)
            return stored
        items = _ordered(value) if isinstance(value, set | frozenset) else value
        stored_items: list[Any] = []
        for count, item in enumerate(items):
            if self.left <= 0:
                stored_items.append(f"[truncated: {len(value) - count} more items]")
                break
            stored_items.append(self.value(item, depth + 1))
        return stored_items


def _non_finite(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def _decimal(number: Decimal) -> Any:
    if not number.is_finite():
        return "NaN" if number.is_nan() else ("Infinity" if number > 0 else "-Infinity")
    as_float = float(number)
    return as_float if math.isfinite(as_float) else str(number)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    # As json.dumps spells the keys it accepts; anything else by its text.
    if key is None or isinstance(key, bool):
        return {None: "null", True: "true", False: "false"}[key]
    if isinstance(key, float) and not math.isfinite(key):
        return _non_finite(key)
    if isinstance(key, bytes):
        return key.decode("utf-8", errors="backslashreplace")
    return _describe(key)


def _ordered(items: set | frozenset) -> list:
    try:
        return sorted(items)
    except TypeError:
        return list(items)


def _describe(value: Any) -> str:
    """``str(value)`` for an object JSON has no type for; never raises."""
    try:
        text = str(value)
    except Exception:  # a broken __str__ must not lose the rest of the step
        text = ""
    return text if isinstance(text, str) and text else f"<{type(value).__name__} object>"
