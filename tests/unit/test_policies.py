"""Pure engine policies: the pause between tries of a step, and a run's status from its steps."""

from __future__ import annotations

import pytest

from runs.policies import MAX_RETRY_DELAY, run_status_from_steps, step_retry_delay
from runs.states import RunStatus


@pytest.mark.parametrize(
    ("interval", "backoff", "failed_tries", "expected"),
    [
        # constant interval
        (1.0, 1.0, 1, 1.0),
        (1.0, 1.0, 5, 1.0),
        (0.2, 1.0, 3, 0.2),
        # exponential: interval after the first failure, times backoff after each further one
        (0.5, 2.0, 1, 0.5),
        (0.5, 2.0, 2, 1.0),
        (0.5, 2.0, 3, 2.0),
        (0.5, 2.0, 4, 4.0),
        (0.1, 3.0, 3, 0.9),
        (2.0, 1.5, 3, 4.5),
        # polling without a pause
        (0.0, 2.0, 1, 0.0),
        (0.0, 10.0, 50, 0.0),
        # capped, however large the arithmetic gets
        (MAX_RETRY_DELAY, 1.0, 1, MAX_RETRY_DELAY),
        (10.0, 10.0, 3, MAX_RETRY_DELAY),
        (300.0, 10.0, 100, MAX_RETRY_DELAY),  # 300 * 10**99: the schema's extreme
        (1.0, 10.0, 400, MAX_RETRY_DELAY),  # 10.0 ** 399 overflows a float
        (1.0, 2.0, 10_000, MAX_RETRY_DELAY),
        # never negative, never shrinking
        (-1.0, 2.0, 2, 0.0),
        (1.0, 0.5, 3, 1.0),
    ],
)
def test_step_retry_delay(interval, backoff, failed_tries, expected):
    assert step_retry_delay(
        interval=interval, backoff=backoff, failed_tries=failed_tries
    ) == pytest.approx(expected)


def test_step_retry_delay_grows_monotonically_up_to_the_cap():
    delays = [
        step_retry_delay(interval=0.25, backoff=2.0, failed_tries=tries) for tries in range(1, 30)
    ]

    assert delays == sorted(delays)
    assert delays[0] == 0.25
    assert delays[-1] == MAX_RETRY_DELAY


@pytest.mark.parametrize("failed_tries", [0, -1])
def test_step_retry_delay_is_only_defined_after_a_failed_try(failed_tries):
    with pytest.raises(ValueError, match="failed_tries"):
        step_retry_delay(interval=1.0, backoff=2.0, failed_tries=failed_tries)


def test_step_retry_delay_takes_keyword_arguments_only():
    with pytest.raises(TypeError):
        step_retry_delay(1.0, 2.0, 1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (["PASSED"], RunStatus.PASSED),
        (["PASSED", "PASSED", "PASSED"], RunStatus.PASSED),
        (["SKIPPED"], RunStatus.PASSED),
        (["PASSED", "SKIPPED"], RunStatus.PASSED),
        ([], RunStatus.PASSED),
        (["FAILED"], RunStatus.FAILED),
        (["PASSED", "FAILED", "SKIPPED"], RunStatus.FAILED),
        (["FAILED", "PASSED"], RunStatus.FAILED),  # a passing clean-up does not hide a failure
        (["PASSED", "PASSED", "FAILED"], RunStatus.FAILED),  # nor a failing clean-up a pass
        (["ERROR"], RunStatus.ERROR),
        (["FAILED", "ERROR"], RunStatus.ERROR),
        (["ERROR", "FAILED", "PASSED", "SKIPPED"], RunStatus.ERROR),
        (["PASSED", "ERROR", "SKIPPED", "PASSED"], RunStatus.ERROR),
    ],
)
def test_run_status_is_the_worst_step_status(steps, expected):
    assert run_status_from_steps(steps) == expected


def test_run_status_accepts_step_status_choices():
    from runs.models import StepStatus

    assert run_status_from_steps([StepStatus.PASSED, StepStatus.FAILED]) == RunStatus.FAILED


def test_run_status_refuses_a_status_that_is_not_a_step_status():
    with pytest.raises(KeyError):
        run_status_from_steps(["PASSED", "CANCELLED"])
