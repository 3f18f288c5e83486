"""The delay plugin, with time.sleep replaced by a recorder (no real waiting in unit tests)."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from plugins.base import PluginError, PluginResult, StepContext
from plugins.delay import DelayPlugin


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr("plugins.delay.time.sleep", recorded.append)
    return recorded


def context(timeout: float = 30.0) -> StepContext:
    return StepContext(run_id=1, step_name="wait", timeout=timeout)


@pytest.mark.parametrize("seconds", [0.5, 2, 29.9, 30])
def test_waits_the_given_seconds_and_reports_them(sleeps, seconds):
    result = DelayPlugin().execute({"seconds": seconds}, context(timeout=30))

    assert sleeps == [seconds]
    assert result.data == {"slept": float(seconds)}
    assert result.fields == {"slept": float(seconds)}


def test_zero_seconds_does_not_sleep(sleeps):
    result = DelayPlugin().execute({"seconds": 0}, context())

    assert sleeps == []
    assert result.data == {"slept": 0.0}


def test_a_delay_longer_than_the_step_timeout_waits_the_timeout_then_fails_for_good(sleeps):
    with pytest.raises(PluginError, match="delay of 10s exceeds the step timeout 2s") as caught:
        DelayPlugin().execute({"seconds": 10}, context(timeout=2))

    assert sleeps == [2]
    assert caught.value.retryable is False


def test_delay_has_no_expectations_and_checks_nothing():
    assert DelayPlugin().check({}, PluginResult(data={"slept": 1.0})) == []


@pytest.mark.parametrize(
    ("params", "valid"),
    [
        ({"seconds": 0}, True),
        ({"seconds": 1.5}, True),
        ({"seconds": 86400}, True),
        ({}, False),
        ({"seconds": -0.1}, False),
        ({"seconds": 86401}, False),
        ({"seconds": "1"}, False),
        ({"seconds": 1, "jitter": 1}, False),
    ],
)
def test_params_schema(params, valid):
    errors = list(Draft202012Validator(DelayPlugin.params_schema).iter_errors(params))

    assert (errors == []) is valid
