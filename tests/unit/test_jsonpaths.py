"""JSONPath errors are caught narrowly: the library's parse and lookup errors, nothing else."""

from __future__ import annotations

from unittest import mock

import pytest

from plugins import jsonpaths
from plugins.jsonpaths import JsonPathError, compile_path, find_first


@pytest.mark.parametrize(
    "expression",
    ["$.[[", "$..", "", "$[", "$.'a", "\x00", "$.`split(1)`", "$.`sub(/(/, x)`", "@@@"],
)
def test_every_malformed_expression_the_library_refuses_is_a_jsonpath_error(expression):
    with pytest.raises(JsonPathError, match="invalid JSONPath"):
        compile_path(expression)


def test_an_expression_that_cannot_be_evaluated_on_the_document_is_a_jsonpath_error():
    # `sorted` over a list of mixed types raises TypeError inside the library.
    with pytest.raises(JsonPathError, match="cannot be evaluated"):
        find_first("$.`sorted`", [1, "a"])


def test_a_bug_in_the_parser_is_not_swallowed():
    compile_path.cache_clear()
    with (
        mock.patch.object(jsonpaths, "parse", side_effect=AttributeError("a bug")),
        pytest.raises(AttributeError, match="a bug"),
    ):
        compile_path("$.a")
    compile_path.cache_clear()


def test_a_bug_while_evaluating_is_not_swallowed():
    broken = mock.Mock()
    broken.find.side_effect = RuntimeError("a bug")
    with (
        mock.patch.object(jsonpaths, "compile_path", return_value=broken),
        pytest.raises(RuntimeError, match="a bug"),
    ):
        find_first("$.a", {"a": 1})


def test_a_non_string_expression_is_a_programming_error_not_a_jsonpath_error():
    with pytest.raises(TypeError):
        compile_path(["$.a"])
