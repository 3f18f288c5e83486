"""Secrets never land anywhere: a canary credential sent by a real run is found in no table, no
API response and no log line. Also: the outbound policy refuses the broker's address."""

from __future__ import annotations

import logging
import uuid

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from runs.models import TestRun
from tests.factories import make_scenario
from tests.support import wait_for

pytestmark = [pytest.mark.integration]


def finished(run_id: int) -> TestRun:
    run = TestRun.objects.get(id=run_id)

    def done() -> bool:
        run.refresh_from_db()
        return run.is_finished

    wait_for(done, timeout=30, message=f"run {run_id} to finish")
    return run


def every_row_as_text() -> str:
    """Every row of every table of the test database, as JSON text."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        tables = [name for (name,) in cursor.fetchall()]
        dumps = []
        for table in tables:
            cursor.execute(f'SELECT row_to_json(t)::text FROM "{table}" t')
            dumps += [row for (row,) in cursor.fetchall()]
    return "\n".join(dumps)


def echo_step(name: str, target_url: str, **extra) -> dict:
    return {
        "name": name,
        "plugin": "http",
        "with": {
            "method": "POST",
            "url": f"{target_url}/echo",
            "headers": {
                "Authorization": "Bearer {{ credentials.API_TOKEN }}",
                "Cookie": "session={{ credentials.SESSION }}",
                "X-Trace": "{{ credentials.API_TOKEN }}",
            },
            "json": {"token": "{{ credentials.API_TOKEN }}", "key": "{{ api_key }}"},
        },
        **extra,
    }


def test_a_canary_credential_leaves_no_trace_in_database_api_or_logs(
    live_db, worker_factory, api_client, target_url, caplog
):
    token, session, payload_key = (f"canary-{uuid.uuid4().hex}" for _ in range(3))
    worker = worker_factory(
        "secrets",
        env={"ORCHESTRA_CREDENTIAL_API_TOKEN": token, "ORCHESTRA_CREDENTIAL_SESSION": session},
    )
    scenario = make_scenario(
        [
            # The target echoes the request back: the token comes back in the response body,
            # in a capture, and (second step) in a failed assertion and its error message.
            echo_step("send", target_url, capture={"echoed": "$.headers.X-Trace"}),
            echo_step("check", target_url, expect={"json": {"$.headers.X-Trace": "other"}}),
        ],
        variables={"api_key": "{{ payload.apiKey }}"},
        secrets=["api_key"],
    )
    caplog.set_level(logging.DEBUG)

    response = api_client.post(
        "/api/runs/",
        {"scenario": scenario.name, "payload": {"apiKey": payload_key}},
        format="json",
    )
    assert response.status_code == 201, response.content
    run = finished(response.json()["id"])

    assert run.status == "FAILED", run.error  # the second step's assertion failed, as planned
    steps = list(run.steps.order_by("position"))
    assert "[REDACTED]" in steps[1].error
    outputs = {
        "database": every_row_as_text(),
        "worker log": worker.log.read_text(),
        "web log": caplog.text,
    }
    for path in ("", "junit/", "report/"):
        outputs[f"GET /api/runs/{run.id}/{path}"] = api_client.get(
            f"/api/runs/{run.id}/{path}"
        ).content.decode()
    outputs["GET /api/runs/"] = api_client.get("/api/runs/").content.decode()
    admin = Client()
    admin.force_login(User.objects.create_superuser("secrets-admin", password="unused"))
    for path in [
        f"/admin/runs/testrun/{run.id}/change/",  # the run's report: every step, expanded
        *(f"/admin/runs/stepresult/{step.id}/change/" for step in steps),
    ]:
        page = admin.get(path)
        assert page.status_code == 200, path
        outputs[f"the admin page {path}"] = page.content.decode()
    assert "[REDACTED]" in outputs[f"the admin page /admin/runs/testrun/{run.id}/change/"]
    for where, text in outputs.items():
        assert token not in text, f"the API token leaked into the {where}"
        assert session not in text, f"the session cookie leaked into the {where}"
    # A secret passed in the payload is masked in everything stored about the steps (the
    # launch context keeps the payload as given: README, "Redaction").
    step_rows = "\n".join(str(vars(step)) for step in steps)
    assert "[REDACTED]" in step_rows
    assert payload_key not in step_rows
    assert payload_key not in outputs[f"GET /api/runs/{run.id}/junit/"]


def test_a_step_aimed_at_the_message_broker_is_refused_with_a_clear_error(live_db, worker_factory):
    from runs.services import run_start

    worker_factory("outbound")
    scenario = make_scenario(
        [{"name": "poke the broker", "plugin": "http", "with": {"url": "http://127.0.0.1:5672/"}}]
    )

    run = finished(run_start(scenario=scenario).id)

    assert run.status == "ERROR"
    step = run.steps.get()
    assert step.status == "ERROR"
    assert "connection to 127.0.0.1:5672 refused: it is the message broker's address" in step.error
    assert "ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE=false" in step.error
    assert [attempt["try"] for attempt in step.tries] == [1]  # not retried: it cannot succeed


# Spellings of a credential a template can make; the target echoes each one back.
SPELLINGS = {
    "reversed": "{{ credentials.API_TOKEN | reverse }}",
    "upper": "{{ credentials.API_TOKEN | upper }}",
    "sliced": "{{ credentials.API_TOKEN[3:] }}",
    "joined": "{{ credentials.API_TOKEN | list | join('.') }}",
    "concatenated": "{{ 'k=' ~ credentials.API_TOKEN ~ ';' }}",
    "replaced": "{{ credentials.API_TOKEN | replace('-', '_') }}",
    "formatted": "{{ '<%s>' | format(credentials.API_TOKEN | title) }}",
    "through a variable": "{{ signed | urlencode }}",
}


def spellings_of(token: str) -> list[str]:
    return [
        token,
        token[::-1],
        token.upper(),
        token[3:],
        ".".join(token),
        token.replace("-", "_"),
        token.title(),
        token.swapcase(),
    ]


def test_a_credential_transformed_by_filters_leaves_no_trace_in_database_api_or_worker_log(
    live_db, worker_factory, api_client, target_url
):
    token = f"canary-{uuid.uuid4().hex}"
    worker = worker_factory("spellings", env={"ORCHESTRA_CREDENTIAL_API_TOKEN": token})
    scenario = make_scenario(
        [
            {
                "name": "send spellings",
                "plugin": "http",
                "with": {
                    "method": "POST",
                    # httpx logs every request's URL at INFO: the worker's log sees it too
                    "url": f"{target_url}/echo?sig={{{{ credentials.API_TOKEN | reverse }}}}",
                    "headers": {"X-Sig": "{{ credentials.API_TOKEN | upper }}"},
                    "json": SPELLINGS,
                },
                "capture": {"echoed": "$.body"},
            },
            {
                "name": "use the echo",
                "plugin": "http",
                "with": {
                    "method": "POST",
                    "url": f"{target_url}/echo",
                    "json": {"again": "{{ (echoed | string).swapcase() }}"},
                },
                # fails, quoting what it got and what it expected
                "expect": {"json": {"$.body": "{{ echoed | string | reverse }}"}},
            },
        ],
        variables={"signed": "{{ credentials.API_TOKEN }}:{{ run.id }}"},
    )

    response = api_client.post("/api/runs/", {"scenario": scenario.name}, format="json")
    assert response.status_code == 201, response.content
    run = finished(response.json()["id"])

    assert run.status == "FAILED", run.error
    worker_log = worker.log.read_text()
    assert "HTTP Request: POST [REDACTED]" in worker_log  # the URL as it was logged, masked
    outputs = {"database": every_row_as_text(), "worker log": worker_log}
    for path in ("", "junit/", "report/"):
        outputs[f"GET /api/runs/{run.id}/{path}"] = api_client.get(
            f"/api/runs/{run.id}/{path}"
        ).content.decode()
    for where, text in outputs.items():
        for spelling in spellings_of(token):
            assert spelling not in text, f"{spelling!r} leaked into the {where}"
