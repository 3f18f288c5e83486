"""The tag expression parser: a table of expressions, tag sets and verdicts, and of errors."""

from __future__ import annotations

import pytest

from launches.tags import MAX_DEPTH, TagExpressionError, parse_tag_expression


@pytest.mark.parametrize(
    ("expression", "tags", "matches"),
    [
        ("smoke", {"smoke"}, True),
        ("smoke", {"slow"}, False),
        ("smoke", set(), False),
        ("smoke and not slow", {"smoke"}, True),
        ("smoke and not slow", {"smoke", "slow"}, False),
        ("smoke or payments", {"payments"}, True),
        ("smoke or payments", {"billing"}, False),
        ("not smoke", set(), True),
        ("not not smoke", {"smoke"}, True),
        # not > and > or
        ("a or b and c", {"a"}, True),
        ("a or b and c", {"b"}, False),
        ("(a or b) and c", {"a"}, False),
        ("(a or b) and c", {"b", "c"}, True),
        ("not a and b", {"b"}, True),
        ("not (a and b)", {"a", "b"}, False),
        ("not (a and b)", {"a"}, True),
        ("  smoke\tand\n(api or  ui)  ", {"smoke", "ui"}, True),
        ("team:payments and v1.2-beta", {"team:payments", "v1.2-beta"}, True),
        ("Smoke", {"smoke"}, False),  # tags are case-sensitive
        ("android", {"android"}, True),  # a tag may start with an operator word
        ("((((smoke))))", {"smoke"}, True),
    ],
)
def test_expression_matches_tags(expression, tags, matches):
    assert parse_tag_expression(expression).matches(tags) is matches


@pytest.mark.parametrize(
    ("expression", "position"),
    [
        ("", 0),
        ("   ", 0),
        ("smoke and", 9),
        ("and smoke", 0),
        ("smoke slow", 6),
        ("(smoke", 6),
        ("smoke)", 5),
        ("()", 1),
        ("smoke && slow", 6),
        ("not", 3),
        ("smoke or or slow", 9),
        ("smoke, slow", 5),
    ],
)
def test_unreadable_expressions_name_the_position(expression, position):
    with pytest.raises(TagExpressionError) as caught:
        parse_tag_expression(expression)
    assert caught.value.position == position


def test_hostile_nesting_and_length_are_refused_not_a_crash():
    with pytest.raises(TagExpressionError, match="nested deeper"):
        parse_tag_expression("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(TagExpressionError, match="longer than"):
        parse_tag_expression(" or ".join(["tag"] * 400))
    assert parse_tag_expression("not " * 201 + "a").matches(set())  # odd: negated
