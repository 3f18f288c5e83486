"""Scenario definitions and objects for tests."""

from __future__ import annotations

import itertools

from runs.models import Scenario
from runs.services import scenario_save

_names = itertools.count(1)


def delay_step(name: str, seconds: float = 0, **extra) -> dict:
    return {"name": name, "plugin": "delay", "with": {"seconds": seconds}, **extra}


def make_scenario(steps: list[dict] | None = None, *, name: str | None = None, **extra) -> Scenario:
    """Save a valid scenario (one ``delay 0`` step unless told otherwise)."""
    definition = {"steps": steps or [delay_step("wait")], **extra}
    return scenario_save(name=name or f"scenario-{next(_names)}", definition=definition)
