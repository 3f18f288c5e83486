"""manage.py commands, run as real processes against the test database, broker and workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from xml.etree import ElementTree

import pytest
import yaml
from django.conf import settings

from queue_catalog.models import QueueRecord
from runs.models import Scenario
from tests.support import ROOT, wait_for, worker_database_url

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers")]


def manage(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL_FOR_TESTS,
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_scenario(tmp_path, name: str, status: int, target_url: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "steps": [
                    {
                        "name": "health",
                        "plugin": "http",
                        "with": {"url": f"{target_url}/health"},
                        "expect": {"status": status},
                    },
                    {"name": "pause", "plugin": "delay", "with": {"seconds": 0}},
                ],
            }
        )
    )
    return path


def test_run_scenario_wait_exits_0_and_writes_a_junit_report_for_a_passing_run(
    tmp_path, target_url
):
    junit = tmp_path / "report.xml"
    html = tmp_path / "report.html"
    result = manage(
        "run_scenario",
        str(write_scenario(tmp_path, "cli-pass", 200, target_url)),
        "--wait",
        "--junit",
        str(junit),
        "--html",
        str(html),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout and "health" in result.stdout
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite.get("name") == "cli-pass"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    assert "cli-pass" in html.read_text()


def test_run_scenario_wait_exits_1_with_the_failure_in_the_junit_report(tmp_path, target_url):
    junit = tmp_path / "report.xml"
    result = manage(
        "run_scenario",
        str(write_scenario(tmp_path, "cli-fail", 418, target_url)),
        "--wait",
        "--junit",
        str(junit),
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "status is 200, expected 418" in result.stdout
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("2", "1", "1")
    (failure,) = suite.iter("failure")
    assert "expected 418" in failure.get("message")


def test_run_scenario_refuses_an_invalid_file_naming_step_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"steps": [{"name": "s", "plugin": "delay", "with": {"seconds": -1}}]})
    )
    result = manage("run_scenario", str(path))

    assert result.returncode != 0
    assert "steps[0] (s): with.seconds" in result.stderr
    assert not Scenario.objects.filter(name="bad").exists()


def test_import_scenarios_reports_each_file_and_enqueue_adds_records(tmp_path, target_url):
    write_scenario(tmp_path, "imported-one", 200, target_url)
    (tmp_path / "broken.json").write_text(json.dumps({"steps": "nope"}))

    imported = manage("import_scenarios", str(tmp_path))
    assert imported.returncode == 1
    assert "✓ imported-one.yaml" in imported.stdout and "✗ broken.json" in imported.stderr
    assert Scenario.objects.filter(name="imported-one").exists()

    enqueued = manage("enqueue", "imported-one", "--payload", '{"n": 1}', "--count", "3")
    assert enqueued.returncode == 0, enqueued.stderr
    assert QueueRecord.objects.filter(scenario__name="imported-one").count() == 3
    wait_for(lambda: QueueRecord.objects.filter(status="DONE").count() == 3, timeout=60)

    status = manage("queue_status")
    assert status.returncode == 0
    (lane,) = [line for line in status.stdout.splitlines() if line.startswith("imported-one")]
    assert lane.split()[1:5] == ["0", "0", "3", "0"]

    bad = manage("enqueue", "imported-one", "--payload", "[1]")
    assert bad.returncode != 0 and "JSON object" in bad.stderr
