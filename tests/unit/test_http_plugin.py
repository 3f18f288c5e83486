"""The http plugin, called directly against the local target server (examples/target.py)."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest
from django.test import override_settings
from jsonschema import Draft202012Validator

from plugins.base import PluginError, PluginResult, StepContext
from plugins.http import HttpPlugin


@pytest.fixture(scope="module")
def plugin():
    return HttpPlugin()


def context(timeout: float = 5.0) -> StepContext:
    return StepContext(run_id=1, step_name="step", timeout=timeout)


def execute(plugin: HttpPlugin, **params):
    return plugin.execute(params, context())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SUMMARY_CHARS = 1000  # ORCHESTRA_MAX_STORED_BODY_CHARS for the truncation test

# --- execute against the target server ---


def test_post_json_returns_status_document_and_summaries(plugin, target_url):
    result = execute(plugin, method="POST", url=f"{target_url}/users", json={"name": "Ada"})

    assert result.fields["status"] == 201
    assert result.data == {"id": result.data["id"], "name": "Ada"}
    assert isinstance(result.data["id"], int)
    assert result.fields["headers"]["content-type"] == "application/json"
    assert result.fields["elapsed_ms"] >= 0
    assert result.request == {
        "method": "POST",
        "url": f"{target_url}/users",
        "headers": {},
        "body": '{"name": "Ada"}',
    }
    assert result.response["status"] == 201
    assert result.response["body"] == f'{{"id": {result.data["id"]}, "name": "Ada"}}'


def test_a_captured_id_fetches_the_created_resource(plugin, target_url):
    created = execute(plugin, method="POST", url=f"{target_url}/users", json={"name": "Grace"})
    user_id = plugin.capture("$.id", created)

    fetched = execute(plugin, url=f"{target_url}/users/{user_id}")

    assert fetched.fields["status"] == 200
    assert fetched.data == {"id": user_id, "name": "Grace"}


def test_method_defaults_to_get(plugin, target_url):
    result = execute(plugin, url=f"{target_url}/health")

    assert result.request["method"] == "GET"
    assert result.data == {"ok": True}


def test_an_error_status_is_a_result_not_a_plugin_error(plugin, target_url):
    result = execute(plugin, url=f"{target_url}/users/999999")

    assert result.fields["status"] == 404
    assert result.data == {"error": "not found"}


def test_headers_and_query_are_sent(plugin, target_url):
    key = uuid.uuid4().hex
    result = execute(plugin, url=f"{target_url}/flaky/{key}", query={"fail": 0})
    assert (result.fields["status"], result.data) == (200, {"call": 1})

    echoed = execute(
        plugin, method="POST", url=f"{target_url}/echo", headers={"X-Trace": "t-1"}, body="hi"
    )

    assert echoed.data["headers"]["X-Trace"] == "t-1"
    assert echoed.data["body"] == "hi"
    assert echoed.request["headers"] == {"X-Trace": "t-1"}


def test_query_values_are_kept_in_the_request_summary(plugin, target_url):
    result = execute(plugin, url=f"{target_url}/flaky/{uuid.uuid4().hex}", query={"fail": 1})

    assert result.fields["status"] == 503
    assert result.request["query"] == {"fail": 1}


def test_a_json_body_is_sent_as_json(plugin, target_url):
    result = execute(plugin, method="POST", url=f"{target_url}/echo", json={"a": [1, "ü"]})

    assert result.data["body"] == {"a": [1, "ü"]}
    assert result.data["headers"]["Content-Type"] == "application/json"


def test_a_json_null_body_is_sent_not_dropped(plugin, target_url):
    result = execute(plugin, method="POST", url=f"{target_url}/echo", json=None)

    assert result.data["headers"]["Content-Length"] == "4"
    assert result.data["headers"]["Content-Type"] == "application/json"
    assert result.request["body"] == "null"


def test_a_content_type_given_by_the_step_is_kept_for_json(plugin, target_url):
    result = execute(
        plugin,
        method="POST",
        url=f"{target_url}/echo",
        json={"a": 1},
        headers={"content-type": "application/merge-patch+json"},
    )

    sent = {name.lower(): value for name, value in result.data["headers"].items()}
    assert sent["content-type"] == "application/merge-patch+json"
    assert result.data["body"] == {"a": 1}


def test_a_body_that_is_not_json_gives_no_document(plugin, target_url):
    result = execute(plugin, method="OPTIONS", url=f"{target_url}/health")  # target: 501 page

    assert result.fields["status"] == 501
    assert result.data is None
    assert result.response["body"]


@override_settings(ORCHESTRA_MAX_STORED_BODY_CHARS=SUMMARY_CHARS)
def test_long_bodies_are_truncated_in_summaries_but_checked_whole(plugin, target_url):
    body = "a" * (SUMMARY_CHARS * 2) + "MARKER"

    result = execute(plugin, method="POST", url=f"{target_url}/echo", body=body)

    assert result.request["body"] == "a" * SUMMARY_CHARS + "…"
    assert len(result.response["body"]) == SUMMARY_CHARS + 1
    assert "MARKER" not in result.response["body"]
    [assertion] = plugin.check({"body_contains": "MARKER"}, result)
    assert assertion.passed


def test_a_slow_answer_past_the_step_timeout_is_a_retryable_error(plugin, target_url):
    with pytest.raises(PluginError, match=r"timed out after 0\.2s") as caught:
        # The step's own timeout wins over a longer one in ``with``.
        plugin.execute({"url": f"{target_url}/slow?seconds=1", "timeout": 30}, context(timeout=0.2))

    assert caught.value.retryable
    assert caught.value.request["url"] == f"{target_url}/slow?seconds=1"


def test_a_refused_connection_keeps_the_attempted_request_in_the_step_redacted(
    transactional_db,
):
    from runs.executor import run_execute
    from runs.models import TestRun
    from tests.factories import make_scenario

    url = f"http://127.0.0.1:{closed_port()}/users"
    step = {
        "name": "create user",
        "plugin": "http",
        "with": {
            "method": "POST",
            "url": url,
            "headers": {"Authorization": "Bearer s3cret-token", "X-Trace": "t-1"},
            "json": {"name": "Ada"},
        },
    }
    scenario = make_scenario([step])
    run = TestRun.objects.create(scenario=scenario, definition=scenario.definition)

    run_execute(run_id=run.id, worker="test:1")

    stored = run.steps.get()
    assert stored.status == "ERROR" and f"POST {url} failed" in stored.error
    assert stored.request == {
        "method": "POST",
        "url": url,
        "headers": {"Authorization": "[REDACTED]", "X-Trace": "t-1"},
        "body": '{"name": "Ada"}',
    }


def test_a_with_timeout_shorter_than_the_step_timeout_applies(plugin, target_url):
    with pytest.raises(PluginError, match=r"timed out after 0\.2s"):
        plugin.execute({"url": f"{target_url}/slow?seconds=1", "timeout": 0.2}, context(5))


def test_connection_refused_is_a_retryable_error(plugin):
    url = f"http://127.0.0.1:{closed_port()}/health"

    with pytest.raises(PluginError, match=f"GET {url} failed") as caught:
        execute(plugin, url=url)

    assert caught.value.retryable
    assert caught.value.request == {"method": "GET", "url": url, "headers": {}}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"url": "http://"}, "invalid URL"),
        ({"url": "http://[::1"}, "invalid URL"),
        ({"url": "{target}/echo", "headers": {"X-Name": "Zoë"}}, "cannot build the request"),
        ({"url": "{target}/echo", "headers": {"X-A": "a\r\nX-B: b"}}, "not a valid request"),
        ({"url": "{target}/echo", "method": "POST", "json": float("nan")}, "cannot build"),
    ],
    ids=["no-host", "bad-ipv6", "non-ascii-header", "header-injection", "nan-in-json"],
)
def test_a_request_that_can_never_succeed_is_a_permanent_error(plugin, target_url, params, message):
    params = {**params, "url": params["url"].format(target=target_url)}

    with pytest.raises(PluginError, match=message) as caught:
        plugin.execute(params, context())

    assert caught.value.retryable is False


def test_endless_redirects_are_a_permanent_error():
    plugin = HttpPlugin()
    plugin._client = httpx.Client(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(302, headers={"Location": str(request.url)})
        )
    )

    with pytest.raises(PluginError, match="redirects") as caught:
        execute(plugin, url="http://loop.test/", follow_redirects=True)

    assert caught.value.retryable is False


def test_redirects_are_not_followed_unless_asked():
    plugin = HttpPlugin()
    plugin._client = httpx.Client(
        transport=httpx.MockTransport(
            lambda request: (
                httpx.Response(302, headers={"Location": "http://loop.test/b"})
                if request.url.path == "/a"
                else httpx.Response(200, json={"at": request.url.path})
            )
        )
    )

    assert execute(plugin, url="http://loop.test/a").fields["status"] == 302
    followed = execute(plugin, url="http://loop.test/a", follow_redirects=True)
    assert (followed.fields["status"], followed.data) == (200, {"at": "/b"})


# --- check, on results built by hand ---


def result(status=200, headers=None, data=None, body="", elapsed_ms=10.0) -> PluginResult:
    headers = headers or {}
    return PluginResult(
        data=data,
        fields={"status": status, "headers": headers, "elapsed_ms": elapsed_ms, "body": body},
        response={"status": status, "headers": headers, "body": body},
    )


@pytest.mark.parametrize(
    ("expected", "actual", "passed"),
    [(200, 200, True), (201, 200, False), ([200, 204], 204, True), ([200, 204], 500, False)],
)
def test_status_expectation_takes_a_code_or_a_list(plugin, expected, actual, passed):
    [assertion] = plugin.check({"status": expected}, result(status=actual))

    assert (assertion.name, assertion.passed, assertion.actual) == ("status", passed, actual)
    assert (assertion.message == "") is passed
    if not passed:
        assert assertion.message == f"status is {actual}, expected {expected}"


def test_header_expectations_ignore_the_case_of_names_but_not_of_values(plugin):
    checked = result(headers={"content-type": "application/json", "x-id": "A"})

    assertions = plugin.check(
        {"headers": {"Content-Type": "application/json", "X-Id": "a", "X-Missing": "1"}},
        checked,
    )

    assert [(a.name, a.passed, a.actual) for a in assertions] == [
        ("header Content-Type", True, "application/json"),
        ("header X-Id", False, "A"),
        ("header X-Missing", False, None),
    ]


def test_json_expectations_are_jsonpaths_over_the_document(plugin):
    checked = result(data={"id": 7, "name": "Ada"})

    assertions = plugin.check({"json": {"$.id": 7, "$.name": "Eve"}}, checked)

    assert [(a.name, a.passed) for a in assertions] == [("json $.id", True), ("json $.name", False)]


def test_json_expectations_on_a_body_that_is_not_json_fail_once(plugin):
    [assertion] = plugin.check({"json": {"$.id": 7, "$.name": "x"}}, result(data=None))

    assert (assertion.name, assertion.passed, assertion.message) == (
        "json",
        False,
        "response body is not JSON",
    )


@pytest.mark.parametrize(("needle", "passed"), [("world", True), ("World", False)])
def test_body_contains_is_a_case_sensitive_substring(plugin, needle, passed):
    [assertion] = plugin.check({"body_contains": needle}, result(body="hello world"))

    assert assertion.passed is passed


@pytest.mark.parametrize(("limit", "passed"), [(10.0, True), (50, True), (9.99, False)])
def test_response_time_is_an_upper_bound(plugin, limit, passed):
    [assertion] = plugin.check({"response_time_ms": limit}, result(elapsed_ms=10.0))

    assert (assertion.passed, assertion.actual) == (passed, 10.0)


def test_no_expectations_give_no_assertions(plugin):
    assert plugin.check({}, result(status=500)) == []


def test_every_expectation_kind_is_checked_in_one_call(plugin):
    checked = result(
        status=201, headers={"x-a": "1"}, data={"ok": True}, body='{"ok": true}', elapsed_ms=5
    )

    assertions = plugin.check(
        {
            "status": 201,
            "headers": {"X-A": "1"},
            "json": {"$.ok": True},
            "body_contains": "ok",
            "response_time_ms": 100,
        },
        checked,
    )

    assert [a.name for a in assertions] == [
        "status",
        "header X-A",
        "json $.ok",
        "body_contains",
        "response_time_ms",
    ]
    assert all(a.passed for a in assertions)


# --- schemas ---


@pytest.mark.parametrize(
    "params",
    [
        {"url": "http://t.test/"},
        {"url": "https://t.test/x", "method": "DELETE", "timeout": 0.5, "follow_redirects": True},
        {"url": "http://t.test/", "headers": {"A": "b"}, "query": {"q": 1, "f": True, "s": "x"}},
        {"url": "http://t.test/", "json": None},
        {"url": "http://t.test/", "body": ""},
    ],
)
def test_params_schema_accepts_valid_with_blocks(params):
    assert list(Draft202012Validator(HttpPlugin.params_schema).iter_errors(params)) == []


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"url": "t.test/"},
        {"url": "http://t.test/", "method": "get"},
        {"url": "http://t.test/", "json": {}, "body": ""},
        {"url": "http://t.test/", "timeout": 0},
        {"url": "http://t.test/", "query": {"q": [1]}},
        {"url": "http://t.test/", "extra": 1},
    ],
)
def test_params_schema_refuses_invalid_with_blocks(params):
    assert list(Draft202012Validator(HttpPlugin.params_schema).iter_errors(params)) != []
