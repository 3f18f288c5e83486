"""The scenarios in examples/ import cleanly and do what their descriptions say, end to end."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command

from queue_catalog.services import queue_record_create
from runs.models import Scenario, TestRun
from runs.services import run_start
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CREDENTIAL = "example-canary-credential"


@pytest.fixture(scope="module")
def example_workers(django_db_setup):
    from tests.support import BeatProcess, WorkerProcess

    worker = WorkerProcess(
        "examples", concurrency=2, env={"ORCHESTRA_CREDENTIAL_API_TOKEN": CREDENTIAL}
    ).start()
    beat = BeatProcess(interval=0.5).start()
    yield worker
    beat.stop()
    worker.stop()


@pytest.fixture
def imported() -> dict[str, Scenario]:
    out = io.StringIO()
    call_command("import_scenarios", str(EXAMPLES), stdout=out)
    files = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    assert f"{len(files)} imported, 0 refused" in out.getvalue()
    return {scenario.name: scenario for scenario in Scenario.objects.all()}


def finished(run: TestRun) -> TestRun:
    wait_for(lambda: TestRun.objects.get(id=run.id).is_finished, message=f"run {run.id}")
    run.refresh_from_db()
    return run


@pytest.mark.parametrize("name", ["create-and-fetch-user", "health-with-credentials"])
def test_a_run_of_the_example_passes(imported, example_workers, target_url, name):
    run = finished(run_start(scenario=imported[name], payload={"base_url": target_url}))

    assert run.status == "PASSED", run.error
    stored = "\n".join(str(vars(step)) for step in run.steps.all())
    assert CREDENTIAL not in stored


def test_the_flaky_example_passes_on_its_third_start_in_the_queue(
    imported, example_workers, target_url
):
    record = queue_record_create(
        scenario=imported["flaky-payment"], payload={"base_url": target_url}
    )

    wait_for(
        lambda: type(record).objects.get(id=record.id).status in ("DONE", "ERROR"),
        timeout=60,
        message="the flaky record to settle",
    )
    record.refresh_from_db()
    assert (record.status, record.start_count, len(record.errors)) == ("DONE", 3, 2), record.errors
