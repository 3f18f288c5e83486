"""A definition whose steps could outlast the task's time limit is refused when it is saved,
naming the step and the field."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

import celeryconfig
from runs.definition import DefinitionError, validate_definition
from runs.services import scenario_save
from tests.factories import delay_step


@pytest.fixture(autouse=True)
def budget(monkeypatch):
    monkeypatch.setattr(celeryconfig, "RUN_TIME_BUDGET", 100.0)


def problems(definition: dict) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        validate_definition(definition)
    return [(problem.label, problem.message) for problem in caught.value.problems]


def test_a_step_timeout_past_the_time_limit_is_refused_naming_the_step_and_timeout():
    ((path, message),) = problems({"steps": [delay_step("long", 1, timeout=101)]})

    assert path == "steps[0] (long): timeout"
    assert "101s" in message and "time limit of 100s" in message


def test_the_step_at_which_the_steps_together_pass_the_limit_is_named():
    steps = [delay_step(f"s{i}", 1, timeout=30) for i in range(4)]

    assert problems({"steps": steps})[0][0] == "steps[3] (s3): timeout"


def test_retries_and_their_pauses_count_and_name_retry_attempts():
    retried = delay_step("poll", 1, timeout=20, retry={"attempts": 4, "interval": 10})

    ((path, message),) = problems({"steps": [retried]})
    assert path == "steps[0] (poll): retry.attempts"
    assert "110s" in message  # 4 tries of 20 s and 3 pauses of 10 s


def test_finally_steps_count_after_the_main_steps():
    definition = {
        "steps": [delay_step("main", 1, timeout=60)],
        "finally": [delay_step("clean up", 1, timeout=50)],
    }

    assert problems(definition)[0][0] == "finally[0] (clean up): timeout"


def test_steps_that_fit_the_time_limit_exactly_are_accepted():
    validate_definition({"steps": [delay_step("a", 1, timeout=50), delay_step("b", 1, timeout=50)]})


def test_default_timeouts_count_for_steps_that_name_none(settings):
    settings.ORCHESTRA_DEFAULT_STEP_TIMEOUT = 40

    assert (
        problems({"steps": [delay_step(f"s{i}") for i in range(3)]})[0][0]
        == "steps[2] (s2): timeout"
    )


def test_scenario_save_refuses_it_naming_the_step_and_field(db):
    with pytest.raises(ValidationError) as caught:
        scenario_save(name="too-long", definition={"steps": [delay_step("long", 1, timeout=500)]})

    (message,) = caught.value.message_dict["definition"]
    assert message.startswith("steps[0] (long): timeout: ")
