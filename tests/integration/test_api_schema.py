"""Schemathesis against the live OpenAPI schema: every operation, every default check.

The schema is read from ``/api/schema/`` of the Django WSGI application and every request goes
through that application in-process, authenticated as an operator. Each operation gets
``MAX_EXAMPLES`` schema-valid and as many schema-violating examples, derandomized so that a CI
run is repeatable. Objects with id 1 exist (sequences are reset), so generated ids reach the
happy paths as well as the 404s.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.specs.openapi.checks import positive_data_acceptance

from queue_catalog.models import QueueRecord
from runs.models import DeadLetter, StepResult, TestRun
from targets.models import RateKey
from tests.conftest import make_api_client, purge_queues
from tests.factories import delay_step, make_scenario

MAX_EXAMPLES = 15

# Input the schema cannot fully describe, because it is checked against stored data or
# against each plugin's own schema: operation -> {field: what its messages may say}.
SERVER_STATE_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "POST /api/runs/": {"scenario": ("no scenario", "is not active")},
    "POST /api/queue/": {"scenario": ("no scenario", "is not active")},
    "POST /api/scenarios/validate/": {"definition": ("",)},
    "POST /api/rate-keys/": {"name": ("already exists",)},
    # A tag expression's grammar, the scenarios and environments that exist, and what a data
    # file holds.
    "POST /api/launches/": {
        "tags": ("no active scenario", "expected", "unexpected", "nested", "longer than"),
        "scenarios": ("no scenario", "not active"),
        "environment": ("no environment", "reads env."),
        "data": ("row ", "rows", "UTF-8", ".csv", "CSV", "ORCHESTRA_LAUNCH_MAX_RUNS"),
    },
    # A schedule: cron grammar, IANA zone names, cron or interval (one of them), and the
    # scenarios, tags and environments that exist.
    **{
        label: {
            "name": ("already exists",),
            "cron": ("give either", "cron expression"),
            "interval_seconds": ("at least",),
            "timezone": ("unknown time zone",),
            "tags": ("give either", "no active scenario", "expected", "unexpected", "nested"),
            "scenarios": ("no scenario", "not active"),
            "environment": ("no environment", "reads env."),
        }
        for label in (
            "POST /api/schedules/",
            "PUT /api/schedules/{id}/",
            "PATCH /api/schedules/{id}/",
        )
    },
    **{
        label: {"name": ("already exists",), "definition": ("",), "definition_source": ("",)}
        for label in (
            "POST /api/scenarios/",
            "PUT /api/scenarios/{id}/",
            "PATCH /api/scenarios/{id}/",
        )
    },
}

pytestmark = [pytest.mark.integration]


@pytest.fixture
def seeded(django_db_reset_sequences):
    """One object of each kind, all with id 1; messages the fuzzing publishes are purged."""
    scenario = make_scenario([delay_step("first"), delay_step("second")], name="schemathesis")
    now = timezone.now()
    run = TestRun.objects.create(
        scenario=scenario,
        definition=scenario.definition,
        status="FAILED",
        attempt=1,
        worker="host:1",
        started_at=now,
        finished_at=now,
        error="step 'second' failed",
    )
    StepResult.objects.create(
        run=run, attempt=1, position=0, name="first", plugin="delay", status="PASSED", duration_ms=1
    )
    StepResult.objects.create(
        run=run,
        attempt=1,
        position=1,
        name="second",
        plugin="delay",
        status="FAILED",
        duration_ms=1,
        error="expected more",
    )
    DeadLetter.objects.create(
        task_id="t-1",
        task="runs.execute_run",
        reason="run 1 does not exist",
        body="[[1], {}, {}]",
        content_type="application/json",
        received=True,
    )
    QueueRecord.objects.create(
        scenario=scenario, payload={}, status="ERROR", start_count=1, max_attempts=1
    )
    RateKey.objects.create(name="http://127.0.0.1:8081", requests=20, burst=5)
    yield
    purge_queues()


def rejected_only_for_stored_data(ctx, response, case) -> None:
    """Like ``positive_data_acceptance``, but a schema-valid body may be refused with 400 for
    the fields of ``SERVER_STATE_FIELDS`` (a scenario that does not exist, a step its plugin
    refuses, a name already taken), never for anything else."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if response.status_code != 400:
        return
    allowed = SERVER_STATE_FIELDS[case.operation.label]
    fields = response.json()["error"]["fields"]
    unexplained = {
        path: messages
        for path, messages in fields.items()
        if not any(
            path.split(".")[0].split("[")[0] == field
            and all(any(part in message for part in parts) for message in messages)
            for field, parts in allowed.items()
        )
    }
    assert not unexplained, f"schema-valid input refused: {unexplained}"


def _fuzz(operation, mode: GenerationMode, headers: dict, examples: Counter) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        examples[operation.label, mode.value] += 1
        if operation.label in SERVER_STATE_FIELDS:
            case.call_and_validate(
                headers=headers,
                excluded_checks=[positive_data_acceptance],
                additional_checks=[rejected_only_for_stored_data],
            )
        else:
            case.call_and_validate(headers=headers)

    check()


def test_every_operation_passes_the_default_schemathesis_checks(seeded, capsys):
    operator = make_api_client("operator")
    headers = {"Authorization": f"Token {Token.objects.get(user=operator.user).key}"}
    # PostgreSQL text cannot hold NUL, so every string field refuses it with a 400 (tested in
    # test_api.py); the schema has no way to say so for every string.
    config = schemathesis.Config.from_dict({"generation": {"allow-x00": False}})
    schema = schemathesis.openapi.from_wsgi(
        "/api/schema/?format=json", get_wsgi_application(), config=config
    )

    load_all_checks()
    checks = [
        name
        for name in CHECKS.get_all_names()
        if schema.config.checks.get_by_name(name=name).enabled
    ]
    assert {"not_a_server_error", "status_code_conformance", "response_schema_conformance"} <= set(
        checks
    )

    examples: Counter = Counter()
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, headers, examples)
            except Unsatisfiable:
                # No parameters and no body: there is nothing to make invalid.
                assert mode == GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:
                failures[f"{operation.label} ({mode.value})"] = str(exc)

    with capsys.disabled():
        print(f"\nschemathesis: {len(operations)} operations, {examples.total()} examples")
        print(f"  checks: {', '.join(checks)}")
        for (label, mode), count in sorted(examples.items()):
            print(f"  {label} ({mode}): {count}")
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
