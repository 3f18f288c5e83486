"""Plugin discovery through the "orchestra.plugins" entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
from jsonschema import Draft202012Validator

from plugins import registry
from plugins.base import PluginResult, ProtocolPlugin
from plugins.delay import DelayPlugin
from plugins.http import HttpPlugin
from plugins.registry import (
    ENTRY_POINT_GROUP,
    PluginLoadError,
    UnknownPlugin,
    get_plugin,
    installed_plugins,
)
from runs.definition import DefinitionError, validate_definition

HERE = __name__


class EchoPlugin(ProtocolPlugin):
    """A third-party plugin as another package would ship it."""

    name = "echo"
    params_schema = {
        "type": "object",
        "required": ["text"],
        "additionalProperties": False,
        "properties": {"text": {"type": "string"}},
    }

    def execute(self, params, context):
        return PluginResult(data={"text": params["text"]})


class BadSchemaPlugin(EchoPlugin):
    params_schema = {"type": "objekt"}


class NotAPlugin:
    pass


@pytest.fixture
def fresh_registry():
    """Discovery from scratch, and back to the real one afterwards."""
    installed_plugins.cache_clear()
    yield
    installed_plugins.cache_clear()


@pytest.fixture
def entry_point_list(monkeypatch, fresh_registry):
    """Replace the installed entry points with the ones a test lists."""

    def install(*pairs: tuple[str, str]) -> None:
        points = [EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in pairs]
        monkeypatch.setattr(
            registry,
            "entry_points",
            lambda group: [point for point in points if point.group == group],
        )

    return install


def test_builtin_plugins_are_there_without_any_entry_point(entry_point_list):
    entry_point_list()  # a source tree installed with `pip install -r requirements.txt` only

    assert isinstance(get_plugin("http"), HttpPlugin)
    assert isinstance(get_plugin("delay"), DelayPlugin)


def test_a_third_party_plugin_cannot_take_a_builtin_name(entry_point_list):
    entry_point_list(("http", "tests.unit.test_registry:EchoPlugin"))

    with pytest.raises(PluginLoadError, match="registered twice"):
        installed_plugins()


def test_builtin_plugins_are_found_by_name(fresh_registry):
    assert isinstance(get_plugin("http"), HttpPlugin)
    assert isinstance(get_plugin("delay"), DelayPlugin)


def test_each_builtin_is_registered_under_its_own_name(fresh_registry):
    for name, plugin in installed_plugins().items():
        assert plugin.name == name


def test_builtin_schemas_are_valid_json_schemas(fresh_registry):
    for plugin in installed_plugins().values():
        Draft202012Validator.check_schema(plugin.params_schema)
        Draft202012Validator.check_schema(plugin.expect_schema)


def test_plugins_are_loaded_once_per_process(fresh_registry):
    assert get_plugin("http") is get_plugin("http")


def test_unknown_plugin_error_lists_the_installed_ones(fresh_registry):
    installed = ", ".join(sorted(registry.BUILTIN_PLUGINS))
    with pytest.raises(UnknownPlugin, match=rf"unknown plugin 'soap' \(installed: {installed}\)"):
        get_plugin("soap")


def test_a_third_party_plugin_is_usable_without_touching_orchestra(entry_point_list):
    entry_point_list(
        ("http", "plugins.http:HttpPlugin"),
        ("echo", f"{HERE}:EchoPlugin"),
    )

    assert isinstance(get_plugin("echo"), EchoPlugin)
    validate_definition({"steps": [{"name": "say", "plugin": "echo", "with": {"text": "hi"}}]})
    with pytest.raises(DefinitionError) as caught:
        validate_definition({"steps": [{"name": "say", "plugin": "echo", "with": {"txt": "hi"}}]})
    assert [str(problem) for problem in caught.value.problems] == [
        "steps[0] (say): with.text: required field is missing",
        "steps[0] (say): with.txt: unexpected field (allowed: text)",
    ]


def test_an_unknown_plugin_names_the_installed_ones(entry_point_list):
    entry_point_list()

    installed = ", ".join(sorted(registry.BUILTIN_PLUGINS))
    with pytest.raises(UnknownPlugin, match=rf"\(installed: {installed}\)"):
        get_plugin("soap")


def test_an_entry_point_that_is_not_a_plugin_class_is_refused_by_name(entry_point_list):
    entry_point_list(("odd", f"{HERE}:NotAPlugin"))

    with pytest.raises(PluginLoadError, match=f"{HERE}:NotAPlugin is not a ProtocolPlugin"):
        installed_plugins()


def test_a_plugin_with_an_invalid_schema_is_refused_when_loaded(entry_point_list):
    entry_point_list(("bad", f"{HERE}:BadSchemaPlugin"))

    with pytest.raises(PluginLoadError, match="BadSchemaPlugin.params_schema is not a valid"):
        installed_plugins()


def test_two_packages_claiming_one_name_is_refused(entry_point_list):
    entry_point_list(("http", "plugins.http:HttpPlugin"), ("http", f"{HERE}:EchoPlugin"))

    with pytest.raises(PluginLoadError, match="'http' is registered twice"):
        installed_plugins()


def test_the_same_entry_point_seen_twice_is_harmless(entry_point_list):
    entry_point_list(("echo", f"{HERE}:EchoPlugin"), ("echo", f"{HERE}:EchoPlugin"))

    assert sorted(installed_plugins()) == sorted([*registry.BUILTIN_PLUGINS, "echo"])


def test_a_plugin_load_error_is_still_a_type_error_for_older_callers(entry_point_list):
    entry_point_list(("odd", f"{HERE}:NotAPlugin"))

    with pytest.raises(TypeError):
        installed_plugins()
