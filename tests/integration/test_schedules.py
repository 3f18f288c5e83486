"""Schedules with a real beat (the database scheduler, as in the Procfile) and real workers:
fires every few seconds run launches, skip-overlap starts nothing while the previous launch
runs, a backlog of fires and beat's downtime each start one catch-up launch; the API refuses
bad cron expressions, time zones and targets with field errors."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from launches.models import Launch, Schedule
from launches.schedules import schedule_save
from launches.tasks import fire_schedule
from runs.models import TestRun
from tests.factories import delay_step, make_scenario
from tests.support import BeatProcess, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def db_beat(django_db_setup):
    """Start a beat on the database scheduler inside one test (its entries are that test's)."""
    started: list[BeatProcess] = []

    def start() -> BeatProcess:
        # The database scheduler stores whole seconds (IntervalSchedule.every): 1 s sweeps.
        process = BeatProcess(interval=1, database_scheduler=True).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def launches_of(scenario_name: str) -> list[Launch]:
    return list(Launch.objects.filter(scenario_names=[scenario_name]).order_by("id"))


@pytest.mark.usefixtures("live_db", "workers")
def test_a_schedule_every_two_seconds_launches_its_scenario_through_real_beat_and_workers(
    db_beat,
):
    scenario = make_scenario()
    schedule = schedule_save(name="every-2s", scenario_names=[scenario.name], interval_seconds=2)
    started = timezone.now()
    beat = db_beat()
    wait_for(
        lambda: Launch.objects.filter(status="PASSED", scenario_names=[scenario.name]).count() >= 3,
        timeout=30,
        message="three scheduled launches to pass",
    )
    beat.stop()
    launches = launches_of(scenario.name)
    runs = TestRun.objects.filter(scenario=scenario)
    assert all(run.worker for run in runs if run.status == "PASSED")  # a worker executed them
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(launches)]
    assert all(gap >= 1.0 for gap in gaps), gaps  # one launch per slot, never two at once
    assert launches[0].started_at - started < timedelta(seconds=15)
    schedule.refresh_from_db()
    assert schedule.last_launch_id == launches[-1].id
    assert f"launches.schedule:{schedule.id} (launches.fire_schedule)" in beat.log.read_text()


@pytest.mark.usefixtures("live_db", "workers")
def test_skip_overlap_starts_nothing_while_the_previous_launch_still_runs(db_beat):
    scenario = make_scenario([delay_step("slow", 4)])
    schedule = schedule_save(
        name="skip", scenario_names=[scenario.name], interval_seconds=1, overlap="skip"
    )
    db_beat()
    wait_for(
        lambda: Launch.objects.filter(status="PASSED", scenario_names=[scenario.name]).count() >= 2,
        timeout=40,
        message="two slow launches to pass",
    )
    schedule.refresh_from_db()
    assert schedule.skipped >= 3  # fired every second, skipped while a 4 s launch ran
    launches = [launch for launch in launches_of(scenario.name) if launch.finished_at]
    for earlier, later in itertools.pairwise(launches):
        assert later.started_at >= earlier.finished_at, "two launches of a skip schedule overlapped"


@pytest.mark.usefixtures("live_db", "workers")
def test_a_backlog_of_fires_starts_one_catch_up_launch():
    scenario = make_scenario()
    schedule = schedule_save(name="backlog", scenario_names=[scenario.name], interval_seconds=60)
    for _ in range(50):  # as if beat had sent them while every worker was down
        fire_schedule.delay(schedule.id)
    wait_for(
        lambda: Schedule.objects.get(id=schedule.id).last_launch_id,
        timeout=30,
        message="the catch-up launch",
    )
    wait_for(
        _queue_drained,
        timeout=30,
        message="the 50 fires to be consumed",
    )
    assert len(launches_of(scenario.name)) == 1


def _queue_drained() -> bool:
    from tests.conftest import CONTROL_QUEUE, broker_connection

    with broker_connection() as connection:
        _, messages, _ = connection.default_channel.queue_declare(CONTROL_QUEUE, passive=True)
    return messages == 0


@pytest.mark.usefixtures("live_db", "workers")
def test_after_beat_was_down_for_an_hour_one_catch_up_launch_starts_not_sixty(db_beat):
    scenario = make_scenario()
    schedule = schedule_save(name="downtime", scenario_names=[scenario.name], interval_seconds=60)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    PeriodicTask.objects.filter(id=schedule.periodic_task_id).update(last_run_at=an_hour_ago)
    Schedule.objects.filter(id=schedule.id).update(last_fired_at=an_hour_ago)
    beat = db_beat()
    wait_for(lambda: launches_of(scenario.name), timeout=30, message="the catch-up launch")
    sent = beat.log.read_text().count("(runs.sweep_runs)")
    # Ten more sweeps (beat's half-second ticks) give further fires every chance to happen.
    wait_for(
        lambda: beat.log.read_text().count("(runs.sweep_runs)") >= sent + 10,
        timeout=30,
        message="ten more beat ticks",
    )
    assert beat.log.read_text().count(f"launches.schedule:{schedule.id} ") == 1
    assert len(launches_of(scenario.name)) == 1


