"""The plugin contract (plugins.base) and the JSONPath helpers every plugin shares."""

from __future__ import annotations

import pytest

from plugins.base import (
    Assertion,
    PluginError,
    PluginResult,
    ProtocolPlugin,
    StepContext,
    check_json_paths,
)
from plugins.jsonpaths import JsonPathError, compile_path, find_first

DOCUMENT = {
    "id": 7,
    "name": "Ada",
    "active": False,
    "manager": None,
    "tags": ["x", "y"],
    "items": [{"id": 1, "kind": "a"}, {"id": 2, "kind": "b"}],
    "deep": {"er": {"value": 0}},
}


class Minimal(ProtocolPlugin):
    name = "minimal"

    def execute(self, params, context):
        return PluginResult(data=params)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$.id", 7),
        ("$.name", "Ada"),
        ("$.active", False),
        ("$.manager", None),
        ("$.deep.er.value", 0),
        ("$.tags", ["x", "y"]),
        ("$.tags[1]", "y"),
        ("$.items[0]", {"id": 1, "kind": "a"}),
        ("$.items[*].id", 1),
        ("$.items[?(@.kind == 'b')].id", 2),
        ("$..value", 0),
        ("$", DOCUMENT),
        ("id", 7),
    ],
)
def test_find_first_returns_the_first_selected_value_with_its_type(expression, expected):
    assert find_first(expression, DOCUMENT) == expected


@pytest.mark.parametrize(
    ("expression", "document"),
    [("$.missing", DOCUMENT), ("$.tags[5]", DOCUMENT), ("$.id", None), ("$.id", "text")],
)
def test_find_first_selecting_nothing_is_an_error(expression, document):
    with pytest.raises(JsonPathError, match="matched nothing"):
        find_first(expression, document)


@pytest.mark.parametrize("expression", ["", "$.", "$.[[", "a b", "$.len(", "{{ x }}"])
def test_malformed_jsonpath_is_an_error_naming_it(expression):
    with pytest.raises(JsonPathError) as caught:
        compile_path(expression)

    assert f"invalid JSONPath {expression!r}" in str(caught.value)


def test_a_jsonpath_is_parsed_once():
    assert compile_path("$.items[0].id") is compile_path("$.items[0].id")


def test_check_json_paths_gives_one_assertion_per_path():
    assertions = check_json_paths({"$.id": 7, "$.name": "Eve", "$.nope": 1, "$.[[": 1}, DOCUMENT)

    assert [(a.name, a.passed, a.expected, a.actual) for a in assertions] == [
        ("json $.id", True, 7, 7),
        ("json $.name", False, "Eve", "Ada"),
        ("json $.nope", False, 1, None),
        ("json $.[[", False, 1, None),
    ]
    assert assertions[0].message == ""
    assert assertions[1].message == "$.name is 'Ada', expected 'Eve'"
    assert "matched nothing" in assertions[2].message
    assert "invalid JSONPath" in assertions[3].message


@pytest.mark.parametrize(
    ("expected", "passed"),
    [(7, True), ("7", False), (7.0, True), (None, False), ([1, 2], False)],
)
def test_check_json_paths_compares_values_with_their_types(expected, passed):
    assert check_json_paths({"$.id": expected}, DOCUMENT)[0].passed is passed


def test_null_is_a_value_not_a_missing_path():
    assertions = check_json_paths({"$.manager": None}, DOCUMENT)

    assert assertions[0].passed


def test_default_check_reads_json_expectations_from_the_data():
    result = PluginResult(data=DOCUMENT)

    assertions = Minimal().check({"json": {"$.id": 7, "$.name": "Eve"}}, result)

    assert [assertion.passed for assertion in assertions] == [True, False]
    assert Minimal().check({}, result) == []


def test_default_capture_is_a_jsonpath_over_the_data():
    plugin = Minimal()

    assert plugin.capture("$.items[1]", PluginResult(data=DOCUMENT)) == {"id": 2, "kind": "b"}
    with pytest.raises(JsonPathError):
        plugin.capture("$.absent", PluginResult(data=DOCUMENT))


def test_default_schemas_accept_any_params_and_no_expectations():
    assert ProtocolPlugin.params_schema == {"type": "object"}
    assert ProtocolPlugin.expect_schema == {"type": "object", "additionalProperties": False}


def test_a_plugin_must_implement_execute():
    class NoExecute(ProtocolPlugin):
        name = "broken"

    with pytest.raises(TypeError, match="execute"):
        NoExecute()


def test_plugin_error_is_permanent_unless_said_otherwise():
    assert PluginError("bad").retryable is False
    assert PluginError("later", retryable=True).retryable is True
    assert str(PluginError("bad params")) == "bad params"


def test_plugin_result_parts_are_not_shared_between_results():
    first, second = PluginResult(), PluginResult()
    first.fields["status"] = 200

    assert second.fields == {}
    assert second.request == {} and second.response == {}


def test_assertion_as_dict_is_what_is_stored():
    assertion = Assertion("status", False, 201, 500, "status is 500, expected 201")

    assert assertion.as_dict() == {
        "name": "status",
        "passed": False,
        "expected": 201,
        "actual": 500,
        "message": "status is 500, expected 201",
    }


def test_step_context_is_read_only():
    context = StepContext(run_id=1, step_name="s", timeout=5.0)

    with pytest.raises(AttributeError):
        context.timeout = 10  # type: ignore[misc]
