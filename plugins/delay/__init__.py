"""The ``delay`` plugin: waits a number of seconds (the original engine's timer)."""

from __future__ import annotations

from typing import Any

from plugins.base import PluginError, PluginResult, ProtocolPlugin, StepContext

_STARTUP_SLACK = 0.05


class DelayPlugin(ProtocolPlugin):
    """Waits ``with.seconds``; a delay longer than the step's time is an error.

    It waits on ``context.stop``, so a cancelled or stopped run ends the wait at once.
    """

    name = "delay"
    params_schema = {
        "type": "object",
        "required": ["seconds"],
        "additionalProperties": False,
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 86400}},
    }
    example = {"name": "let the queue drain", "plugin": "delay", "with": {"seconds": 2}}

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        seconds = float(params["seconds"])
        if seconds > context.timeout:
            self._wait(context, context.remaining())
            raise PluginError(
                f"delay of {seconds:g}s exceeds the step timeout {context.timeout:g}s"
            )
        # The remaining time is read a moment after the step started: a delay of exactly the
        # timeout still fits. A deadline set earlier than the timeout (a finally grace) cuts it.
        if seconds > context.remaining() + _STARTUP_SLACK:
            self._wait(context, context.remaining())
            raise PluginError(f"delay of {seconds:g}s did not end by the step's deadline")
        if seconds:
            self._wait(context, min(seconds, context.remaining()))
        return PluginResult(data={"slept": seconds}, fields={"slept": seconds})

    def _wait(self, context: StepContext, seconds: float) -> None:
        if context.stop.wait(seconds):
            raise PluginError("delay interrupted: the run was stopped")
