"""Prometheus metrics, computed from PostgreSQL at scrape time.

The database is the one place every worker on every host writes to, so the figures are the
whole system's, not one process's. Histograms are cumulative over all finished runs and steps.
"""

from __future__ import annotations

from django.db import connection
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _rows(sql: str, params=()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _histogram(
    name: str,
    documentation: str,
    table: str,
    expression: str,
    where: str,
    buckets: tuple[float, ...],
) -> HistogramMetricFamily:
    columns = ", ".join(f"count(*) FILTER (WHERE {expression} <= %s)" for _ in buckets)
    sql = f"SELECT {columns}, count(*), coalesce(sum({expression}), 0) FROM {table} WHERE {where}"
    row = _rows(sql, buckets)[0]
    cumulative = [(str(bound), row[i]) for i, bound in enumerate(buckets)]
    cumulative.append(("+Inf", row[len(buckets)]))
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], cumulative, float(row[len(buckets) + 1]))
    return family


class OrchestraCollector:
    """Collects orchestra's metrics on every scrape."""

    def collect(self):
        runs = GaugeMetricFamily("orchestra_runs", "Test runs by status.", labels=["status"])
        for status, count in _rows("SELECT status, count(*) FROM runs_testrun GROUP BY status"):
            runs.add_metric([status], count)
        yield runs

        yield _histogram(
            "orchestra_run_duration_seconds",
            "Run duration from start to finish.",
            "runs_testrun",
            "extract(epoch FROM finished_at - started_at)",
            "finished_at IS NOT NULL AND started_at IS NOT NULL",
            RUN_BUCKETS,
        )
        yield _histogram(
            "orchestra_step_duration_seconds",
            "Step duration, every try included.",
            "runs_stepresult",
            "duration_ms / 1000.0",
            "duration_ms IS NOT NULL",
            STEP_BUCKETS,
        )

        depth = GaugeMetricFamily(
            "orchestra_queue_depth",
            "Waiting and running records per lane.",
            labels=["scenario", "status"],
        )
        oldest = GaugeMetricFamily(
            "orchestra_queue_oldest_waiting_seconds",
            "Age of the oldest waiting record per lane.",
            labels=["scenario"],
        )
        for scenario, status, count, age in _rows(
            """
            SELECT s.name, q.status, count(*),
                   extract(epoch FROM now() - min(q.created_at))
              FROM queue_catalog_queuerecord q JOIN runs_scenario s ON s.id = q.scenario_id
             WHERE q.status IN ('SCHEDULED', 'RUNNING')
             GROUP BY s.name, q.status
            """
        ):
            depth.add_metric([scenario, status], count)
            if status == "SCHEDULED":
                oldest.add_metric([scenario], float(age))
        yield depth
        yield oldest

        records = GaugeMetricFamily(
            "orchestra_queue_records", "Queue records by status.", labels=["status"]
        )
        for status, count in _rows(
            "SELECT status, count(*) FROM queue_catalog_queuerecord GROUP BY status"
        ):
            records.add_metric([status], count)
        yield records

        ((queue_reruns, delivery_retries),) = _rows(
            """
            SELECT (SELECT coalesce(sum(greatest(start_count - 1, 0)), 0)
                      FROM queue_catalog_queuerecord),
                   (SELECT coalesce(sum(greatest(attempt - 1, 0)), 0) FROM runs_testrun)
            """
        )
        retries = CounterMetricFamily(
            "orchestra_retries",
            "Re-runs of queue records and redeliveries of runs.",
            labels=["kind"],
        )
        retries.add_metric(["queue_rerun"], float(queue_reruns))
        retries.add_metric(["run_redelivery"], float(delivery_retries))
        yield retries

        dead = GaugeMetricFamily(
            "orchestra_dead_letters",
            "Messages in the dead-letter store by status.",
            labels=["status"],
        )
        for status, count in _rows("SELECT status, count(*) FROM runs_deadletter GROUP BY status"):
            dead.add_metric([status], count)
        yield dead
