"""Tag expressions: ``smoke and not slow``, ``(payments or billing) and not flaky``.

A pure parser: :func:`parse_tag_expression` turns the text into a predicate over a scenario's
tags, or raises :class:`TagExpressionError` saying where the text went wrong. ``not`` binds
tighter than ``and``, which binds tighter than ``or``; parentheses group. A tag is spelled as
``runs.models.TAG_PATTERN`` allows; the three operator words are not tags.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from runs.models import TAG_PATTERN

Predicate = Callable[[frozenset[str]], bool]

KEYWORDS = frozenset({"and", "or", "not"})
#: Bounds that keep a hostile expression from exhausting the parser's stack.
MAX_LENGTH = 1000
MAX_DEPTH = 32
_TOKEN = re.compile(rf"\s*(?:(?P<paren>[()])|(?P<word>{TAG_PATTERN}))")


class TagExpressionError(ValueError):
    """The expression cannot be read; ``position`` is the offending character (0-based)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position + 1})")
        self.position = position


@dataclass(frozen=True)
class TagExpression:
    """A parsed expression: ``matches(tags)`` says whether a scenario with ``tags`` is in."""

    text: str
    predicate: Predicate

    def matches(self, tags: Collection[str]) -> bool:
        return self.predicate(frozenset(tags))


def _tokens(text: str) -> list[tuple[str, int]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            offset = len(text) - len(text[position:].lstrip())
            raise TagExpressionError(f"unexpected {text[offset]!r}", offset)
        value = match.group("paren") or match.group("word")
        tokens.append((value, match.start(match.lastgroup)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.index][0] if self.index < len(self.tokens) else None

    def position(self) -> int:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else len(self.text)

    def take(self) -> str:
        token = self.tokens[self.index][0]
        self.index += 1
        return token

    def expression(self) -> Predicate:
        left = self.conjunction()
        while self.peek() == "or":
            self.take()
            right = self.conjunction()
            left = (lambda a, b: lambda tags: a(tags) or b(tags))(left, right)
        return left

    def conjunction(self) -> Predicate:
        left = self.negation()
        while self.peek() == "and":
            self.take()
            right = self.negation()
            left = (lambda a, b: lambda tags: a(tags) and b(tags))(left, right)
        return left

    def negation(self) -> Predicate:
        negated = False
        while self.peek() == "not":
            self.take()
            negated = not negated
        inner = self.atom()
        return (lambda tags: not inner(tags)) if negated else inner

    def atom(self) -> Predicate:
        token, position = self.peek(), self.position()
        if token is None:
            raise TagExpressionError("expected a tag or '('", position)
        if token == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise TagExpressionError(f"nested deeper than {MAX_DEPTH} parentheses", position)
            self.take()
            inner = self.expression()
            self.depth -= 1
            if self.peek() != ")":
                raise TagExpressionError("expected ')'", self.position())
            self.take()
            return inner
        if token == ")" or token in KEYWORDS:
            raise TagExpressionError(f"expected a tag or '(', not {token!r}", position)
        self.take()
        return lambda tags: token in tags


def parse_tag_expression(text: str) -> TagExpression:
    """Parse ``text``; raises :class:`TagExpressionError` with the position of the problem."""
    if not isinstance(text, str) or not text.strip():
        raise TagExpressionError("the expression is empty", 0)
    if len(text) > MAX_LENGTH:
        raise TagExpressionError(f"longer than {MAX_LENGTH} characters", MAX_LENGTH)
    parser = _Parser(text)
    predicate = parser.expression()
    if parser.peek() is not None:
        raise TagExpressionError(f"unexpected {parser.peek()!r}", parser.position())
    return TagExpression(text, predicate)
