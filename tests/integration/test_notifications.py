"""Notifications from real workers to a real HTTP receiver that checks the signature: a
launch's finish, a scenario's state changes (failing after N consecutive failures, recovered),
and a receiver that is down blocking no run."""

from __future__ import annotations

import time

import pytest

from launches.services import launch_create
from notifications.models import Delivery
from runs.models import TestRun
from runs.services import runs_start
from tests.factories import make_scenario
from tests.support import wait_for
from tests.webhooks import receiver_fixture, webhook  # noqa: F401  (the `receiver` fixture)

pytestmark = pytest.mark.integration


def http_scenario(url: str):
    step = {"name": "get", "plugin": "http", "with": {"method": "GET", "url": url}}
    return make_scenario([{**step, "expect": {"status": 200}, "timeout": 5}])


def run_and_wait(scenario) -> TestRun:
    (run,) = runs_start(scenario=scenario, payloads=[{}])
    return wait_for(
        lambda: TestRun.objects.filter(id=run.id, finished_at__isnull=False).first(),
        timeout=60,
        message=f"run {run.id} to finish",
    )


@pytest.mark.usefixtures("live_db", "workers", "beat")
def test_a_finished_launch_is_posted_signed_to_a_real_receiver(receiver):
    receiver.up()
    webhook(receiver.url, ["launch.finished"])
    launch = launch_create(scenarios=[make_scenario().name])
    (body,) = wait_for(lambda: receiver.of("launch.finished"), message="the launch webhook")
    assert body["launch"]["id"] == launch.id and body["launch"]["status"] == "PASSED"
    assert body["launch"]["counts"] == {"PASSED": 1}
    assert receiver.refused == 0
    delivery = Delivery.objects.get()
    wait_for(lambda: Delivery.objects.get().status == "DELIVERED", message="delivered")
    assert [a.response_status for a in delivery.log.all()] == [204]


@pytest.mark.usefixtures("live_db", "workers", "beat")
def test_failing_after_three_consecutive_failures_and_recovered_are_announced_once(
    receiver, target_url
):
    receiver.up()
    webhook(receiver.url, ["scenario.failing", "scenario.recovered"])
    scenario = http_scenario(f"{target_url}/users/999999")  # 404: fails
    for number in range(1, 5):
        assert run_and_wait(scenario).status == "FAILED"
        if number < 3:
            assert not Delivery.objects.exists()  # two failures are not "failing" yet
    (failing,) = wait_for(lambda: receiver.of("scenario.failing"), message="failing webhook")
    assert failing["scenario"]["name"] == scenario.name and failing["failing_after"] == 3
    assert len(failing["runs"]) == 3
    scenario.definition["steps"][0]["with"]["url"] = f"{target_url}/health"
    scenario.save(update_fields=["definition"])
    assert run_and_wait(scenario).status == "PASSED"
    assert run_and_wait(scenario).status == "PASSED"
    wait_for(lambda: receiver.of("scenario.recovered"), message="recovered webhook")
    wait_for(
        lambda: not Delivery.objects.filter(status="PENDING").exists(), message="all delivered"
    )
    assert len(receiver.of("scenario.failing")) == 1  # the 4th failure said nothing new
    assert len(receiver.of("scenario.recovered")) == 1  # nor the 2nd pass


@pytest.mark.usefixtures("live_db", "workers", "beat")
def test_a_receiver_that_is_down_blocks_no_run(receiver):
    webhook(receiver.url)  # never up: connection refused
    scenarios = [make_scenario() for _ in range(3)]
    started = time.monotonic()
    launch = launch_create(scenarios=[s.name for s in scenarios])
    wait_for(
        lambda: TestRun.objects.filter(launch_id=launch.id, status="PASSED").count() == 3,
        timeout=30,
        message="the launch's runs to pass",
    )
    assert time.monotonic() - started < 20
    delivery = wait_for(
        lambda: Delivery.objects.filter(attempts__gte=1).first(), message="a first attempt"
    )
    attempt = wait_for(lambda: delivery.log.first(), message="the logged attempt")
    assert "ConnectError" in attempt.error and delivery.status == "PENDING"
