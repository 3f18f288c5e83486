"""The sql plugin against the machine's real PostgreSQL and MariaDB, in databases of its own."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from plugins.base import PluginError, StepContext
from plugins.outbound import OutboundRefused
from plugins.registry import get_plugin
from plugins.resources import RunResources
from plugins.sql import SqlPlugin
from runs.services import scenario_save
from tests import sql_databases as databases
from tests.support import wait_for

BACKENDS = ["postgresql", "mariadb"]


@pytest.fixture(scope="module", autouse=True)
def own_databases():
    for backend in BACKENDS:
        databases.drop(backend)
        databases.create(backend)
    yield
    for backend in BACKENDS:
        databases.drop(backend)


@pytest.fixture(autouse=True)
def postgresql_opened():
    with override_settings(ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE=databases.OPEN_POSTGRESQL):
        yield


@pytest.fixture
def plugin() -> SqlPlugin:
    return get_plugin("sql")


def context(timeout: float = 10, **extra) -> StepContext:
    return StepContext(run_id=1, step_name="sql", timeout=timeout, **extra)


def users(backend: str) -> list[tuple]:
    return databases.query(backend, "SELECT id, email FROM users ORDER BY id")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_select_binds_its_params_and_a_hostile_value_stays_data(plugin, backend):
    dsn = databases.DSNS[backend]
    hostile = "'; DROP TABLE users; --"
    query = "SELECT id, email FROM users WHERE email = :email OR id = :id ORDER BY id"

    found = plugin.execute(
        {"dsn": dsn, "query": query, "params": {"email": hostile, "id": 0}}, context()
    )
    result = plugin.execute(
        {"dsn": dsn, "query": query, "params": {"email": "grace@example.test", "id": 1}}, context()
    )

    assert found.data == [] and found.fields["rows"] == 0
    assert users(backend) == databases.USERS  # the hostile value was bound, never run
    assert result.data == [
        {"id": 1, "email": "ada@example.test"},
        {"id": 2, "email": "grace@example.test"},
    ]
    expect = {"rows": 2, "columns": ["id", "email"], "json": {"$[1].email": "grace@example.test"}}
    assert all(assertion.passed for assertion in plugin.check(expect, result))
    assert plugin.capture("$[0].id", result) == 1
    assert result.request == {
        "dsn": dsn.replace("://", "+psycopg2://" if backend == "postgresql" else "+pymysql://"),
        "query": query,
        "params": {"email": "grace@example.test", "id": 1},
        "read_only": True,
    }
    assert result.response["columns"] == ["id", "email"] and result.response["row_count"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"rows": 3}, "2 rows, expected 3"),
        ({"rows": {"min": 3}}, "2 rows, expected {'min': 3}"),
        ({"columns": ["email", "id"]}, "columns are ['id', 'email'], expected ['email', 'id']"),
        ({"json": {"$[0].email": "nobody"}}, "$[0].email is 'ada@example.test'"),
    ],
)
def test_a_mismatch_is_a_failed_assertion(plugin, backend, expect, message):
    result = plugin.execute(
        {"dsn": databases.DSNS[backend], "query": "SELECT id, email FROM users ORDER BY id"},
        context(),
    )

    [assertion] = plugin.check(expect, result)
    assert not assertion.passed and message in assertion.message


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "query", ["INSERT INTO users VALUES (3, 'eve@example.test')", "DROP TABLE users"]
)
def test_read_only_by_default_the_database_refuses_a_write(plugin, backend, query):
    with pytest.raises(PluginError) as caught:
        plugin.execute({"dsn": databases.DSNS[backend], "query": query}, context())

    assert caught.value.retryable is False
    assert "read-only transaction" in str(caught.value).lower().replace("read only", "read-only")
    assert users(backend) == databases.USERS


@pytest.mark.parametrize("backend", BACKENDS)
def test_rollback_leaves_no_row_and_a_write_without_it_commits(plugin, backend):
    dsn = databases.DSNS[backend]
    insert = "INSERT INTO users VALUES (:id, :email)"
    params = {"id": 3, "email": "eve@example.test"}

    rolled_back = plugin.execute(
        {"dsn": dsn, "query": insert, "params": params, "read_only": False, "rollback": True},
        context(),
    )
    assert rolled_back.fields["rowcount"] == 1
    assert plugin.check({"rowcount": 1, "rows": 0}, rolled_back)[0].passed
    assert users(backend) == databases.USERS

    plugin.execute({"dsn": dsn, "query": insert, "params": params, "read_only": False}, context())
    assert users(backend) == [*databases.USERS, (3, "eve@example.test")]
    databases.query(backend, "DELETE FROM users WHERE id = 3")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreachable_server_is_a_retryable_error(plugin, backend):
    with socket.socket() as probe:  # a port with no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = databases.DSNS[backend].replace(":5432/", f":{port}/").replace(":3306/", f":{port}/")

    with pytest.raises(PluginError) as caught:
        plugin.execute({"dsn": dsn, "query": "SELECT 1"}, context())

    assert caught.value.retryable is True
    assert f"127.0.0.1:{port}" in str(caught.value)


@pytest.mark.parametrize(
    ("backend", "query"),
    [("postgresql", "SELECT pg_sleep(5)"), ("mariadb", "SELECT SLEEP(5) FROM users")],
)
def test_a_statement_past_the_deadline_is_a_retryable_error(plugin, backend, query):
    started = time.monotonic()
    with pytest.raises(PluginError) as caught:
        plugin.execute({"dsn": databases.DSNS[backend], "query": query}, context(timeout=1))

    assert caught.value.retryable is True
    assert time.monotonic() - started < 3


def test_a_stop_request_cancels_a_running_postgresql_statement(plugin):
    step = context(timeout=30)
    threading.Timer(0.3, step.stop.set).start()
    started = time.monotonic()

    with pytest.raises(PluginError) as caught:
        plugin.execute({"dsn": databases.DSNS["postgresql"], "query": "SELECT pg_sleep(20)"}, step)

    assert "stopped" in str(caught.value)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"query": "SELECT * FROM nowhere"}, "nowhere"),
        ({"query": "SELEKT 1"}, "syntax"),
        ({"query": "SELECT :missing"}, "A value is required for bind parameter 'missing'"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_statement_is_a_permanent_error_with_the_databases_message(
    plugin, backend, params, message
):
    with pytest.raises(PluginError) as caught:
        plugin.execute({"dsn": databases.DSNS[backend], **params}, context())

    assert caught.value.retryable is False
    assert message in str(caught.value)


def test_orchestras_own_database_is_refused_unless_opened(plugin):
    with (
        override_settings(ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE=[]),
        pytest.raises(OutboundRefused) as caught,
    ):
        plugin.execute({"dsn": databases.DSNS["postgresql"], "query": "SELECT 1"}, context())

    assert "refused: it is the database's address" in str(caught.value)


def test_a_password_never_appears_in_summaries_or_errors(plugin):
    dsn = databases.DSNS["postgresql"].replace("postgres@", "postgres:hunter2-secret@")

    result = plugin.execute({"dsn": dsn, "query": "SELECT 1 AS one"}, context())
    with pytest.raises(PluginError) as caught:
        plugin.execute({"dsn": dsn, "query": "SELECT * FROM nowhere"}, context())

    assert "hunter2" not in repr((result.request, result.response, str(caught.value)))
    assert "postgres:***@127.0.0.1" in result.request["dsn"]


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("sqlite:///tmp/x.db", "unsupported database"),
        ("postgresql:///orchestra?host=/var/run/postgresql", "names no host"),
        ("postgresql://db.test/x?hostaddr=127.0.0.1", "hostaddr not allowed"),
        ("mysql://db.test/x?unix_socket=/run/mysqld.sock", "unix_socket not allowed"),
        ("postgresql://u:pw@db.test:port/x", "not a database URL"),
        ("mysql://db.test:99999/x", "no valid port"),
    ],
)
def test_a_dsn_that_could_bypass_the_outbound_policy_is_refused(plugin, dsn, message):
    with pytest.raises(PluginError) as caught:
        plugin.execute({"dsn": dsn, "query": "SELECT 1"}, context())

    assert caught.value.retryable is False and message in str(caught.value)


@pytest.mark.parametrize(
    ("backend", "session_id", "alive"),
    [
        (
            "postgresql",
            "SELECT pg_backend_pid()",
            "SELECT pid FROM pg_stat_activity WHERE pid = {}",
        ),
        (
            "mariadb",
            "SELECT CONNECTION_ID()",
            "SELECT id FROM information_schema.processlist WHERE id = {}",
        ),
    ],
)
def test_a_session_is_reused_across_steps_and_closed_with_the_run(
    plugin, backend, session_id, alive
):
    resources = RunResources()
    dsn = databases.DSNS[backend]

    first = plugin.execute(
        {"dsn": dsn, "session": "db", "query": f"{session_id} AS id"}, context(resources=resources)
    )
    second = plugin.execute(
        {"session": "db", "query": f"{session_id} AS id"}, context(resources=resources)
    )

    server_id = first.data[0]["id"]
    assert second.data[0]["id"] == server_id and second.request["session"] == "db"
    assert databases.query(backend, alive.format(server_id))
    assert resources.close_all() == []
    wait_for(
        lambda: not databases.query(backend, alive.format(server_id)),
        timeout=10,
        message="the session's connection to end on the server",
    )
    with pytest.raises(PluginError, match="no resource named 'db' is open"):
        plugin.execute({"session": "db", "query": "SELECT 1"}, context(resources=resources))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_binary_column_is_stored_as_a_summary(plugin, backend):
    content = bytes(range(256))
    literal = "decode(:hex, 'hex')" if backend == "postgresql" else "UNHEX(:hex)"
    plugin.execute(
        {
            "dsn": databases.DSNS[backend],
            "query": f"INSERT INTO blobs VALUES (1, {literal})",
            "params": {"hex": content.hex()},
            "read_only": False,
        },
        context(),
    )

    result = plugin.execute(
        {"dsn": databases.DSNS[backend], "query": "SELECT content FROM blobs"}, context()
    )

    summary = result.data[0]["content"]
    assert summary["size"] == 256 and summary["content_type"] == "application/octet-stream"
    assert len(summary["sha256"]) == 64 and result.response["rows"][0]["content"] == summary
    databases.query(backend, "DELETE FROM blobs")


def test_values_are_stored_as_json_and_rows_past_max_rows_are_not_fetched(plugin):
    result = plugin.execute(
        {
            "dsn": databases.DSNS["postgresql"],
            "query": "SELECT n, n * 1.5::numeric AS half,"
            " 1.00000000000000000001::numeric AS precise,"
            " timestamptz '2026-01-02 03:04:05+00' AS at, '{\"a\": 1}'::jsonb AS doc"
            " FROM generate_series(1, 50) AS n",
            "max_rows": 10,
        },
        context(),
    )

    assert result.fields["rows"] == 10 and result.fields["truncated"] is True
    assert "max_rows=10" in result.response["truncated"]
    assert len(result.response["rows"]) == 10
    first = result.data[0]
    assert first["n"] == 1 and first["half"] == 1.5 and first["doc"] == {"a": 1}
    assert first["at"] == "2026-01-02T03:04:05+00:00"
    assert first["precise"] == "1.00000000000000000001"  # a float would change it
    [assertion] = plugin.check({"rows": 10}, result)
    assert not assertion.passed and "max_rows reached" in assertion.message


TEMPLATED_DSN = "{{ credentials.PG_DSN }}"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"dsn": TEMPLATED_DSN, "query": "SELECT 1", "read_only": "yes"}, "with.read_only"),
        ({"dsn": TEMPLATED_DSN, "query": "SELECT 1", "max_rows": 0}, "with.max_rows"),
        ({"dsn": TEMPLATED_DSN, "query": "SELECT 1", "params": {"x": {"y": 1}}}, "with.params.x"),
        ({"dsn": TEMPLATED_DSN, "query": "SELECT 1", "timeout": 3}, "with.timeout"),
        ({"dsn": TEMPLATED_DSN}, "with.query"),
        ({"dsn": "sqlite:///x", "query": "SELECT 1"}, "with.dsn"),
        ({"query": "SELECT 1"}, "with.dsn"),
    ],
)
def test_bad_parameters_are_refused_when_the_scenario_is_saved(block, field):
    step = {"name": "look", "plugin": "sql", "with": block}

    with pytest.raises(ValidationError) as caught:
        scenario_save(name="bad-sql", definition={"steps": [step]})

    problems = caught.value.message_dict["definition"]
    assert any(problem.startswith(f"steps[0] (look): {field}") for problem in problems), problems


@pytest.mark.django_db
def test_a_templated_dsn_and_an_expectation_block_are_accepted_on_save():
    step = {
        "name": "look",
        "plugin": "sql",
        "with": {"dsn": TEMPLATED_DSN, "query": "SELECT 1", "params": {"a": [1, 2]}},
        "expect": {"rows": {"min": 1, "max": 2}, "columns": ["a"], "json": {"$[0].a": 1}},
        "capture": {"a": "$[0].a"},
    }

    scenario_save(name="good-sql", definition={"steps": [step]})
