"""JSONPath look-ups shared by captures and expectations."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import parse


class JsonPathError(ValueError):
    """A JSONPath is malformed or selects nothing."""


@lru_cache(maxsize=1024)
def compile_path(expression: str):
    """Parse a JSONPath once; raise :class:`JsonPathError` when it is malformed."""
    try:
        return parse(expression)
    except (JsonPathLexerError, JsonPathParserError, Exception) as exc:
        raise JsonPathError(f"invalid JSONPath {expression!r}: {exc}") from None


def find_first(expression: str, document: Any) -> Any:
    """The first value ``expression`` selects in ``document``; nothing selected is an error."""
    matches = compile_path(expression).find(document)
    if not matches:
        raise JsonPathError(f"{expression} matched nothing")
    return matches[0].value
