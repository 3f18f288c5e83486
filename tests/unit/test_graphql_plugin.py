"""The graphql plugin against a real graphql-core server: queries, mutations, GraphQL errors
(HTTP 200) as assertable results, an unreachable server and bad blocks refused on save."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from plugins.base import PluginError, StepContext
from plugins.graphql import GraphqlPlugin
from tests.protocols import GraphqlServer, refusal_on_save


@pytest.fixture(scope="module")
def server() -> Iterator[GraphqlServer]:
    running = GraphqlServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def plugin() -> GraphqlPlugin:
    return GraphqlPlugin()


def context(timeout: float = 5.0) -> StepContext:
    return StepContext(run_id=1, step_name="step", timeout=timeout)


def failed(assertions) -> list[str]:
    return [assertion.message for assertion in assertions if not assertion.passed]


def test_a_query_with_variables_and_operation_name_passes_and_captures(plugin, server):
    params = {
        "url": server.url,
        "query": "query Other { boom } query One($id: ID!) { user(id: $id) { id name } }",
        "variables": {"id": "1"},
        "operation_name": "One",
        "headers": {"X-Trace": "t-1"},
    }
    result = plugin.execute(params, context())

    assert result.data == {"data": {"user": {"id": "1", "name": "Ada"}}}
    assert result.fields["status"] == 200 and result.fields["errors"] is None
    expect = {"json": {"$.data.user.name": "Ada"}, "errors": False}
    assert failed(plugin.check(expect, result)) == []
    assert plugin.capture("$.data.user.id", result) == "1"
    sent = server.requests[-1]
    assert sent["operation"]["operationName"] == "One"
    assert sent["headers"]["X-Trace"] == "t-1"
    assert result.request["variables"] == {"id": "1"}
    assert result.response["body"] == '{"data": {"user": {"id": "1", "name": "Ada"}}}'


def test_a_mutation_changes_what_a_later_query_reads(plugin, server):
    mutation = 'mutation { rename(id: "2", name: "Hopper") { name } }'
    renamed = plugin.execute({"url": server.url, "query": mutation}, context())
    read = plugin.execute({"url": server.url, "query": '{ user(id: "2") { name } }'}, context())

    assert renamed.data["data"]["rename"]["name"] == "Hopper"
    assert failed(plugin.check({"json": {"$.data.user.name": "Hopper"}}, read)) == []


def test_a_graphql_error_arrives_with_http_200_and_is_assertable(plugin, server):
    result = plugin.execute({"url": server.url, "query": "{ boom whoami }"}, context())

    assert result.fields["status"] == 200
    assert result.fields["errors"] == ["boom: the resolver failed"]
    assert failed(plugin.check({"errors": True}, result)) == []
    assert failed(plugin.check({"errors": ["resolver failed"]}, result)) == []
    assert failed(plugin.check({}, result)) == []  # no errors expectation, status 200: passes
    assert failed(plugin.check({"errors": False}, result)) == [
        "the response has GraphQL errors: boom: the resolver failed"
    ]
    assert failed(plugin.check({"errors": ["permission"]}, result)) == [
        "no GraphQL error mentions 'permission'"
    ]


def test_a_failed_expectation_names_the_path_and_the_values(plugin, server):
    result = plugin.execute({"url": server.url, "query": '{ user(id: "1") { name } }'}, context())

    assert failed(plugin.check({"json": {"$.data.user.name": "Grace"}}, result)) == [
        "$.data.user.name is 'Ada', expected 'Grace'"
    ]
    assert failed(plugin.check({"errors": ["boom"]}, result)) == [
        "the response has no GraphQL errors (expected 'boom')"
    ]
    assert failed(plugin.check({"status": 201}, result)) == ["status is 200, expected 201"]


def test_a_query_the_schema_rejects_is_a_graphql_error(plugin, server):
    result = plugin.execute({"url": server.url, "query": "{ nope }"}, context())

    assert result.data["errors"][0]["message"] == "Cannot query field 'nope' on type 'Query'."
    assert failed(plugin.check({"errors": ["Cannot query field"]}, result)) == []


def test_an_unreachable_server_is_a_retryable_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PluginError) as caught:
        GraphqlPlugin().execute(
            {"url": f"http://127.0.0.1:{port}/graphql", "query": "{ boom }"}, context()
        )
    assert caught.value.retryable
    assert f"POST http://127.0.0.1:{port}/graphql failed" in str(caught.value)
    # The attempted request is kept for the step result.
    assert caught.value.request["url"] == f"http://127.0.0.1:{port}/graphql"
    assert caught.value.request["query"] == "{ boom }"


def test_the_outbound_policy_refuses_orchestras_own_broker():
    with pytest.raises(PluginError, match="message broker") as caught:
        GraphqlPlugin().execute({"url": "http://127.0.0.1:5672/", "query": "{ a }"}, context())
    assert not caught.value.retryable


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ({"with": {"url": "http://api.test/graphql"}}, "with.query: required field is missing"),
        (
            {"with": {"url": "http://api.test/graphql", "query": "{ a }", "variables": [1]}},
            "with.variables: [1] is not of type 'object'",
        ),
        (
            {"with": {"url": "ftp://api.test/graphql", "query": "{ a }"}},
            "with.url: 'ftp://api.test/graphql' does not match",
        ),
        (
            {"with": {"url": "http://api.test/g", "query": "{ a }"}, "expect": {"errors": "x"}},
            "expect.errors: 'x' is not valid",
        ),
    ],
)
def test_a_bad_block_is_refused_on_save_naming_the_step_and_field(block, problem):
    refusal = refusal_on_save({"name": "ask", "plugin": "graphql", **block})
    assert f"steps[0] (ask): {problem}" in refusal
