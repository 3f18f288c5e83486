"""Writes of the scenario queue: enqueue, dispatch a lane, react to finished runs, cancel, retry.

Every change to a lane happens inside :func:`_lane_lock`, a transaction-scoped advisory lock
per scenario, so the head of a lane is decided by one process at a time; the partial unique
index on RUNNING records is the backstop should that ever be bypassed. A lane's head is started
by ``queue_catalog.states.start_lane_head`` (one statement: the run, the record, the attempt);
the run's message goes out through ``runs.services.runs_publish`` after the transaction commits.
A deactivated scenario's lane keeps its records and waits until it is activated again.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from queue_catalog.models import LANE_SEQUENCE, NextValue, QueueRecord
from queue_catalog.policies import rerun_delay, should_rerun
from queue_catalog.states import (
    ACTIVE_STATUSES,
    RecordStatus,
    active_sql,
    lock_lane,
    lock_lane_of_record,
    record_done_locking_lane,
    start_lane_head,
    startable_sql,
    transition_record,
)
from runs.models import Priority, Scenario, TestRun
from runs.services import (
    RUNS_PER_INSERT,
    RunConflict,
    run_cancel,
    runs_publish,
    scenario_require_active,
)
from runs.states import TERMINAL_STATUSES as RUN_TERMINAL_STATUSES
from runs.states import RunStatus

logger = logging.getLogger(__name__)


class RecordConflict(Exception):
    """The record's status does not allow the operation."""


@contextmanager
def _lane_lock(scenario_id: int):
    """Run the block in a transaction that holds the lane's lock until commit."""
    with transaction.atomic():
        lock_lane(scenario_id)
        yield


def queue_record_create(
    *,
    scenario: Scenario,
    payload: dict[str, Any],
    priority: str = Priority.NORMAL,
    max_attempts: int | None = None,
) -> QueueRecord:
    """Add a record at the tail of its scenario's lane; an idle lane starts it at once."""
    return queue_records_create(
        scenario=scenario, payloads=[payload], priority=priority, max_attempts=max_attempts
    )[0]


def queue_records_create(
    *,
    scenario: Scenario,
    payloads: list[dict[str, Any]],
    priority: str = Priority.NORMAL,
    max_attempts: int | None = None,
    context: dict[str, Any] | None = None,
    launch_id: int | None = None,
    row_key: str | None = None,
) -> list[QueueRecord]:
    """Add several records to one lane, one INSERT per ``RUNS_PER_INSERT``, then start its head
    if the lane is idle. ``context``, ``launch_id`` and ``row_key`` reach every run of the
    records as in ``runs.services.runs_start``."""
    scenario_require_active(scenario)
    records = []
    for row, payload in enumerate(payloads, start=1):
        record_context = dict(context or {})
        if row_key is not None:
            record_context[row_key] = row
        records.append(
            QueueRecord(
                scenario=scenario,
                payload=payload,
                priority=priority,
                max_attempts=max_attempts or settings.ORCHESTRA_QUEUE_MAX_ATTEMPTS,
                context=record_context,
                launch_id=launch_id,
            )
        )
    with _lane_lock(scenario.id):
        QueueRecord.objects.bulk_create(records, batch_size=RUNS_PER_INSERT)
        _dispatch_locked(scenario.id)
    fresh = QueueRecord.objects.in_bulk([record.id for record in records])
    return [fresh[record.id] for record in records]


def lane_dispatch(*, scenario_id: int) -> int | None:
    """Start the head of the lane if the lane is idle and the head is due; the run's id if so."""
    with _lane_lock(scenario_id):
        return _dispatch_locked(scenario_id)


def _dispatch_locked(scenario_id: int) -> int | None:
    started = start_lane_head(scenario_id)
    if started is None:
        return None
    run_id, priority = started
    run = TestRun(id=run_id, priority=priority, scenario_id=scenario_id)
    transaction.on_commit(lambda: runs_publish([run]))
    return run_id


def queue_on_run_finished(*, run_id: int, status: str, context: dict[str, Any]) -> None:
    """Advance the record whose run finished: DONE, re-run later, ERROR or CANCELLED; then
    start the next record of its lane.

    Only news about the record's current start counts: not a late duplicate, not news about an
    earlier start. A record whose cancel was requested is never run again: it ends CANCELLED
    (DONE if its run passed before it could stop), and only now does its lane move on.
    """
    record_id = context.get("queueRecordId")
    if record_id is None:
        return
    with transaction.atomic():
        if status == RunStatus.PASSED:
            scenario_id = record_done_locking_lane(record_id, run_id=run_id)
        else:
            scenario_id = _record_failed_locking_lane(record_id, run_id, status)
        if scenario_id is not None:
            _dispatch_locked(scenario_id)