@pytest.mark.usefixtures("live_db")
def test_the_api_manages_schedules_and_its_beat_entry(api_client):
    scenario = make_scenario()
    response = api_client.post(
        "/api/schedules/",
        {
            "name": "nightly",
            "scenarios": [scenario.name],
            "cron": "30 2 * * 1-5",
            "timezone": "Europe/Berlin",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    task = PeriodicTask.objects.get(id=Schedule.objects.get(id=body["id"]).periodic_task_id)
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("30", "2", "1-5")
    assert str(task.crontab.timezone) == "Europe/Berlin"
    assert task.task == "launches.fire_schedule" and task.enabled

    response = api_client.patch(
        f"/api/schedules/{body['id']}/",
        {"cron": "", "interval_seconds": 30, "enabled": False},
        format="json",
    )
    assert response.status_code == 200, response.json()
    task.refresh_from_db()
    assert task.interval.every == 30 and task.crontab is None and not task.enabled

    assert api_client.delete(f"/api/schedules/{body['id']}/").status_code == 204
    assert not PeriodicTask.objects.filter(id=task.id).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "*/5 * * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "*/5 * * * *", "interval_seconds": 5}, "cron"),
        ({}, "cron"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"interval_seconds": 5, "scenarios": ["no-such-scenario"]}, "scenarios"),
        ({"interval_seconds": 5, "scenarios": [], "tags": "smoke and ("}, "tags"),
        ({"interval_seconds": 5, "environment": "nowhere"}, "environment"),
        ({"interval_seconds": 5, "overlap": "sometimes"}, "overlap"),
    ],
)
@pytest.mark.usefixtures("live_db")
def test_bad_schedules_are_a_400_naming_the_field(api_client, body, field):
    scenario = make_scenario()
    response = api_client.post(
        "/api/schedules/",
        {"name": "bad", "scenarios": [scenario.name], **body},
        format="json",
    )
    assert response.status_code == 400, response.json()
    assert field in response.json()["error"]["fields"], response.json()
    assert not Schedule.objects.exists() and not PeriodicTask.objects.exists()


@pytest.mark.usefixtures("live_db", "workers")
def test_queue_overlap_sends_each_launch_through_the_lane_behind_the_previous_one(db_beat):
    scenario = make_scenario([delay_step("slow", 2)])
    schedule = schedule_save(
        name="queue", scenario_names=[scenario.name], interval_seconds=1, overlap="queue"
    )
    db_beat()
    wait_for(lambda: len(launches_of(scenario.name)) >= 3, timeout=30, message="three launches")
    schedule_save(schedule=schedule, enabled=False)
    launches = launches_of(scenario.name)
    assert all(launch.via_queue for launch in launches)
    wait_for(
        lambda: all(Launch.objects.get(id=launch.id).is_finished for launch in launches),
        timeout=60,
        message="the queued launches to finish",
    )
    runs = list(TestRun.objects.filter(scenario=scenario).order_by("started_at"))
    assert len(runs) >= 3
    for earlier, later in itertools.pairwise(runs):  # one lane: one run at a time
        assert later.started_at >= earlier.finished_at


@pytest.mark.usefixtures("live_db")
def test_the_admin_form_names_a_bad_cron_and_saves_a_good_one_with_its_beat_entry(client):
    from django.contrib.auth.models import User

    scenario = make_scenario()
    client.force_login(User.objects.create_superuser("root-schedules"))
    form = {
        "name": "admin-made",
        "enabled": "on",
        "tags": "",
        "scenario_names": f'["{scenario.name}"]',
        "priority": "normal",
        "payload": "{}",
        "cron": "99 * * * *",
        "timezone": "Asia/Tokyo",
        "overlap": "skip",
    }
    page = client.post("/admin/launches/schedule/add/", form)
    assert page.status_code == 200 and "not a cron expression" in page.content.decode()
    assert not Schedule.objects.exists()
    response = client.post("/admin/launches/schedule/add/", {**form, "cron": "0 9 * * *"})
    assert response.status_code == 302, response.content.decode()[:2000]
    schedule = Schedule.objects.get(name="admin-made")
    assert str(schedule.periodic_task.crontab.timezone) == "Asia/Tokyo"
