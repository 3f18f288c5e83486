"""A scenario's definition is validated whenever it is saved, by any path, before it is stored."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from runs.models import Scenario
from runs.services import scenario_save

VALID = {
    "description": "creates a user",
    "variables": {"base_url": "http://target.test"},
    "steps": [
        {
            "name": "create user",
            "plugin": "http",
            "with": {"method": "POST", "url": "{{ base_url }}/users", "json": {"name": "Ada"}},
            "expect": {"status": 201},
            "capture": {"user_id": "$.id"},
        }
    ],
}
INVALID = {
    "steps": [
        {"name": "create user", "plugin": "http", "with": {"url": "http://t.test/"}},
        {"name": "fetch user", "plugin": "http", "with": {"url": "http://t.test/", "method": "X"}},
    ]
}
INVALID_MESSAGE_START = "steps[1] (fetch user): with.method: 'X' is not one of"


def definition_messages(error: ValidationError) -> list[str]:
    return error.message_dict["definition"]


def test_saving_an_invalid_definition_through_the_model_is_refused_and_stores_nothing(db):
    with pytest.raises(ValidationError) as caught:
        Scenario(name="broken", definition=INVALID).save()

    [message] = definition_messages(caught.value)
    assert message.startswith(INVALID_MESSAGE_START)
    assert not Scenario.objects.filter(name="broken").exists()


def test_objects_create_is_validated_too(db):
    with pytest.raises(ValidationError):
        Scenario.objects.create(name="broken", definition={"steps": []})

    assert Scenario.objects.count() == 0


def test_an_existing_scenario_cannot_be_changed_to_an_invalid_definition(db):
    scenario = Scenario.objects.create(name="s", definition=VALID)

    scenario.definition = INVALID
    with pytest.raises(ValidationError):
        scenario.save()

    scenario.refresh_from_db()
    assert scenario.definition == VALID


def test_a_valid_definition_is_stored_as_given(db):
    scenario = Scenario.objects.create(name="s", definition=VALID)

    assert Scenario.objects.get(pk=scenario.pk).definition == VALID


def test_every_problem_is_listed_under_definition(db):
    definition = {
        "steps": [
            {"name": "a", "plugin": "http", "timeout": 0, "with": {"url": "http://t.test/"}},
            {"name": "b", "plugin": "soap"},
        ]
    }

    with pytest.raises(ValidationError) as caught:
        Scenario(name="s", definition=definition).full_clean()

    messages = definition_messages(caught.value)
    assert len(messages) == 2
    assert messages[0].startswith("steps[0] (a): timeout: ")
    assert messages[1].startswith("steps[1] (b): plugin: unknown plugin 'soap'")


def test_scenario_save_creates_a_scenario_with_the_description_from_the_definition(db):
    scenario = scenario_save(name="create-user", definition=VALID)

    stored = Scenario.objects.get(name="create-user")
    assert stored.pk == scenario.pk
    assert stored.description == "creates a user"
    assert stored.definition == VALID
    assert stored.is_active


def test_scenario_save_prefers_an_explicit_description(db):
    scenario = scenario_save(name="create-user", definition=VALID, description="given")

    assert scenario.description == "given"


def test_scenario_save_replaces_the_definition_of_a_scenario_with_the_same_name(db):
    first = scenario_save(name="s", definition=VALID)
    replacement = {"steps": [{"name": "wait", "plugin": "delay", "with": {"seconds": 0}}]}

    second = scenario_save(name="s", definition=replacement)

    assert second.pk == first.pk
    assert Scenario.objects.count() == 1
    assert Scenario.objects.get(pk=first.pk).definition == replacement


def test_scenario_save_refuses_an_invalid_definition_naming_the_step_and_field(db):
    with pytest.raises(ValidationError) as caught:
        scenario_save(name="s", definition=INVALID)

    assert definition_messages(caught.value)[0].startswith(INVALID_MESSAGE_START)
    assert not Scenario.objects.exists()


def test_scenario_save_keeps_the_old_definition_when_the_new_one_is_invalid(db):
    scenario_save(name="s", definition=VALID)

    with pytest.raises(ValidationError):
        scenario_save(name="s", definition=INVALID)

    assert Scenario.objects.get(name="s").definition == VALID


def test_scenario_save_refuses_a_definition_that_is_not_an_object(db):
    with pytest.raises(ValidationError) as caught:
        scenario_save(name="s", definition=[{"name": "a", "plugin": "delay"}])  # type: ignore[arg-type]

    assert definition_messages(caught.value) == [
        "[{'name': 'a', 'plugin': 'delay'}] is not of type 'object'"
    ]


def test_a_scenario_whose_stored_definition_no_longer_validates_can_still_be_deactivated(db):
    from runs.services import scenario_set_active

    scenario = scenario_save(name="s", definition=VALID)
    # As if the http plugin had been uninstalled since: the stored definition is now invalid.
    Scenario.objects.filter(pk=scenario.pk).update(definition=INVALID)
    scenario.refresh_from_db()

    scenario_set_active(scenario=scenario, is_active=False)

    assert Scenario.objects.get(pk=scenario.pk).is_active is False
    with pytest.raises(ValidationError):
        scenario.save()  # a full save still validates
