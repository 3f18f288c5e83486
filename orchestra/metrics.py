"""Prometheus metrics, read from PostgreSQL at scrape time.

The database is the one place every worker on every host writes to, so the figures are the
whole system's, not one process's. A scrape never reads the run and step tables themselves:
triggers (migration ``orchestra.0003_metric_counters``) add to ``MetricCounter`` rows as runs,
steps, queue records and dead letters are written, and a scrape sums those rows, a few hundred
at most, whatever the history holds. The queue's depth is read from the active records only,
through the partial index of active lanes.

What each series means:

- ``orchestra_runs{status}``, ``orchestra_queue_records{status}``,
  ``orchestra_dead_letters{status}``: rows now in each status (deletes count down).
- ``orchestra_run_duration_seconds``, ``orchestra_step_duration_seconds``: every run and step
  that finished since the metrics were installed (rows there then were counted once); deleting
  rows does not take them out, as a Prometheus histogram must only grow.
- ``orchestra_retries_total{kind}``: re-runs of queue records and redeliveries of runs, in
  the same sense.
- ``orchestra_throttled_waits_total{rate_key}``, ``orchestra_pushbacks_total{rate_key}`` (429s,
  and 503s with Retry-After, received), ``orchestra_throttle_wait_seconds_total{rate_key}``: the
  counters the throttle keeps on each rate key's row (one row per key, read in one statement);
  deleting a key starts its series again from 0, which Prometheus reads as a counter reset.
- ``orchestra_rate_key_blocked{rate_key}``: 1 while a target's Retry-After blocks the key, on
  the database's clock.
"""

from __future__ import annotations

from collections import defaultdict

from django.db import connection
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

# Bucket upper bounds. The triggers hold a copy: changing them needs a migration that
# recreates the triggers (tests/integration/test_metrics_cost.py compares the two).
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

COUNTERS_SQL = """
SELECT name, label, sum(count), sum(total)
  FROM orchestra_metriccounter
 GROUP BY name, label
"""
QUEUE_SQL = """
SELECT s.name, q.status, count(*), extract(epoch FROM now() - min(q.created_at))
  FROM queue_catalog_queuerecord q JOIN runs_scenario s ON s.id = q.scenario_id
 WHERE q.status IN ('SCHEDULED', 'RUNNING')
 GROUP BY s.name, q.status
"""

RATE_KEYS_SQL = """
SELECT name, throttled_waits_total, pushbacks_total, wait_seconds_total,
       coalesce(blocked_until > now(), false)
  FROM targets_ratekey
"""


def _rows(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def _histogram(
    name: str, documentation: str, by_bound: dict[str, tuple[int, float]], buckets
) -> HistogramMetricFamily:
    """``by_bound`` holds each bucket's own count and sum, keyed by its upper bound as text."""
    bounds = {(float("inf") if label == "+Inf" else float(label)): value for label, value in
              by_bound.items()}  # fmt: skip
    cumulative = [
        (str(bound), sum(count for upper, (count, _) in bounds.items() if upper <= bound))
        for bound in buckets
    ]
    cumulative.append(("+Inf", sum(count for count, _ in bounds.values())))
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], cumulative, float(sum(total for _, total in bounds.values())))
    return family


def _gauge(name: str, documentation: str, counts: dict[str, tuple[int, float]]):
    family = GaugeMetricFamily(name, documentation, labels=["status"])
    for status, (count, _) in sorted(counts.items()):
        family.add_metric([status], count)
    return family


class OrchestraCollector:
    """Collects orchestra's metrics on every scrape."""

    def collect(self):
        counters: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
        for name, label, count, total in _rows(COUNTERS_SQL):
            counters[name][label] = (int(count), float(total))

        yield _gauge("orchestra_runs", "Test runs by status.", counters["runs"])
        yield _histogram(
            "orchestra_run_duration_seconds",
            "Run duration from start to finish.",
            counters["run_duration_seconds"],
            RUN_BUCKETS,
        )
        yield _histogram(
            "orchestra_step_duration_seconds",
            "Step duration, every try included.",
            counters["step_duration_seconds"],
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
        for scenario, status, count, age in _rows(QUEUE_SQL):
            depth.add_metric([scenario, status], count)
            if status == "SCHEDULED":
                oldest.add_metric([scenario], float(age))
        yield depth
        yield oldest

        yield _gauge(
            "orchestra_queue_records", "Queue records by status.", counters["queue_records"]
        )

        retries = CounterMetricFamily(
            "orchestra_retries",
            "Re-runs of queue records and redeliveries of runs.",
            labels=["kind"],
        )
        retries.add_metric(["queue_rerun"], float(counters["queue_reruns"].get("", (0, 0))[0]))
        retries.add_metric(
            ["run_redelivery"], float(counters["run_redeliveries"].get("", (0, 0))[0])
        )
        yield retries

        yield _gauge(
            "orchestra_dead_letters",
            "Messages in the dead-letter store by status.",
            counters["dead_letters"],
        )
        yield from _rate_keys()


def _rate_keys():
    labels = ["rate_key"]
    waits = CounterMetricFamily(
        "orchestra_throttled_waits",
        "Requests held back by their rate key (its limit or a target's block).",
        labels=labels,
    )
    pushbacks = CounterMetricFamily(
        "orchestra_pushbacks",
        "429s (and 503s with Retry-After) received from targets per rate key.",
        labels=labels,
    )
    seconds = CounterMetricFamily(
        "orchestra_throttle_wait_seconds",
        "Seconds that steps waited for their rate key.",
        labels=labels,
    )
    blocked = GaugeMetricFamily(
        "orchestra_rate_key_blocked",
        "1 while a target's Retry-After blocks the rate key, else 0.",
        labels=labels,
    )
    for name, wait_count, pushback_count, wait_seconds, is_blocked in _rows(RATE_KEYS_SQL):
        waits.add_metric([name], float(wait_count))
        pushbacks.add_metric([name], float(pushback_count))
        seconds.add_metric([name], float(wait_seconds))
        blocked.add_metric([name], 1.0 if is_blocked else 0.0)
    yield from (waits, pushbacks, seconds, blocked)
