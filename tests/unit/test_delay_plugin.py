"""The delay plugin, with the wait on ``context.stop`` replaced by a recorder where the test only
needs to know how long it waited (no real waiting in unit tests)."""

from __future__ import annotations

import threading
import time

import pytest
from jsonschema import Draft202012Validator

from plugins.base import PluginError, PluginResult, StepContext
from plugins.delay import DelayPlugin


class RecordingEvent(threading.Event):
    """An event that records how long it was waited on instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def context(timeout: float = 30.0, **extra) -> StepContext:
    return StepContext(run_id=1, step_name="wait", timeout=timeout, **extra)


@pytest.fixture
def stop() -> RecordingEvent:
    return RecordingEvent()


@pytest.mark.parametrize("seconds", [0.5, 2, 29.9, 30])
def test_waits_the_given_seconds_and_reports_them(stop, seconds):
    result = DelayPlugin().execute({"seconds": seconds}, context(timeout=30, stop=stop))

    assert stop.waits == [pytest.approx(seconds, abs=0.01)]
    assert result.data == {"slept": float(seconds)}
    assert result.fields == {"slept": float(seconds)}


def test_zero_seconds_does_not_wait(stop):
    result = DelayPlugin().execute({"seconds": 0}, context(stop=stop))

    assert stop.waits == []
    assert result.data == {"slept": 0.0}


def test_a_delay_longer_than_the_step_timeout_waits_the_timeout_then_fails_for_good(stop):
    with pytest.raises(PluginError, match="delay of 10s exceeds the step timeout 2s") as caught:
        DelayPlugin().execute({"seconds": 10}, context(timeout=2, stop=stop))

    assert stop.waits == [pytest.approx(2, abs=0.1)]
    assert caught.value.retryable is False


def test_a_delay_past_the_step_deadline_waits_until_the_deadline_then_fails(stop):
    deadline = time.monotonic() + 1
    with pytest.raises(PluginError, match="did not end by the step's deadline"):
        DelayPlugin().execute({"seconds": 5}, context(timeout=30, deadline=deadline, stop=stop))

    assert stop.waits == [pytest.approx(1, abs=0.1)]


def test_a_stop_ends_the_wait_at_once():
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()

    with pytest.raises(PluginError, match="interrupted"):
        DelayPlugin().execute({"seconds": 20}, context(stop=stop))

    assert time.monotonic() - started < 2


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
