"""Finds protocol plugins: the built-ins, always, and third-party ones through the
``orchestra.plugins`` entry-point group.

The built-ins are listed here rather than only as entry points of the installed package, so a
source tree whose dependencies came from ``pip install -r requirements.txt`` alone has them too.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from plugins.base import ProtocolPlugin

ENTRY_POINT_GROUP = "orchestra.plugins"

#: The plugins that ship with orchestra, as entry-point values.
BUILTIN_PLUGINS = {
    "http": "plugins.http:HttpPlugin",
    "delay": "plugins.delay:DelayPlugin",
    "sql": "plugins.sql:SqlPlugin",
    "amqp": "plugins.amqp:AmqpPlugin",
    "mqtt": "plugins.mqtt:MqttPlugin",
    "graphql": "plugins.graphql:GraphqlPlugin",
    "grpc": "plugins.grpc:GrpcPlugin",
    "websocket": "plugins.websocket:WebSocketPlugin",
}


class UnknownPlugin(LookupError):
    pass


class PluginLoadError(TypeError):
    """An installed plugin is unusable: not a ProtocolPlugin, a bad schema, a name clash."""


@cache
def installed_plugins() -> dict[str, ProtocolPlugin]:
    """Every installed plugin by name (loaded once per process).

    A broken plugin stops loading with a message naming its entry point: its schemas are used
    to validate every scenario saved, so a bad one must not surface later as a validation crash.
    """
    plugins: dict[str, ProtocolPlugin] = {}
    sources: dict[str, str] = {}
    builtins = [
        EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in BUILTIN_PLUGINS.items()
    ]
    for entry_point in [*builtins, *entry_points(group=ENTRY_POINT_GROUP)]:
        if entry_point.name in sources and sources[entry_point.name] != entry_point.value:
            raise PluginLoadError(
                f"plugin name {entry_point.name!r} is registered twice: by "
                f"{sources[entry_point.name]} and by {entry_point.value}"
            )
        plugins[entry_point.name] = _load(entry_point)
        sources[entry_point.name] = entry_point.value
    return plugins


def _load(entry_point: EntryPoint) -> ProtocolPlugin:
    plugin_class = entry_point.load()
    if not (isinstance(plugin_class, type) and issubclass(plugin_class, ProtocolPlugin)):
        raise PluginLoadError(f"{entry_point.value} is not a ProtocolPlugin subclass")
    for attribute in ("params_schema", "expect_schema"):
        try:
            Draft202012Validator.check_schema(getattr(plugin_class, attribute))
        except SchemaError as exc:
            raise PluginLoadError(
                f"{entry_point.value}.{attribute} is not a valid JSON Schema: {exc.message}"
            ) from None
    return plugin_class()


def get_plugin(name: str) -> ProtocolPlugin:
    """The plugin registered as ``name``; :class:`UnknownPlugin` names the installed ones."""
    plugins = installed_plugins()
    try:
        return plugins[name]
    except KeyError:
        known = ", ".join(sorted(plugins)) or "none"
        raise UnknownPlugin(f"unknown plugin {name!r} (installed: {known})") from None
