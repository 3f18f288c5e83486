"""JSONPath look-ups shared by captures and expectations."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jsonpath_ng.exceptions import JSONPathError as _LibraryParseError
from jsonpath_ng.ext import parse
from jsonpath_ng.ext.string import DefintionInvalid

# What the library raises for a malformed expression: its lexer and parser errors, an invalid
# `split`/`sub` string operation, and the regular expression of a `sub`.
_PARSE_ERRORS = (_LibraryParseError, DefintionInvalid, re.error)
# What evaluating a well-formed expression against a document of the wrong shape raises
# (`sorted` over mixed types, arithmetic on strings).
_LOOKUP_ERRORS = (TypeError, ValueError, KeyError, IndexError)


class JsonPathError(ValueError):
    """A JSONPath is malformed or selects nothing."""


@lru_cache(maxsize=1024)
def compile_path(expression: str):
    """Parse a JSONPath once; raise :class:`JsonPathError` when it is malformed."""
    try:
        return parse(expression)
    except _PARSE_ERRORS as exc:
        raise JsonPathError(f"invalid JSONPath {expression!r}: {exc}") from None


def find_first(expression: str, document: Any) -> Any:
    """The first value ``expression`` selects in ``document``; nothing selected is an error."""
    compiled = compile_path(expression)
    try:
        matches = compiled.find(document)
    except _LOOKUP_ERRORS as exc:
        raise JsonPathError(f"{expression} cannot be evaluated on this document: {exc}") from None
    if not matches:
        raise JsonPathError(f"{expression} matched nothing")
    return matches[0].value
