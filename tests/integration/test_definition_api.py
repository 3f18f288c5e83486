"""A definition's problems reach the API as data: each under its field's path."""

from __future__ import annotations

import pytest

from runs.models import Scenario

AWKWARD_NAMES = [
    "get (v2): list",
    "a.b.c",
    "items[0]",
    'say "hi"',
    "it's: (odd) [1].y",
    "): with.url",
    "ünïcödé: 名前",
]


def _bad_method(name: str) -> dict:
    return {
        "steps": [
            {"name": "wait", "plugin": "delay", "with": {"seconds": 0}},
            {"name": name, "plugin": "http", "with": {"url": "http://x", "method": "FETCH"}},
        ]
    }


@pytest.mark.parametrize("name", AWKWARD_NAMES)
@pytest.mark.parametrize("url", ["/api/scenarios/", "/api/scenarios/validate/"])
def test_a_bad_field_of_a_step_with_any_name_is_reported_under_its_path(api_client, url, name):
    response = api_client.post(url, {"name": "s", "definition": _bad_method(name)}, format="json")

    assert response.status_code == 400, response.content
    fields = response.json()["error"]["fields"]
    assert list(fields) == ["definition.steps[1].with.method"]
    assert "'FETCH' is not one of" in fields["definition.steps[1].with.method"][0]
    assert not Scenario.objects.exists()


def test_keys_with_dots_and_quotes_are_reported_quoted(api_client):
    step = {
        "name": "fetch",
        "plugin": "http",
        "with": {"url": "http://x"},
        "expect": {"json": {"$.a[0]": "{{ missing }}", "$.[[": 1}},
    }

    response = api_client.post(
        "/api/scenarios/validate/", {"definition": {"steps": [step]}}, format="json"
    )

    fields = response.json()["error"]["fields"]
    assert response.status_code == 400
    assert set(fields) == {
        'definition.steps[0].expect.json["$.a[0]"]',
        'definition.steps[0].expect.json["$.[["]',
    }


@pytest.mark.parametrize(
    "definition",
    [
        {"steps": [None]},
        {"steps": [{"name": 1, "plugin": []}]},
        {"steps": [{"name": "x", "plugin": "http", "with": []}]},
        {"steps": [{"name": "x", "plugin": "http", "with": {"url": "http://x"}, "capture": []}]},
        {"steps": [{"name": "x", "plugin": "delay", "with": {"seconds": "{{"}}]},
        {"steps": [{"name": "x" * 1000, "plugin": "delay"}]},
        {"steps": "x", "finally": 3, "variables": [], "secrets": {}},
        {"steps": [{"name": "x", "plugin": "http", "expect": {"json": {"": 1}}}]},
        {"steps": [{"name": "x", "plugin": "http", "expect": {"json": []}}]},
        {"steps": [{"name": "x", "plugin": "http", "with": {"url": "http://x", "headers": 1}}]},
        {"steps": [{"name": "x", "plugin": "nope\u202e"}]},
    ],
)
def test_malformed_definitions_are_a_400_never_a_500(api_client, definition):
    response = api_client.post(
        "/api/scenarios/validate/", {"definition": definition}, format="json"
    )

    assert response.status_code == 400, response.content
    fields = response.json()["error"]["fields"]
    assert fields and all(key.startswith("definition") for key in fields)
