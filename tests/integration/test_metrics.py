"""The Prometheus endpoint exposes the run, step, queue and dead-letter series with real values."""

from __future__ import annotations

import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from queue_catalog.services import queue_record_create
from runs.models import TestRun
from runs.services import run_start
from tests.factories import delay_step, make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db", "workers")]


def scrape(client, **headers) -> dict:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_runs_steps_and_queue_depth(viewer_client):
    passing = make_scenario([delay_step("a"), delay_step("b")])
    failing = make_scenario(
        [{"name": "nowhere", "plugin": "http", "with": {"url": "http://127.0.0.1:9/"}}]
    )
    runs = [run_start(scenario=passing) for _ in range(3)] + [run_start(scenario=failing)]
    wait_for(
        lambda: (
            TestRun.objects.filter(id__in=[r.id for r in runs], finished_at__isnull=False).count()
            == 4
        )
    )
    slow = make_scenario([delay_step("slow", 1)], name="slow-lane")
    for _ in range(3):
        queue_record_create(scenario=slow, payload={})

    samples = scrape(viewer_client)

    assert samples[("orchestra_runs", (("status", "PASSED"),))] == 3
    assert samples[("orchestra_runs", (("status", "ERROR"),))] == 1
    assert samples[("orchestra_run_duration_seconds_count", ())] == 4
    assert samples[("orchestra_step_duration_seconds_count", ())] == 7
    assert (
        samples[("orchestra_queue_depth", (("scenario", "slow-lane"), ("status", "SCHEDULED")))]
        == 2
    )
    assert (
        samples[("orchestra_queue_depth", (("scenario", "slow-lane"), ("status", "RUNNING")))] == 1
    )
    assert samples[("orchestra_queue_oldest_waiting_seconds", (("scenario", "slow-lane"),))] >= 0
    assert ("orchestra_retries_total", (("kind", "queue_rerun"),)) in samples


def test_metrics_need_credentials_or_the_scrape_token(client):
    assert client.get("/metrics").status_code == 401
    with override_settings(ORCHESTRA_METRICS_TOKEN="scrape-secret"):
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        samples = scrape(client, HTTP_AUTHORIZATION="Bearer scrape-secret")
    assert ("orchestra_run_duration_seconds_count", ()) in samples
