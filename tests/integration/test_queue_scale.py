"""Dispatch cost must not grow with queue depth: the lane queries use indexes at 100,000 records."""

from __future__ import annotations

import pytest
from django.db import connection

from queue_catalog.services import _ACTIVE_LANE_HEADS_SQL
from queue_catalog.states import _start_lane_head_statement
from tests.factories import make_scenario

pytestmark = pytest.mark.usefixtures("transactional_db")


def explain(sql: str, params=()) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.fixture
def deep_queue():
    scenarios = [make_scenario() for _ in range(100)]
    ids = [s.id for s in scenarios]
    with connection.cursor() as cursor:
        # 100,000 waiting records plus as many finished ones, spread over 100 lanes.
        cursor.execute(
            """
            INSERT INTO queue_catalog_queuerecord
                (scenario_id, payload, context, status, process_code, start_count, errors,
                 priority, max_attempts, created_at)
            SELECT (%s::bigint[])[1 + n %% 100], '{}'::jsonb, '{}'::jsonb,
                   CASE WHEN n <= 100000 THEN 'SCHEDULED' ELSE 'DONE' END,
                   '', 0, '[]'::jsonb, 'normal', 5, now()
              FROM generate_series(1, 200000) AS n
            """,
            [ids],
        )
        cursor.execute("ANALYZE queue_catalog_queuerecord")
    return ids


def test_starting_the_head_of_a_lane_is_an_index_lookup_at_100000_records(deep_queue):
    statement, run_params = _start_lane_head_statement()
    plan = explain(statement.sql, {"scenario_id": deep_queue[0], **run_params})
    assert "queue_active_lane_idx" in plan, plan
    assert "Seq Scan on queue_catalog_queuerecord" not in plan and "Sort" not in plan, plan


def test_finding_due_lanes_skips_through_the_index_at_100000_records(deep_queue):
    plan = explain(_ACTIVE_LANE_HEADS_SQL)
    assert "Seq Scan on queue_catalog_queuerecord" not in plan, plan
    assert "queue_active_lane_idx" in plan, plan
    # Only the index of active records: the foreign key's index holds every finished record too,
    # and skipping from lane to lane through it would walk the queue's whole history.
    assert "queuerecord_scenario_id" not in plan, plan
