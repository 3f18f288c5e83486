"""The peer of ``bench/queue.py``: procrastinate with one lock per scenario.

Jobs deferred with the same ``lock`` run one at a time, in the order they were deferred: that
is procrastinate's own answer to "launches of one scenario run strictly one after another".
Each job does what the hand-written peer of ``throughput.py`` does for a one-step run (insert a
run row, mark it in progress, insert its step, mark it passed; four commits) and keeps its start
and finish times for the overlap check.

Only in the benchmarks' environment (``.venv-bench``, ``bench/requirements.txt``). Workers:
``procrastinate --app=bench.procrastinate_peer.app worker --concurrency 1``.
"""

from __future__ import annotations

import os
import threading

import procrastinate
import psycopg2

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS bench_lane_run (
    id bigserial PRIMARY KEY, lane integer NOT NULL, position integer NOT NULL,
    status text NOT NULL, started_at timestamptz, finished_at timestamptz);
CREATE TABLE IF NOT EXISTS bench_lane_step (
    id bigserial PRIMARY KEY, run_id bigint NOT NULL, status text NOT NULL);
"""

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("BENCH_PEER_DSN", ""))
)
_local = threading.local()


def _database():
    if getattr(_local, "connection", None) is None:
        _local.connection = psycopg2.connect(os.environ["BENCH_PEER_DSN"])
        _local.connection.autocommit = True
    return _local.connection


@app.task(name="bench.lane_record")
def lane_record(lane: int, position: int) -> None:
    """One queue record's run, the hand-written way."""
    with _database().cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_lane_run (lane, position, status) VALUES (%s, %s, 'QUEUED')"
            " RETURNING id",
            [lane, position],
        )
        (run_id,) = cursor.fetchone()
        cursor.execute(
            "UPDATE bench_lane_run SET status = 'IN_PROGRESS', started_at = clock_timestamp()"
            " WHERE id = %s",
            [run_id],
        )
        cursor.execute(
            "INSERT INTO bench_lane_step (run_id, status) VALUES (%s, 'PASSED')", [run_id]
        )
        cursor.execute(
            "UPDATE bench_lane_run SET status = 'PASSED', finished_at = clock_timestamp()"
            " WHERE id = %s",
            [run_id],
        )
