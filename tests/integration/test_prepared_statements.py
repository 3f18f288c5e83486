"""The workers' hot statements are prepared once per connection, and keep working across
rollbacks and reconnects; behind a pooler they can be turned off."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from orchestra.prepared import PreparedStatement
from runs.executor import run_execute
from runs.models import TestRun
from runs.states import RunStatus
from tests.factories import make_scenario

SUM = PreparedStatement(
    "orchestra_test_sum", "SELECT %(a)s::integer + %(b)s::integer, %(a)s::integer, '100%%'"
)


def prepared_here() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {name for (name,) in cursor.fetchall()}


def add(a: int, b: int) -> tuple:
    with connection.cursor() as cursor:
        SUM.execute(cursor, {"a": a, "b": b})
        return cursor.fetchone()


def test_placeholders_become_numbered_parameters_each_name_once():
    assert SUM.parameters == ["a", "b"]
    assert SUM._prepare == (
        "PREPARE orchestra_test_sum AS SELECT $1::integer + $2::integer, $1::integer, '100%'"
    )


def test_a_statement_is_prepared_on_first_use_and_executed_by_name(transactional_db):
    assert "orchestra_test_sum" not in prepared_here()

    assert add(2, 3) == (5, 2, "100%")
    assert add(4, 5) == (9, 4, "100%")

    assert "orchestra_test_sum" in prepared_here()


def test_a_statement_prepared_in_a_rolled_back_transaction_stays_prepared(transactional_db):
    with pytest.raises(RuntimeError), transaction.atomic():
        add(1, 1)
        raise RuntimeError("roll back")

    assert add(1, 2) == (3, 1, "100%")


def test_a_new_connection_prepares_again(transactional_db):
    add(1, 1)
    connection.close()

    assert add(2, 2) == (4, 2, "100%")
    assert "orchestra_test_sum" in prepared_here()


def test_turned_off_the_statement_is_sent_whole(transactional_db, settings):
    settings.ORCHESTRA_DB_PREPARED_STATEMENTS = False
    connection.close()

    assert add(1, 2) == (3, 1, "100%")
    assert "orchestra_test_sum" not in prepared_here()


def test_a_worker_claims_and_finishes_runs_with_prepared_statements(transactional_db):
    scenario = make_scenario()
    runs = [
        TestRun.objects.create(scenario=scenario, definition=scenario.definition, context={})
        for _ in range(2)
    ]
    connection.close()

    for run in runs:
        run_execute(run_id=run.id, worker="test:1")

    assert {"orchestra_claim_run", "orchestra_finish_run_passed"} <= prepared_here()
    assert set(TestRun.objects.values_list("status", flat=True)) == {RunStatus.PASSED}