def _record_failed_locking_lane(record_id: int, run_id: int, status: str) -> int | None:
    """Settle the record of a run that did not pass; its scenario id, or None if not current."""
    scenario_id = lock_lane_of_record(record_id)
    if scenario_id is None:
        return None
    record = QueueRecord.objects.filter(
        id=record_id, status=RecordStatus.RUNNING, current_run_id=run_id
    ).first()
    if record is None:
        return None
    _settle_failed_locked(record, status, _run_error(run_id, status))
    return scenario_id


def _run_error(run_id: int, status: str) -> str:
    error = TestRun.objects.filter(id=run_id).values_list("error", flat=True).first()
    return error or status


def _settle_failed_locked(record: QueueRecord, run_status: str, error: str) -> None:
    """A RUNNING record whose run did not pass: CANCELLED, re-run after backoff, or ERROR."""
    errors = [
        *record.errors,
        {
            "attempt": record.start_count,
            "at": timezone.now().isoformat(timespec="seconds"),
            "message": error,
        },
    ]
    if run_status == RunStatus.CANCELLED:
        transition_record(record.id, to=RecordStatus.CANCELLED, finished_at=Now())
    elif record.cancel_requested_at is not None:
        # The run failed before the stop reached it: its error is history, but no re-run.
        transition_record(record.id, to=RecordStatus.CANCELLED, errors=errors, finished_at=Now())
    elif should_rerun(start_count=record.start_count, max_attempts=record.max_attempts):
        delay = rerun_delay(
            start_count=record.start_count,
            base_seconds=settings.ORCHESTRA_QUEUE_RETRY_BASE_SECONDS,
            max_seconds=settings.ORCHESTRA_QUEUE_RETRY_MAX_SECONDS,
        )
        # On the database's clock, like every comparison of it (``start_lane_head``, the sweep):
        # a worker whose clock is off must not shorten or stretch the backoff.
        transition_record(
            record.id,
            to=RecordStatus.SCHEDULED,
            sources={RecordStatus.RUNNING},
            errors=errors,
            finished_at=Now(),
            next_attempt_at=Now() + timedelta(seconds=delay),
        )
    else:
        transition_record(record.id, to=RecordStatus.ERROR, errors=errors, finished_at=Now())


def queue_record_cancel(*, record_id: int) -> QueueRecord:
    """Cancel a record: a waiting one never starts; a running one is asked to stop.

    A running record keeps its lane (it stays RUNNING, ``cancel_requested_at`` set) until its
    run has really stopped (its worker confirmed, or its lease lapsed): only then does
    :func:`queue_on_run_finished` make it CANCELLED and start the next record, so two launches
    of one scenario never overlap. Cancelling it again changes nothing.
    """
    record = QueueRecord.objects.get(id=record_id)
    with _lane_lock(record.scenario_id):
        record.refresh_from_db()
        if record.status == RecordStatus.SCHEDULED:
            transition_record(record.id, to=RecordStatus.CANCELLED, finished_at=Now())
            _dispatch_locked(record.scenario_id)
        elif record.status == RecordStatus.RUNNING:
            _request_cancel_locked(record)
        else:
            raise RecordConflict(f"record {record.id} is {record.status} and cannot be cancelled")
    record.refresh_from_db()
    return record


def _request_cancel_locked(record: QueueRecord) -> None:
    if record.cancel_requested_at is None:
        QueueRecord.objects.filter(id=record.id, status=RecordStatus.RUNNING).update(
            cancel_requested_at=Now()
        )
        record.refresh_from_db()
    try:
        run_cancel(run_id=record.current_run_id)
        return  # the run stops; its news settles the record
    except TestRun.DoesNotExist:
        run_status, error = RunStatus.CANCELLED, "cancelled"  # nothing is left to stop
    except RunConflict:
        run = TestRun.objects.filter(id=record.current_run_id).values("status", "error").first()
        if run is None:
            run_status, error = RunStatus.CANCELLED, "cancelled"
        elif run["status"] in RUN_TERMINAL_STATUSES:
            # It ended just now and its news is on its way (or was lost): settle it here; the
            # news then finds the record settled.
            run_status, error = run["status"], run["error"] or run["status"]
        else:
            return  # its stop is already under way
    if run_status == RunStatus.PASSED:
        transition_record(
            record.id,
            to=RecordStatus.DONE,
            where_current_run_id=record.current_run_id,
            finished_at=Now(),
        )
    else:
        _settle_failed_locked(record, run_status, error)
    _dispatch_locked(record.scenario_id)


