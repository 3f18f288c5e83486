"""Environments through a real worker: ``env.*`` in templates, secret variables redacted
wherever the run stores them, only the environment's credentials readable; and launches
refused when a scenario reads a variable its environment lacks."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from launches.models import Launch
from launches.services import launch_create
from runs.models import TestRun
from targets.models import Environment
from tests.factories import make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration]


def finished_runs(launch: Launch) -> list[TestRun]:
    def done():
        launch.refresh_from_db()
        return launch.is_finished

    wait_for(done, timeout=60, message=f"launch {launch.id} to finish")
    return list(TestRun.objects.filter(launch=launch).order_by("id"))


def stored_anywhere(text: str) -> list[str]:
    """The tables and columns of the run engine whose stored JSON or text holds ``text``."""
    found = []
    with connection.cursor() as cursor:
        for table, column in [
            ("runs_testrun", "context::text"),
            ("runs_testrun", "error"),
            ("runs_stepresult", "request::text"),
            ("runs_stepresult", "response::text"),
            ("runs_stepresult", "captures::text"),
            ("runs_stepresult", "assertions::text"),
            ("runs_stepresult", "tries::text"),
            ("runs_stepresult", "error"),
            ("queue_catalog_queuerecord", "context::text"),
        ]:
            cursor.execute(f"SELECT count(*) FROM {table} WHERE {column} LIKE %s", [f"%{text}%"])
            if cursor.fetchone()[0]:
                found.append(f"{table}.{column}")
    return found


@pytest.mark.parametrize("via_queue", [False, True])
def test_templates_read_env_and_its_secrets_reach_the_target_but_are_stored_nowhere(
    live_db, worker_factory, target_url, via_queue
):
    secret = f"sk-canary-{uuid.uuid4().hex}"
    token = f"tok-canary-{uuid.uuid4().hex}"
    port = target_url.rsplit(":", 1)[1]
    worker = worker_factory(
        "env",
        env={
            "ORCHESTRA_CREDENTIAL_TOKEN": token,
            "ORCHESTRA_CREDENTIAL_TOKEN_HOSTS": f"127.0.0.1:{port}",
        },
    )
    Environment.objects.create(
        name="staging",
        variables={"base_url": target_url, "region": "eu-1"},
        secret_variables={"api_key": secret},
        credentials=["TOKEN"],
    )
    scenario = make_scenario(
        [
            {
                "name": "echo",
                "plugin": "http",
                "with": {
                    "method": "POST",
                    "url": "{{ env.base_url }}/echo",
                    "headers": {"X-Key": "{{ env.api_key }}", "X-Shout": "{{ env.api_key|upper }}"},
                    "json": {"region": "{{ env.region }}", "bearer": "{{ credentials.TOKEN }}"},
                },
                # Passing proves the target received the real values.
                "expect": {
                    "status": 200,
                    "json": {
                        "$.headers.X-Key": "{{ env.api_key }}",
                        "$.body.region": "eu-1",
                        "$.body.bearer": "{{ credentials.TOKEN }}",
                    },
                },
                "capture": {"seen_key": "$.headers.X-Key", "seen_region": "$.body.region"},
                "timeout": 5,
            }
        ]
    )
    launch = launch_create(scenarios=[scenario.name], environment="staging", via_queue=via_queue)

    (run,) = finished_runs(launch)
    assert run.status == "PASSED", run.error
    assert run.context["env"] == {
        "name": "staging",
        "variables": {"base_url": target_url, "region": "eu-1"},
        "secrets": ["api_key"],
        "credentials": ["TOKEN"],
    }
    (step,) = run.steps.all()
    assert step.captures["seen_region"] == "eu-1"  # public variables stay readable
    for value in (secret, secret.upper(), token):
        assert stored_anywhere(value) == [], value
        assert value not in worker.output()


def test_a_run_reads_only_the_credentials_its_environment_allows(
    live_db, worker_factory, target_url
):
    allowed, other = f"ok-{uuid.uuid4().hex}", f"no-{uuid.uuid4().hex}"
    worker_factory(
        "credentials",
        env={"ORCHESTRA_CREDENTIAL_ALLOWED": allowed, "ORCHESTRA_CREDENTIAL_OTHER": other},
    )
    Environment.objects.create(
        name="qa", variables={"base_url": target_url}, credentials=["ALLOWED"]
    )

    def posting(name: str, credential: str) -> dict:
        return {
            "name": name,
            "plugin": "http",
            "with": {
                "method": "POST",
                "url": "{{ env.base_url }}/echo",
                "json": {"value": f"{{{{ credentials.{credential} }}}}"},
            },
            "expect": {"status": 200},
            "timeout": 5,
        }

    reads_allowed = make_scenario([posting("allowed", "ALLOWED")])
    reads_other = make_scenario([posting("other", "OTHER")])
    launch = launch_create(scenarios=[reads_allowed.name, reads_other.name], environment="qa")

    runs = {run.scenario_id: run for run in finished_runs(launch)}
    assert runs[reads_allowed.id].status == "PASSED", runs[reads_allowed.id].error
    refused = runs[reads_other.id]
    assert refused.status == "ERROR"
    assert "OTHER" in refused.steps.get().error
    assert launch.status == "ERROR"
    assert stored_anywhere(other) == [] and stored_anywhere(allowed) == []


def test_a_scenario_reading_env_is_valid_but_launches_only_where_the_variable_exists(
    live_db, api_client
):
    scenario = make_scenario(
        [{"name": "wait", "plugin": "delay", "with": {"seconds": "{{ env.pause }}"}}]
    )
    Environment.objects.create(name="bare", variables={"other": 1})
    for body, words in [
        ({"scenarios": [scenario.name]}, "reads env.pause: no environment"),
        ({"scenarios": [scenario.name], "environment": "bare"}, "reads env.pause: environment"),
    ]:
        response = api_client.post("/api/launches/", body, format="json")
        assert response.status_code == 400
        assert words in response.json()["error"]["fields"]["environment"][0]
    assert not Launch.objects.exists()
