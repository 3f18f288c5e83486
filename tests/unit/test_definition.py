"""validate_definition: every problem names the step and the field at fault."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from django.test import override_settings

from runs.definition import DefinitionError, DefinitionProblem, validate_definition

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def http(name: str = "call", **extra) -> dict:
    """A valid http step; ``extra`` replaces or adds top-level keys of the step."""
    return {"name": name, "plugin": "http", "with": {"url": "http://target.test/a"}, **extra}


def http_with(name: str, **params) -> dict:
    return http(name, **{"with": {"url": "http://target.test/a", **params}})


def delay(name: str = "wait", **extra) -> dict:
    return {"name": name, "plugin": "delay", "with": {"seconds": 0}, **extra}


def definition(*steps: dict, **extra) -> dict:
    return {"steps": list(steps), **extra}


def problems_of(value) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        validate_definition(value)
    return [str(problem) for problem in caught.value.problems]


# Each case: an invalid definition, the exact "label: field" path of the problem, and a piece of
# the message. The path is compared whole, so a step reported by index only, or a field reported
# at its parent object, fails the case.
INVALID = [
    # --- the shape of the whole definition ---
    ("not-an-object", [], "", "is not of type 'object'"),
    ("no-steps", {}, "steps", "required field is missing"),
    ("empty-steps", {"steps": []}, "steps", "should be non-empty"),
    ("steps-not-a-list", {"steps": {"a": 1}}, "steps", "is not of type 'array'"),
    ("unknown-top-level-key", definition(http(), foo=1), "foo", "unexpected field"),
    ("variables-not-object", definition(http(), variables=[1]), "variables", "not of type"),
    ("bad-variable-name", definition(http(), variables={"1x": 1}), "variables.1x", "valid name"),
    ("secrets-not-unique", definition(http(), secrets=["a", "a"]), "secrets", "non-unique"),
    ("finally-not-list", definition(http(), **{"finally": {}}), "finally", "not of type"),
    # --- the shape of one step ---
    ("step-not-object", definition("x"), "steps[0]", "is not of type 'object'"),
    (
        "step-without-name",
        definition({"plugin": "delay", "with": {"seconds": 0}}),
        "steps[0]: name",
        "required field is missing",
    ),
    (
        "step-name-not-string",
        definition({"name": 5, "plugin": "delay"}),
        "steps[0]: name",
        "is not of type 'string'",
    ),
    ("empty-step-name", definition(http("")), "steps[0] (): name", "should be non-empty"),
    (
        "step-without-plugin",
        definition({"name": "fetch user"}),
        "steps[0] (fetch user): plugin",
        "required field is missing",
    ),
    (
        "unknown-step-key",
        definition(http("fetch user", repeat=3)),
        "steps[0] (fetch user): repeat",
        "unexpected field (allowed: capture, continue_on_failure, expect",
    ),
    (
        "with-not-object",
        definition(http("fetch user", **{"with": ["GET"]})),
        "steps[0] (fetch user): with",
        "is not of type 'object'",
    ),
    (
        "zero-timeout",
        definition(http(), http("fetch user", timeout=0)),
        "steps[1] (fetch user): timeout",
        "less than or equal to the minimum of 0",
    ),
    (
        "timeout-as-text",
        definition(http("fetch user", timeout="5s")),
        "steps[0] (fetch user): timeout",
        "is not of type 'number'",
    ),
    (
        "zero-retry-attempts",
        definition(http("poll", retry={"attempts": 0})),
        "steps[0] (poll): retry.attempts",
        "less than the minimum of 1",
    ),
    (
        "retry-backoff-shrinking",
        definition(http("poll", retry={"backoff": 0.5})),
        "steps[0] (poll): retry.backoff",
        "less than the minimum of 1",
    ),
    (
        "retry-interval-too-long",
        definition(http("poll", retry={"interval": 3600})),
        "steps[0] (poll): retry.interval",
        "greater than the maximum",
    ),
    (
        "unknown-retry-key",
        definition(http("poll", retry={"tries": 3})),
        "steps[0] (poll): retry.tries",
        "unexpected field (allowed: attempts, backoff, interval)",
    ),
    (
        "continue-on-failure-as-text",
        definition(http("poll", continue_on_failure="yes")),
        "steps[0] (poll): continue_on_failure",
        "is not of type 'boolean'",
    ),
    (
        "capture-name-not-identifier",
        definition(http("create user", capture={"user-id": "$.id"})),
        "steps[0] (create user): capture.user-id",
        "is not a valid name",
    ),
    (
        "capture-expression-empty",
        definition(http("create user", capture={"user_id": ""})),
        "steps[0] (create user): capture.user_id",
        "should be non-empty",
    ),
    (
        "finally-step-shape",
        definition(http(), **{"finally": [delay("clean up", timeout=-1)]}),
        "finally[0] (clean up): timeout",
        "minimum of 0",
    ),
    # --- the plugin's own schemas ---
    (
        "unknown-plugin",
        definition(http(), {"name": "query db", "plugin": "soap"}),
        "steps[1] (query db): plugin",
        "unknown plugin 'soap' (installed: ",
    ),
    (
        "http-method-unknown",
        definition(http("create user"), http_with("fetch user", method="FETCH")),
        "steps[1] (fetch user): with.method",
        "'FETCH' is not one of",
    ),
    (
        "http-without-url",
        definition({"name": "fetch user", "plugin": "http", "with": {"method": "GET"}}),
        "steps[0] (fetch user): with.url",
        "required field is missing",
    ),
    (
        "http-without-with-block",
        definition({"name": "fetch user", "plugin": "http"}),
        "steps[0] (fetch user): with.url",
        "required field is missing",
    ),
    (
        "http-url-not-http",
        definition(http("fetch user", **{"with": {"url": "ftp://target.test/a"}})),
        "steps[0] (fetch user): with.url",
        "does not match '^https?://'",
    ),
    (
        "http-unknown-param",
        definition(http_with("fetch user", verb="GET")),
        "steps[0] (fetch user): with.verb",
        "unexpected field (allowed: body, follow_redirects, headers, json, method",
    ),
    (
        "http-header-not-text",
        definition(http_with("fetch user", headers={"X-Retries": 3})),
        "steps[0] (fetch user): with.headers.X-Retries",
        "3 is not of type 'string'",
    ),
    (
        "http-query-object-value",
        definition(http_with("fetch user", query={"page": {"n": 1}})),
        "steps[0] (fetch user): with.query.page",
        "is not of type",
    ),
    (
        "http-json-and-body",
        definition(http_with("create user", json={"a": 1}, body="a=1")),
        "steps[0] (create user): with",
        "json and body cannot be used together",
    ),
    (
        "http-timeout-negative",
        definition(http_with("fetch user", timeout=-1)),
        "steps[0] (fetch user): with.timeout",
        "less than or equal to the minimum of 0",
    ),
    (
        "http-status-out-of-range",
        definition(http("fetch user", expect={"status": 99})),
        "steps[0] (fetch user): expect.status",
        "99 is less than the minimum of 100",
    ),
    (
        "http-status-list-item-out-of-range",
        definition(http("fetch user", expect={"status": [200, 600]})),
        "steps[0] (fetch user): expect.status[1]",
        "600 is greater than the maximum of 599",
    ),
    (
        "http-status-empty-list",
        definition(http("fetch user", expect={"status": []})),
        "steps[0] (fetch user): expect.status",
        "should be non-empty",
    ),
    (
        "http-unknown-expectation",
        definition(http("fetch user", expect={"code": 200})),
        "steps[0] (fetch user): expect.code",
        "unexpected field (allowed: body_contains, headers, json, response_time_ms, status)",
    ),
    (
        "http-expect-json-not-object",
        definition(http("fetch user", expect={"json": ["$.id"]})),
        "steps[0] (fetch user): expect.json",
        "is not of type 'object'",
    ),
    (
        "http-expect-json-bad-path",
        definition(http("fetch user", expect={"json": {"$.[[": 1}})),
        'steps[0] (fetch user): expect.json["$.[["]',
        "invalid JSONPath",
    ),
    (
        "delay-without-seconds",
        definition(delay("wait", **{"with": {}})),
        "steps[0] (wait): with.seconds",
        "required field is missing",
    ),
    (
        "delay-negative",
        definition(delay("wait", **{"with": {"seconds": -1}})),
        "steps[0] (wait): with.seconds",
        "-1 is less than the minimum of 0",
    ),
    (
        "delay-takes-no-expectations",
        definition(delay("wait", expect={"status": 200})),
        "steps[0] (wait): expect.status",
        "unexpected field (none are allowed here)",
    ),
    (
        "plugin-schema-in-finally",
        definition(http(), **{"finally": [http_with("delete user", method="REMOVE")]}),
        "finally[0] (delete user): with.method",
        "'REMOVE' is not one of",
    ),
    # --- templates ---
    (
        "undefined-name-in-url",
        definition(http("fetch user", **{"with": {"url": "{{ base }}/users"}})),
        "steps[0] (fetch user): with.url",
        "unknown name(s) ['base']",
    ),
    (
        "undefined-name-deep-in-json",
        definition(http_with("create user", json={"user": {"tags": ["a", "{{ tag }}"]}})),
        "steps[0] (create user): with.json.user.tags[1]",
        "unknown name(s) ['tag']",
    ),
    (
        "undefined-name-in-header",
        definition(http_with("fetch user", headers={"Authorization": "Bearer {{ tokn }}"})),
        "steps[0] (fetch user): with.headers.Authorization",
        "unknown name(s) ['tokn'] in a template",
    ),
    (
        "undefined-name-in-expectation",
        definition(http("fetch user", expect={"json": {"$.name": "{{ nme }}"}})),
        'steps[0] (fetch user): expect.json["$.name"]',
        "unknown name(s) ['nme']",
    ),
    (
        "template-syntax-error",
        definition(http_with("fetch user", query={"q": "{{ 1 + }}"})),
        "steps[0] (fetch user): with.query.q",
        "template error",
    ),
    (
        "unknown-filter",
        definition(http_with("fetch user", query={"q": "{{ payload | shout }}"})),
        "steps[0] (fetch user): with.query.q",
        "No filter named 'shout'",
    ),
    (
        "capture-used-before-its-step",
        definition(
            http("fetch user", **{"with": {"url": "http://target.test/users/{{ user_id }}"}}),
            http("create user", capture={"user_id": "$.id"}),
        ),
        "steps[0] (fetch user): with.url",
        "unknown name(s) ['user_id']",
    ),
    (
        "capture-used-by-its-own-step",
        definition(
            http(
                "create user",
                **{"with": {"url": "http://target.test/users/{{ user_id }}"}},
                capture={"user_id": "$.id"},
            )
        ),
        "steps[0] (create user): with.url",
        "unknown name(s) ['user_id']",
    ),
    (
        "variable-uses-later-variable",
        definition(http(), variables={"a": "{{ b }}", "b": "1"}),
        "variables.a",
        "unknown name(s) ['b']",
    ),
    (
        "variable-uses-a-capture",
        definition(http(capture={"user_id": "$.id"}), variables={"a": "{{ user_id }}"}),
        "variables.a",
        "unknown name(s) ['user_id']",
    ),
    (
        "variable-template-deep",
        definition(http(), variables={"user": {"names": ["{{ nobody }}"]}}),
        "variables.user.names[0]",
        "unknown name(s) ['nobody']",
    ),
    (
        "undefined-name-in-finally",
        definition(http(), **{"finally": [http_with("delete user", query={"id": "{{ uid }}"})]}),
        "finally[0] (delete user): with.query.id",
        "unknown name(s) ['uid']",
    ),
    # --- captures ---
    (
        "capture-bad-jsonpath",
        definition(http(), http("create user", capture={"user_id": "$.[["})),
        "steps[1] (create user): capture.user_id",
        "invalid JSONPath '$.[['",
    ),
    (
        "capture-is-a-template",
        definition(http("create user", capture={"user_id": "{{ payload.path }}"})),
        "steps[0] (create user): capture.user_id",
        "invalid JSONPath",
    ),
    # --- across steps ---
    (
        "duplicate-step-names",
        definition(http("fetch user"), delay(), http("fetch user")),
        "steps[2] (fetch user): name",
        "step names must be unique; also steps[0]",
    ),
    (
        "finally-reuses-step-name",
        definition(http("fetch user"), **{"finally": [http("fetch user")]}),
        "finally[0] (fetch user): name",
        "step names must be unique; also steps[0]",
    ),
    (
        "secret-names-no-variable",
        definition(http(), variables={"token": "x"}, secrets=["token", "pasword"]),
        "secrets[1]",
        "'pasword' is not a variable",
    ),
]


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_definition_is_rejected_naming_the_step_and_field(value, path, message):
    problems = [
        problem
        for problem in _problem_objects(value)
        if problem.label == path and message in problem.message
    ]

    assert problems, f"no problem at {path!r} containing {message!r} in {problems_of(value)}"


def _problem_objects(value) -> list[DefinitionProblem]:
    with pytest.raises(DefinitionError) as caught:
        validate_definition(value)
    return caught.value.problems


def test_error_text_reads_label_then_field_then_message():
    value = definition(http("create user"), http_with("fetch user", method="FETCH"))

    with pytest.raises(DefinitionError) as caught:
        validate_definition(value)

    assert str(caught.value).startswith("steps[1] (fetch user): with.method: 'FETCH' is not one of")


def test_every_problem_is_reported_not_only_the_first():
    value = definition(
        http("a", timeout=0),
        http_with("b", method="FETCH"),
        http("c", capture={"x": "$.[["}),
        {"name": "d", "plugin": "soap"},
    )

    paths = {problem.label for problem in _problem_objects(value)}

    assert paths == {
        "steps[0] (a): timeout",
        "steps[1] (b): with.method",
        "steps[2] (c): capture.x",
        "steps[3] (d): plugin",
    }


def test_step_with_a_broken_shape_is_not_also_reported_by_its_plugin():
    value = definition(http("fetch user", timeout=0, **{"with": {"method": "FETCH"}}))

    paths = [problem.label for problem in _problem_objects(value)]

    assert paths == ["steps[0] (fetch user): timeout"]


def test_problems_group_by_field_for_forms_and_api():
    value = definition(http("a", retry={"attempts": 0, "backoff": 0}), foo=1)

    with pytest.raises(DefinitionError) as caught:
        validate_definition(value)

    grouped = caught.value.as_dict()
    assert set(grouped) == {"foo", "steps[0].retry.attempts", "steps[0].retry.backoff"}
    assert all(isinstance(messages, list) and messages for messages in grouped.values())


def test_a_problem_without_a_path_is_grouped_under_definition():
    with pytest.raises(DefinitionError) as caught:
        validate_definition("steps")

    assert list(caught.value.as_dict()) == ["definition"]


@override_settings(ORCHESTRA_MAX_STEPS=3)
def test_too_many_steps_counting_finally_are_rejected():
    value = definition(delay("a"), delay("b"), **{"finally": [delay("c"), delay("d")]})

    assert problems_of(value) == ["steps: at most 3 steps allowed"]


@override_settings(ORCHESTRA_MAX_STEPS=3)
def test_exactly_the_maximum_number_of_steps_is_accepted():
    validate_definition(definition(delay("a"), delay("b"), **{"finally": [delay("c")]}))


# Valid definitions: each would be refused by a validator that is too strict.
VALID = [
    ("minimal", definition(delay())),
    (
        "capture-used-by-a-later-step",
        definition(
            http("create user", capture={"user_id": "$.id"}),
            http("fetch user", **{"with": {"url": "http://target.test/users/{{ user_id }}"}}),
        ),
    ),
    (
        "launch-context-names",
        definition(
            http_with(
                "fetch user",
                query={
                    "name": "{{ payload.name }}",
                    "record": "{{ queueRecordId }}",
                    "start": "{{ queueStartCount }}",
                    "run": "{{ run.id }}",
                },
            )
        ),
    ),
    (
        "variable-uses-an-earlier-variable",
        definition(
            http("fetch user", **{"with": {"url": "{{ users_url }}/1"}}),
            variables={"base_url": "http://target.test", "users_url": "{{ base_url }}/users"},
        ),
    ),
    (
        "templated-values-whose-type-is-known-only-when-rendered",
        definition(
            http(
                "fetch user",
                **{"with": {"url": "{{ base_url }}/users", "method": "{{ verb }}"}},
                expect={"status": "{{ code }}", "response_time_ms": "{{ limit }}"},
            ),
            variables={"base_url": "http://t.test", "verb": "GET", "code": 200, "limit": 50},
        ),
    ),
    (
        "jinja-globals-and-loop-variables",
        definition(
            http_with(
                "fetch user",
                query={"ids": "{% for i in range(3) %}{{ i }},{% endfor %}"},
                headers={"X-Set": "{% set k = 'v' %}{{ k }}"},
            )
        ),
    ),
    (
        "finally-may-use-any-capture-and-earlier-finally-captures",
        definition(
            http("create user", capture={"user_id": "$.id"}),
            **{
                "finally": [
                    http(
                        "delete user",
                        **{"with": {"url": "http://t.test/users/{{ user_id }}"}},
                        capture={"deleted": "$.ok"},
                    ),
                    http("check", **{"with": {"url": "http://t.test/{{ deleted }}"}}),
                ]
            },
        ),
    ),
    (
        "every-step-option",
        definition(
            http(
                "poll",
                timeout=2.5,
                retry={"attempts": 5, "interval": 0.1, "backoff": 2},
                continue_on_failure=True,
                expect={
                    "status": [200, 201],
                    "headers": {"content-type": "application/json"},
                    "json": {"$.items[0].id": 1, "$..name": "x"},
                    "body_contains": "ok",
                    "response_time_ms": 500,
                },
                capture={"first": "$.items[0]", "all_ids": "$.items[*].id"},
            ),
            name="poll",
            description="d",
            variables={"token": "s3cret"},
            secrets=["token"],
        ),
    ),
    ("http-null-json-body", definition(http_with("send", method="POST", json=None))),
]


@pytest.mark.parametrize("value", [case[1] for case in VALID], ids=[case[0] for case in VALID])
def test_valid_definition_is_accepted(value):
    validate_definition(copy.deepcopy(value))


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.name)
def test_example_scenarios_are_valid(path):
    validate_definition(yaml.safe_load(path.read_text()))


def test_validation_does_not_change_the_definition():
    value = definition(
        http("create user", capture={"user_id": "$.id"}), variables={"a": "{{ payload }}"}
    )
    before = copy.deepcopy(value)

    validate_definition(value)

    assert value == before


# --- problems are data ---------------------------------------------------------------------------

AWKWARD_NAMES = ["get (v2): list", "a.b", "x[0]", 'say "hi"', "it's: (odd) [1].y", "): with.method"]


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_a_problem_keeps_its_path_apart_from_the_step_name(name):
    value = definition(http("first"), http_with(name, method="FETCH"))

    (problem,) = _problem_objects(value)

    assert problem.path == ("steps", 1, "with", "method")
    assert problem.field == "steps[1].with.method"
    assert problem.step == name
    assert problem.label == f"steps[1] ({name}): with.method"


def test_keys_that_hold_separators_are_quoted_in_the_field_path():
    value = definition(
        http("fetch", expect={"json": {"$.a[0]": "{{ nope }}", 'say "x"': "{{ nope }}"}})
    )

    fields = {problem.field for problem in _problem_objects(value)}

    assert 'steps[0].expect.json["$.a[0]"]' in fields
    assert 'steps[0].expect.json["say \\"x\\""]' in fields


def test_the_grouped_problems_are_keyed_by_path_only():
    value = definition(http_with("get (v2): list", method="FETCH"))

    with pytest.raises(DefinitionError) as caught:
        validate_definition(value)

    assert caught.value.as_dict() == {"steps[0].with.method": [caught.value.problems[0].message]}


def test_an_unknown_name_suggests_the_closest_defined_one():
    value = definition(
        {"name": "fetch user", "plugin": "delay", "with": {"seconds": "{{ wiat }}"}},
        variables={"wait": 0, "base_url": "http://x"},
    )

    (problem,) = problems_of(value)

    assert problem.endswith("unknown name(s) ['wiat'] in a template — did you mean 'wait'?")
