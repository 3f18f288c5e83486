"""A step's ``rate_key``: a non-empty name of at most 300 characters, refused on save otherwise."""

from __future__ import annotations

import pytest

from runs.definition import DefinitionError, validate_definition


def _definition(rate_key) -> dict:
    step = {"name": "call", "plugin": "http", "with": {"url": "http://target.test/a"}}
    return {"steps": [{**step, "rate_key": rate_key}]}


@pytest.mark.parametrize("rate_key", ["shared-billing", "x", "k" * 300, "http://a.test:80"])
def test_a_rate_key_is_accepted(rate_key):
    validate_definition(_definition(rate_key))


@pytest.mark.parametrize(
    ("rate_key", "message"),
    [
        ("", "should be non-empty"),
        ("   ", "does not match"),
        ("k" * 301, "is too long"),
        (7, "is not of type 'string'"),
        (None, "is not of type 'string'"),
    ],
)
def test_a_bad_rate_key_is_refused_naming_the_step_and_field(rate_key, message):
    with pytest.raises(DefinitionError) as caught:
        validate_definition(_definition(rate_key))
    problems = [(p.label, p.message) for p in caught.value.problems]
    assert any(label == "steps[0] (call): rate_key" and message in text for label, text in problems)
