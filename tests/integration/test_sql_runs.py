"""The sql plugin in real runs: a DSN credential's password reaches no stored result and no
log line, and orchestra's own database stays closed to a step unless the operator opens it."""

from __future__ import annotations

import uuid

import pytest

from runs.models import TestRun
from runs.services import run_start
from tests import sql_databases as databases
from tests.factories import make_scenario
from tests.integration.test_secrets import every_row_as_text
from tests.support import wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module", autouse=True)
def own_database():
    databases.drop("postgresql")
    databases.create("postgresql")
    yield
    databases.drop("postgresql")


def finished(run: TestRun) -> TestRun:
    def done() -> bool:
        run.refresh_from_db()
        return run.is_finished

    wait_for(done, timeout=60, message=f"run {run.id} to finish")
    return run


def sql_step(name: str, query: str, params: dict | None = None, **extra) -> dict:
    block = {"dsn": "{{ credentials.PG_DSN }}", "query": query, "params": params or {}}
    return {"name": name, "plugin": "sql", "with": block, **extra}


def test_a_dsn_password_reaches_no_step_result_and_no_log(live_db, worker_factory):
    password = f"canary-{uuid.uuid4().hex}"
    dsn = databases.DSNS["postgresql"].replace("postgres@", f"postgres:{password}@")
    worker = worker_factory(
        "sql",
        env={
            "ORCHESTRA_CREDENTIAL_PG_DSN": dsn,  # trust authentication: any password is taken
            "ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE": ",".join(databases.OPEN_POSTGRESQL),
        },
    )
    checked = make_scenario(
        [
            sql_step(
                "look",
                "SELECT id, email FROM users WHERE email = :email",
                {"email": "ada@example.test"},
                expect={"rows": 1, "json": {"$[0].email": "ada@example.test"}},
                capture={"user_id": "$[0].id"},
            ),
            sql_step(
                "miscount",
                "SELECT id FROM users WHERE id >= :id",
                {"id": "{{ user_id }}"},
                expect={"rows": 5},
            ),
        ]
    )
    broken = make_scenario([sql_step("nowhere", "SELECT * FROM nowhere")])

    failed = finished(run_start(scenario=checked))
    errored = finished(run_start(scenario=broken))

    assert failed.status == "FAILED", failed.error
    look, miscount = failed.steps.order_by("position")
    assert look.status == "PASSED" and look.captures == {"user_id": 1}
    assert look.response["rows"] == [{"id": 1, "email": "ada@example.test"}]
    assert look.request["dsn"].startswith("postgresql+psycopg2://postgres:***@127.0.0.1:5432/")
    assert miscount.status == "FAILED" and "2 rows, expected 5" in miscount.error
    assert errored.status == "ERROR"
    nowhere = errored.steps.get()
    assert 'relation "nowhere" does not exist' in nowhere.error
    stored = [
        repr((step.request, step.response, step.error, step.assertions, step.tries))
        for step in (look, miscount, nowhere)
    ]
    for where, text in {
        "step results": "\n".join(stored),
        "database": every_row_as_text(),
        "worker log": worker.output(),
    }.items():
        assert password not in text, f"the DSN's password leaked into the {where}"


def test_a_step_against_orchestras_own_database_is_refused_by_default(live_db, worker_factory):
    worker_factory("sql-closed", env={"ORCHESTRA_CREDENTIAL_PG_DSN": databases.DSNS["postgresql"]})
    scenario = make_scenario([sql_step("peek", "SELECT 1")])

    run = finished(run_start(scenario=scenario))

    assert run.status == "ERROR"
    step = run.steps.get()
    assert step.status == "ERROR"
    assert "connection to 127.0.0.1:5432 refused: it is the database's address" in step.error
    assert [attempt["try"] for attempt in step.tries] == [1]
