"""Retention on a real database: `purge_runs` deletes old finished runs and records in batches,
keeps what queue records still reference, and beat runs it when ORCHESTRA_RETENTION_DAYS is set."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from queue_catalog.models import QueueRecord, QueueRun
from queue_catalog.retention import parse_age, runs_purge
from queue_catalog.tasks import purge_runs
from runs.models import StepResult, TestRun
from tests.factories import make_scenario
from tests.support import ROOT

pytestmark = pytest.mark.django_db

OLD = timezone.now() - timedelta(days=40)
RECENT = timezone.now() - timedelta(days=2)


def _run(scenario, status: str = "PASSED", finished=OLD, steps: int = 2) -> TestRun:
    run = TestRun.objects.create(scenario=scenario, definition=scenario.definition, status=status)
    TestRun.objects.filter(id=run.id).update(
        queued_at=finished,
        finished_at=finished if status not in ("QUEUED", "IN_PROGRESS") else None,
    )
    for position in range(steps):
        StepResult.objects.create(
            run=run, attempt=1, position=position, name=f"s{position}", plugin="delay",
            status="PASSED",
        )  # fmt: skip
    return run


def _record(scenario, status: str, finished, runs: list[TestRun]) -> QueueRecord:
    record = QueueRecord.objects.create(
        scenario=scenario, payload={}, status=status, start_count=len(runs),
        finished_at=finished, current_run=runs[-1] if runs else None,
    )  # fmt: skip
    for number, run in enumerate(runs, start=1):
        QueueRun.objects.create(record=record, run=run, start_number=number)
    return record


@pytest.fixture
def history():
    """Old and recent runs, finished and not, with and without queue records."""
    lone = make_scenario()
    old_runs = [_run(lone) for _ in range(5)]
    recent = _run(lone, finished=RECENT)
    old_but_running = _run(lone, status="IN_PROGRESS")
    # A record that finished long ago: it goes, and both its runs with it.
    gone = make_scenario()
    gone_record = _record(gone, "DONE", OLD, [_run(gone, "FAILED"), _run(gone)])
    # A record that finished recently, after an old failed start: record and old run stay.
    kept = make_scenario()
    kept_run = _run(kept, "FAILED")
    kept_record = _record(kept, "DONE", RECENT, [kept_run, _run(kept, finished=RECENT)])
    # A record still waiting for its re-run, its only start long ago: both stay.
    waiting = make_scenario()
    waiting_run = _run(waiting, "ERROR")
    waiting_record = _record(waiting, "SCHEDULED", None, [waiting_run])
    return {
        "deleted_runs": {
            *(r.id for r in old_runs),
            *gone_record.attempts.values_list("run", flat=True),
        },
        "kept_runs": {recent.id, old_but_running.id, kept_run.id, waiting_run.id},
        "deleted_records": {gone_record.id},
        "kept_records": {kept_record.id, waiting_record.id},
    }


def test_purge_deletes_old_finished_runs_and_records_and_keeps_the_referenced(history):
    runs_before, steps_before = TestRun.objects.count(), StepResult.objects.count()
    records_before = QueueRecord.objects.count()

    counts = runs_purge(older_than=timedelta(days=30), batch_size=2)

    assert (counts.runs, counts.records, counts.steps) == (7, 1, 14)
    assert TestRun.objects.count() == runs_before - 7
    assert StepResult.objects.count() == steps_before - 14
    assert QueueRecord.objects.count() == records_before - 1
    remaining = set(TestRun.objects.values_list("id", flat=True))
    assert history["kept_runs"] <= remaining and not history["deleted_runs"] & remaining
    assert set(QueueRecord.objects.values_list("id", flat=True)) == history["kept_records"]
    assert not StepResult.objects.filter(run_id__in=history["deleted_runs"]).exists()


def test_a_dry_run_counts_exactly_what_the_purge_then_deletes(history):
    before = TestRun.objects.count(), QueueRecord.objects.count(), StepResult.objects.count()

    planned = runs_purge(older_than=timedelta(days=30), dry_run=True)
    assert (
        TestRun.objects.count(),
        QueueRecord.objects.count(),
        StepResult.objects.count(),
    ) == before

    assert runs_purge(older_than=timedelta(days=30)) == planned


def test_each_batch_deletes_at_most_batch_size_runs_in_its_own_transaction(history):
    with CaptureQueriesContext(connection) as queries:
        runs_purge(older_than=timedelta(days=30), batch_size=2)

    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "runs_testrun"')]
    # 7 runs in pages of at most 2: four batches, each committed on its own.
    assert len(deletes) == 4
    savepoints = [q["sql"] for q in queries if q["sql"].startswith("SAVEPOINT")]
    assert len(savepoints) >= 4 + 1  # one per run batch, one per record batch


def test_the_command_reports_counts_and_refuses_a_bad_age(history):
    out = StringIO()
    call_command("purge_runs", "--older-than", "30d", "--dry-run", stdout=out)
    assert out.getvalue().strip() == (
        "would delete 7 run(s) with 14 step result(s) and 1 queue record(s) finished more "
        "than 30d ago"
    )
    assert TestRun.objects.filter(id__in=history["deleted_runs"]).count() == 7

    call_command("purge_runs", "--older-than", "30d", stdout=StringIO())
    assert not TestRun.objects.filter(id__in=history["deleted_runs"]).exists()

    with pytest.raises(CommandError, match="--older-than: 'a month' is not an age"):
        call_command("purge_runs", "--older-than", "a month")


def test_the_beat_task_purges_only_when_retention_is_set(history):
    with override_settings(ORCHESTRA_RETENTION_DAYS=0):
        assert purge_runs() == {}
    assert TestRun.objects.filter(id__in=history["deleted_runs"]).count() == 7

    with override_settings(ORCHESTRA_RETENTION_DAYS=30):
        assert purge_runs() == {"records": 1, "runs": 7, "steps": 14}


@pytest.mark.parametrize(("days", "scheduled"), [("0", False), ("30", True)])
def test_beat_schedules_the_purge_when_retention_days_is_set(days, scheduled):
    code = "import celeryconfig; print('purge-runs' in celeryconfig.beat_schedule)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ORCHESTRA_RETENTION_DAYS": days},
    )
    assert result.stdout.strip() == str(scheduled), result.stderr


@pytest.mark.parametrize(
    ("text", "age"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)),
     ("7", timedelta(days=7)), (" 1d ", timedelta(days=1))],
)  # fmt: skip
def test_parse_age_reads_days_hours_and_minutes(text, age):
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["", "d", "-1d", "1w", "1.5d", "30 days"])
def test_parse_age_refuses_anything_else(text):
    with pytest.raises(ValueError, match="is not an age"):
        parse_age(text)
