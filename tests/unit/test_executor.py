"""A plugin that misbehaves, or an expectation that renders to something invalid, ends its step
ERROR with a clear message: the run finishes, nothing escapes to the task."""

from __future__ import annotations

import pytest

from plugins.base import PluginResult, ProtocolPlugin
from runs import executor
from runs.executor import Outcome, run_execute
from runs.models import StepStatus, TestRun
from runs.states import RunStatus
from tests.factories import make_scenario


class LimitPlugin(ProtocolPlugin):
    """Returns a fixed number; ``expect.limit`` must be a number, ``check`` compares with it."""

    name = "limit"
    params_schema = {"type": "object"}
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"limit": {"type": "number"}},
    }

    def execute(self, params, context):
        return PluginResult(data={"value": 5})

    def check(self, expect, result):
        return []


class CrashingCheckPlugin(LimitPlugin):
    name = "crashing-check"

    def check(self, expect, result):
        raise TypeError("'<=' not supported between instances of 'int' and 'str'")


class CrashingCapturePlugin(LimitPlugin):
    name = "crashing-capture"

    def capture(self, expression, result):
        raise KeyError(expression)


def start_run(monkeypatch, plugin: ProtocolPlugin, step: dict, payload: dict) -> TestRun:
    monkeypatch.setattr(executor, "get_plugin", lambda name: plugin)
    scenario = make_scenario()
    definition = {"steps": [{"name": "the step", "plugin": plugin.name, **step}]}
    return TestRun.objects.create(
        scenario=scenario, definition=definition, context={"payload": payload}
    )


def outcome(run: TestRun) -> tuple[str, str, str]:
    run.refresh_from_db()
    step = run.steps.get()
    return run.status, step.status, step.error


@pytest.mark.parametrize(
    ("plugin", "step", "message"),
    [
        (
            LimitPlugin(),
            {"expect": {"limit": "{{ payload.limit }}"}},
            "expect.limit: 'soon' is not of type 'number'",
        ),
        (
            CrashingCheckPlugin(),
            {"expect": {"limit": 3}},
            "plugin crashing-check crashed: TypeError: '<=' not supported",
        ),
        (
            CrashingCapturePlugin(),
            {"capture": {"value": "$.value"}},
            "plugin crashing-capture crashed: KeyError: '$.value'",
        ),
    ],
    ids=["expect-renders-invalid", "check-raises", "capture-raises"],
)
def test_a_step_that_cannot_be_checked_ends_error_and_the_run_finishes(
    transactional_db, monkeypatch, plugin, step, message
):
    run = start_run(monkeypatch, plugin, step, payload={"limit": "soon"})

    assert run_execute(run_id=run.id, worker="test:1") is Outcome.EXECUTED

    status, step_status, error = outcome(run)
    assert (status, step_status) == (RunStatus.ERROR, StepStatus.ERROR)
    assert error.startswith(message)


def test_an_expectation_that_renders_valid_passes(transactional_db, monkeypatch):
    run = start_run(
        monkeypatch, LimitPlugin(), {"expect": {"limit": "{{ payload.limit }}"}}, {"limit": 7}
    )

    run_execute(run_id=run.id, worker="test:1")

    assert outcome(run) == (RunStatus.PASSED, StepStatus.PASSED, "")


def test_a_block_without_templates_is_judged_once_and_alike_every_time(
    transactional_db, monkeypatch
):
    plugin = LimitPlugin()
    checked = []
    real_validate = executor._validate
    monkeypatch.setattr(
        executor, "_validate", lambda *args: checked.append(args[1]) or real_validate(*args)
    )
    executor._validated_document.cache_clear()
    invalid = [start_run(monkeypatch, plugin, {"expect": {"limit": "soon"}}, {}) for _ in range(2)]
    valid = start_run(monkeypatch, plugin, {"expect": {"limit": 3}}, {})

    for run in [*invalid, valid]:
        run_execute(run_id=run.id, worker="test:1")

    for run in invalid:
        assert outcome(run) == (
            RunStatus.ERROR,
            StepStatus.ERROR,
            "expect.limit: 'soon' is not of type 'number'",
        )
    assert outcome(valid) == (RunStatus.PASSED, StepStatus.PASSED, "")
    # with and expect of the invalid definition once, then of the valid one once
    assert checked == ["with", "expect", "expect"]


def test_a_templated_block_is_judged_on_every_run(transactional_db, monkeypatch):
    step = {"expect": {"limit": "{{ payload.limit }}"}}
    runs = [
        start_run(monkeypatch, LimitPlugin(), step, {"limit": limit}) for limit in (7, "soon", 7)
    ]

    for run in runs:
        run_execute(run_id=run.id, worker="test:1")

    assert [outcome(run)[0] for run in runs] == [
        RunStatus.PASSED,
        RunStatus.ERROR,
        RunStatus.PASSED,
    ]
