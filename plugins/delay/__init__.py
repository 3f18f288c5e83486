"""The ``delay`` plugin: waits a number of seconds (the original engine's timer)."""

from __future__ import annotations

import time
from typing import Any

from plugins.base import PluginError, PluginResult, ProtocolPlugin, StepContext


class DelayPlugin(ProtocolPlugin):
    """Sleeps ``with.seconds``; a delay longer than the step's timeout is an error."""

    name = "delay"
    params_schema = {
        "type": "object",
        "required": ["seconds"],
        "additionalProperties": False,
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 86400}},
    }

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        seconds = float(params["seconds"])
        if seconds > context.timeout:
            time.sleep(context.timeout)
            raise PluginError(
                f"delay of {seconds:g}s exceeds the step timeout {context.timeout:g}s"
            )
        if seconds:
            time.sleep(seconds)
        return PluginResult(data={"slept": seconds}, fields={"slept": seconds})