def queue_record_retry(*, record_id: int) -> QueueRecord:
    """Put an ERROR record back at the tail of its lane with a fresh allowance of starts.

    Its start count and errors are kept (they are history); ``max_attempts`` grows by the
    global default so the record may start that many more times.
    """
    record = QueueRecord.objects.get(id=record_id)
    with _lane_lock(record.scenario_id):
        retried = transition_record(
            record.id,
            to=RecordStatus.SCHEDULED,
            sources={RecordStatus.ERROR},
            lane_position=NextValue(LANE_SEQUENCE),
            max_attempts=record.start_count + settings.ORCHESTRA_QUEUE_MAX_ATTEMPTS,
            next_attempt_at=None,
        )
        if not retried:
            record.refresh_from_db()
            raise RecordConflict(f"record {record.id} is {record.status}; only ERROR can retry")
        _dispatch_locked(record.scenario_id)
    record.refresh_from_db()
    return record


def queue_record_move_to_front(*, record_id: int) -> QueueRecord:
    """Move a waiting record to the front of its lane's waiting records.

    The lane's guarantees hold: it never passes the record that holds the head (running, or
    waiting out the backoff between its re-runs), so the lane still runs one record at a time
    and a started record still finishes its starts before the next one begins. Only the order
    of records that have not started changes, which is what the operator asks for. A record
    already at the front (the head, a record in backoff, the only one of its lane) stays where
    it is; a running or finished record cannot move (:class:`RecordConflict`).
    """
    record = QueueRecord.objects.get(id=record_id)
    with _lane_lock(record.scenario_id):
        record.refresh_from_db()
        if record.status != RecordStatus.SCHEDULED:
            raise RecordConflict(
                f"record {record.id} is {record.status}; only a waiting record can move"
            )
        lane = QueueRecord.objects.filter(
            scenario_id=record.scenario_id, status__in=ACTIVE_STATUSES
        ).order_by("lane_position")
        head = lane.first()  # never None: the record itself is in the lane
        if head.id != record.id:
            if _holds_its_place(head):
                lane = lane.exclude(id=head.id)
            front = lane.first()  # the record at worst
            if front.id != record.id:
                # Shift the waiting records between the front and the record one place back.
                QueueRecord.objects.filter(
                    scenario_id=record.scenario_id,
                    status=RecordStatus.SCHEDULED,
                    lane_position__gte=front.lane_position,
                    lane_position__lt=record.lane_position,
                ).update(lane_position=F("lane_position") + 1)
                QueueRecord.objects.filter(id=record.id).update(lane_position=front.lane_position)
        _dispatch_locked(record.scenario_id)
    record.refresh_from_db()
    return record


def _holds_its_place(head: QueueRecord) -> bool:
    """The head is running, or waiting to run again after a failed start."""
    return head.status == RecordStatus.RUNNING or head.next_attempt_at is not None


_ACTIVE_LANE_HEADS_SQL = f"""
WITH RECURSIVE lanes(scenario_id) AS (
    (SELECT scenario_id FROM queue_catalog_queuerecord
      WHERE {active_sql("status")} ORDER BY scenario_id, lane_position LIMIT 1)
    UNION ALL
    SELECT (SELECT q.scenario_id FROM queue_catalog_queuerecord q
             WHERE {active_sql("q.status")} AND q.scenario_id > lanes.scenario_id
             ORDER BY q.scenario_id, q.lane_position LIMIT 1)
      FROM lanes WHERE lanes.scenario_id IS NOT NULL
)
SELECT head.scenario_id
  FROM lanes
  CROSS JOIN LATERAL (
      SELECT q.scenario_id, q.status, q.next_attempt_at, q.priority
        FROM queue_catalog_queuerecord q
       WHERE q.scenario_id = lanes.scenario_id AND {active_sql("q.status")}
       ORDER BY q.lane_position LIMIT 1
  ) head
 WHERE {startable_sql("head.status")}
   AND (head.next_attempt_at IS NULL OR head.next_attempt_at <= now())
 ORDER BY CASE head.priority WHEN 'urgent' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END
"""


def queue_sweep() -> dict[str, int]:
    """Drive what no event drives (run by Celery beat):

    - re-runs whose backoff is over, and lanes whose hand-off was lost (a crash between one
      record ending and the next starting): every idle lane whose head is due is dispatched;
    - RUNNING records whose run finished but whose news was lost are settled.
    The active lanes are found with an index skip-scan, so the cost grows with the number of
    lanes, not with the number of waiting records.
    """
    stale = list(
        QueueRecord.objects.filter(
            status=RecordStatus.RUNNING,
            current_run__status__in=RUN_TERMINAL_STATUSES,
        ).values_list("current_run_id", "current_run__status", "current_run__context")
    )
    for run_id, status, context in stale:
        queue_on_run_finished(run_id=run_id, status=status, context=context)
    with connection.cursor() as cursor:
        cursor.execute(_ACTIVE_LANE_HEADS_SQL)
        due_lanes = [row[0] for row in cursor.fetchall()]
    started = sum(1 for scenario_id in due_lanes if lane_dispatch(scenario_id=scenario_id))
    return {"settled": len(stale), "started": started}
