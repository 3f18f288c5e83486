"""/metrics costs the same on a big history as on an empty one: no scrape query reads the run
or step tables, and the planner's estimate does not grow when they fill."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orchestra.metrics import RUN_BUCKETS, STEP_BUCKETS, OrchestraCollector
from runs.models import Scenario, StepResult, TestRun
from tests.factories import delay_step

BIG_TABLES = {"runs_stepresult", "runs_testrun"}
ROWS = 200_000


def _scrape_queries() -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        list(OrchestraCollector().collect())
    return [query["sql"] for query in captured.captured_queries]


def _plan(sql: str) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
        (document,) = cursor.fetchone()
    return (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _relations(plan: dict) -> set[str]:
    return {node["Relation Name"] for node in _nodes(plan) if "Relation Name" in node}


def _copy_rows(table: str, template_id: int, rows: int, numbered: str | None = None) -> None:
    """``rows`` copies of one row made with the ORM (whatever columns the table has), through
    INSERT ... SELECT generate_series; ``numbered`` takes the series' value. The metric
    triggers are off meanwhile: one transaction updating one counter row 200k times builds a
    chain of row versions that each update walks, which workers, one step per transaction,
    never do."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = %s AND column_name <> 'id' ORDER BY ordinal_position",
            [table],
        )
        columns = [name for (name,) in cursor.fetchall()]
        values = ["g" if name == numbered else f"t.{name}" for name in columns]
        cursor.execute("SET session_replication_role = replica")
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)})"
            f" SELECT {', '.join(values)} FROM {table} t, generate_series(1, %s) g"
            " WHERE t.id = %s",
            [rows, template_id],
        )
        cursor.execute("RESET session_replication_role")
        cursor.execute(f"ANALYZE {table}")


def _costs() -> dict[str, float]:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE orchestra_metriccounter")
    return {sql: _plan(sql)["Total Cost"] for sql in _scrape_queries()}


@pytest.mark.django_db
def test_no_scrape_query_reads_the_run_or_step_tables_and_the_cost_stays_flat():
    for table in BIG_TABLES:
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {table}")
    empty = _costs()

    scenario = Scenario.objects.create(name="big", definition={"steps": [delay_step("a")]})
    now = timezone.now()
    run = TestRun.objects.create(
        scenario=scenario, definition=scenario.definition, status="PASSED", attempt=1,
        started_at=now, finished_at=now,
    )  # fmt: skip
    step = StepResult.objects.create(
        run=run, attempt=1, position=0, name="a", plugin="delay", status="PASSED",
        duration_ms=3.0,
    )  # fmt: skip
    _copy_rows("runs_testrun", run.id, ROWS)
    _copy_rows("runs_stepresult", step.id, ROWS, numbered="position")
    loaded = _costs()

    assert loaded.keys() == empty.keys()
    for sql, plan in ((sql, _plan(sql)) for sql in loaded):
        assert not _relations(plan) & BIG_TABLES, (sql, _relations(plan))
        assert not any(
            node["Node Type"] == "Seq Scan" and node.get("Relation Name") in BIG_TABLES
            for node in _nodes(plan)
        )
    for sql in loaded:
        # The counters table holds one row per series, bucket and shard: a few more rows
        # after the load, never one per step.
        assert loaded[sql] <= 2 * empty[sql] + 10, (sql, empty[sql], loaded[sql])


@pytest.mark.django_db
def test_the_counters_agree_with_the_tables_after_inserts_updates_and_deletes():
    scenario = Scenario.objects.create(name="counted", definition={"steps": [delay_step("a")]})
    runs = [
        TestRun.objects.create(scenario=scenario, definition=scenario.definition) for _ in range(5)
    ]
    TestRun.objects.filter(id__in=[r.id for r in runs[:3]]).update(status="IN_PROGRESS")
    TestRun.objects.filter(id=runs[0].id).update(status="PASSED", attempt=3)
    TestRun.objects.filter(id=runs[4].id).delete()
    for position, duration in enumerate([0.001, 4.0, 70_000.0, None]):
        StepResult.objects.create(
            run=runs[0], attempt=1, position=position, name=f"s{position}", plugin="delay",
            status="PASSED", duration_ms=duration,
        )  # fmt: skip

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in OrchestraCollector().collect()
        for sample in family.samples
    }

    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM runs_testrun GROUP BY status")
        actual = dict(cursor.fetchall())
    for status, count in actual.items():
        assert samples[("orchestra_runs", (("status", status),))] == count
    assert samples.get(("orchestra_runs", (("status", "QUEUED"),)), 0) == actual.get("QUEUED", 0)
    assert samples[("orchestra_step_duration_seconds_count", ())] == 3
    assert samples[("orchestra_step_duration_seconds_bucket", (("le", "0.005"),))] == 2
    assert samples[("orchestra_step_duration_seconds_bucket", (("le", "5"),))] == 2
    assert samples[("orchestra_step_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("orchestra_step_duration_seconds_sum", ())] == pytest.approx(70.004001)
    assert samples[("orchestra_retries_total", (("kind", "run_redelivery"),))] == 2


@pytest.mark.django_db
def test_the_triggers_bucket_bounds_are_the_collectors():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT proname, prosrc FROM pg_proc"
            " WHERE proname IN ('orchestra_count_step', 'orchestra_count_run')"
        )
        sources = dict(cursor.fetchall())
    assert "{" + ",".join(map(str, STEP_BUCKETS)) + "}" in sources["orchestra_count_step"]
    assert "{" + ",".join(map(str, RUN_BUCKETS)) + "}" in sources["orchestra_count_run"]
