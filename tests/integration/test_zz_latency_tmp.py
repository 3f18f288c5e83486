"""Throwaway: /metrics latency with 1M step rows (run under pytest for the test database)."""
import time
import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient
from django.contrib.auth.models import User
from runs.models import Scenario, StepResult, TestRun
from tests.factories import delay_step
from tests.integration.test_metrics_cost import _copy_rows


def _median_scrape(client):
    times = []
    for _ in range(20):
        t = time.perf_counter(); r = client.get("/metrics"); times.append(time.perf_counter() - t)
        assert r.status_code == 200
    return sorted(times)[10] * 1000


@pytest.mark.django_db
def test_latency():
    client = APIClient(); client.force_authenticate(User.objects.create_superuser("m"))
    empty = _median_scrape(client)
    s = Scenario.objects.create(name="big", definition={"steps": [delay_step("a")]})
    now = timezone.now()
    run = TestRun.objects.create(scenario=s, definition=s.definition, status="PASSED", attempt=1, started_at=now, finished_at=now)
    step = StepResult.objects.create(run=run, attempt=1, position=0, name="a", plugin="delay", status="PASSED", duration_ms=3.0)
    _copy_rows("runs_stepresult", step.id, 1_000_000, numbered="position")
    _copy_rows("runs_testrun", run.id, 1_000_000)
    loaded = _median_scrape(client)
    print(f"\nMETRICS median latency: empty {empty:.1f} ms, 1M steps + 1M runs {loaded:.1f} ms")
