"""Redaction: credentials never reach the database or a screen, however deep they sit."""

from __future__ import annotations

import copy
import json

import pytest

from runs.redaction import REDACTED, is_sensitive_key, redact, texts_of


@pytest.mark.parametrize(
    "key",
    [
        "Authorization",
        "authorization",
        "Proxy-Authorization",
        "Cookie",
        "Set-Cookie",
        "set-cookie",
        "X-Api-Key",
        "x-api-key",
        "api_key",
        "apiKey",
        "X-Auth-Token",
        "access_token",
        "refresh_token",
        "token",
        "password",
        "db_password",
        "passwd",
        "client_secret",
        "SECRET",
        "private_key",
        "aws_credentials",
    ],
)
def test_sensitive_keys_are_recognised_whatever_their_spelling(key):
    assert is_sensitive_key(key)
    assert redact({key: "value"}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key",
    ["Accept", "content-type", "name", "id", "status", "user_id", "url", "method", "body", 5, None],
)
def test_ordinary_keys_are_kept(key):
    assert not is_sensitive_key(key)
    assert redact({key: "value"}) == {key: "value"}


def test_sensitive_keys_are_masked_at_any_depth_and_in_lists():
    record = {
        "request": {
            "headers": {"Authorization": "Bearer abc", "Accept": "application/json"},
            "query": {"api_key": "k-1", "page": 2},
        },
        "tries": [{"response": {"headers": {"set-cookie": "sid=1"}}, "status": 200}],
    }

    assert redact(record) == {
        "request": {
            "headers": {"Authorization": REDACTED, "Accept": "application/json"},
            "query": {"api_key": REDACTED, "page": 2},
        },
        "tries": [{"response": {"headers": {"set-cookie": REDACTED}}, "status": 200}],
    }


def test_a_sensitive_key_masks_its_whole_value_even_an_object():
    assert redact({"credentials": {"user": "u", "pass": "p"}}) == {"credentials": REDACTED}


def test_secret_values_are_replaced_inside_any_string():
    record = {
        "url": "http://t.test/login?pw=hunter2&u=ada",
        "body": '{"pw": "hunter2"}',
        "error": "expected hunter2, got nothing",
        "list": ["hunter2", "x hunter2 y hunter2"],
    }

    assert redact(record, {"hunter2"}) == {
        "url": f"http://t.test/login?pw={REDACTED}&u=ada",
        "body": f'{{"pw": "{REDACTED}"}}',
        "error": f"expected {REDACTED}, got nothing",
        "list": [REDACTED, f"x {REDACTED} y {REDACTED}"],
    }


def test_a_secret_containing_a_shorter_one_is_masked_whole():
    # Whatever order the set iterates in, no tail of the longer secret may survive.
    for secrets in ({"abc", "abcdef"}, {"abcdef", "abc"}, frozenset({"abc", "abcdef", "bcd"})):
        assert redact("key=abcdef;", secrets) == f"key={REDACTED};"


def test_secret_values_used_as_keys_are_masked():
    assert redact({"hunter2": 1, "a": {"x-hunter2": 2}}, {"hunter2"}) == {
        REDACTED: 1,
        "a": {f"x-{REDACTED}": 2},
    }


def test_a_number_equal_to_a_secret_is_masked():
    assert redact({"pin": 4711, "ratio": 0.25, "count": 3}, {"4711", "0.25"}) == {
        "pin": REDACTED,
        "ratio": REDACTED,
        "count": 3,
    }


def test_booleans_and_null_are_never_mistaken_for_secrets():
    assert redact({"a": True, "b": None, "c": False}, {"True", "None", "1", "0"}) == {
        "a": True,
        "b": None,
        "c": False,
    }


def test_tuples_are_redacted_like_lists():
    assert redact(("hunter2", {"token": "t"}), {"hunter2"}) == [REDACTED, {"token": REDACTED}]


def test_an_empty_secret_changes_nothing():
    assert redact("some text", {""}) == "some text"


def test_without_secrets_only_keys_are_masked():
    assert redact({"note": "hunter2", "token": "t"}) == {"note": "hunter2", "token": REDACTED}


def test_redact_returns_a_copy_and_leaves_its_input_alone():
    record = {"headers": {"Authorization": "Bearer abc"}, "body": ["hunter2"]}
    before = copy.deepcopy(record)

    redacted = redact(record, {"hunter2"})

    assert record == before
    assert redacted is not record
    assert redacted["headers"] is not record["headers"]


@pytest.mark.parametrize("value", [None, 0, 1.5, True, "", [], {}])
def test_scalars_and_empty_containers_pass_through(value):
    assert redact(value, {"hunter2"}) == value


def test_a_marker_already_written_is_never_masked_again():
    # "RED" is inside "[REDACTED]"; a second pass would garble the first one's marker
    assert redact("key=hunter2 RED", {"hunter2", "RED", "ACTED"}) == f"key={REDACTED} RED"


def test_a_short_secret_is_masked_only_where_a_whole_value_equals_it():
    record = {"a": "e", "b": "every letter e", "c": 42, "d": "4242"}

    assert redact(record, {"e", "42"}) == {
        "a": REDACTED,
        "b": "every letter e",
        "c": REDACTED,
        "d": "4242",
    }


def test_texts_of_a_value_are_its_strings_keys_numbers_and_their_json_spellings():
    assert texts_of({"k": ['a"b', 7, 0.5, True, None, ""]}) == {"k", 'a"b', 'a\\"b', "7", "0.5"}


def test_a_secret_with_quotes_is_masked_inside_a_json_text_too():
    secret = 'pa"ss\\word'
    body = json.dumps({"password2": secret})

    assert secret not in str(redact(body, texts_of(secret)))
    assert json.dumps(secret)[1:-1] not in str(redact(body, texts_of(secret)))
