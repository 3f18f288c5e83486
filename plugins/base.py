"""The contract every protocol plugin implements.

A step of a scenario names a plugin and gives it a ``with`` block of parameters. The executor
renders the templates in that block, validates it against the plugin's ``params_schema`` and calls
``execute(params, context)``. The plugin either

- returns a :class:`PluginResult`: the ``data`` document that ``capture`` JSONPaths and JSON
  expectations read, scalar ``fields`` (status code, elapsed time, ...), and short ``request`` /
  ``response`` summaries that are stored (after redaction) with the step; or
- raises :class:`PluginError` when the step cannot execute at all. ``retryable=True`` says that
  trying again may help (connection refused, timeout); ``retryable=False`` that it never will
  (bad parameters, unsupported feature).

Expectations are checked by ``check(expect, result)``, which returns one :class:`Assertion` per
expectation; any failed assertion makes the step ``FAILED``. A plugin never touches the database
and never sees other steps: everything it needs comes in ``params`` and ``context``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from jsonschema import Draft202012Validator

from plugins.jsonpaths import JsonPathError, find_first


class PluginError(Exception):
    """A step could not be executed; ``retryable`` says whether another try may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class PluginResult:
    """What a step produced."""

    data: Any = None
    fields: dict[str, Any] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)
    response: dict[str, Any] = field(default_factory=dict)


@dataclass
class Assertion:
    """The outcome of one expectation."""

    name: str
    passed: bool
    expected: Any
    actual: Any
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "expected": self.expected,
            "actual": self.actual,
            "message": self.message,
        }


@dataclass(frozen=True)
class StepContext:
    """What a plugin may know about the step it executes."""

    run_id: int
    step_name: str
    timeout: float


class ProtocolPlugin(ABC):
    """Base class of protocol plugins; see the module docstring for the contract."""

    name: ClassVar[str]
    #: JSON Schema of the step's ``with`` block.
    params_schema: ClassVar[dict[str, Any]] = {"type": "object"}
    #: JSON Schema of the step's ``expect`` block.
    expect_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}

    @cached_property
    def params_validator(self) -> Draft202012Validator:
        """``params_schema``, compiled once per process."""
        return Draft202012Validator(self.params_schema)

    @cached_property
    def expect_validator(self) -> Draft202012Validator:
        """``expect_schema``, compiled once per process."""
        return Draft202012Validator(self.expect_schema)

    @abstractmethod
    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        """Perform the step; return a result or raise :class:`PluginError`."""

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        """Check ``expect`` against ``result``; the default knows only JSONPath on ``data``."""
        return check_json_paths(expect.get("json", {}), result.data)

    def capture(self, expression: str, result: PluginResult) -> Any:
        """Return the value ``expression`` (a JSONPath) selects from ``result.data``."""
        return find_first(expression, result.data)


def check_json_paths(expected_by_path: dict[str, Any], document: Any) -> list[Assertion]:
    """One assertion per ``{JSONPath: expected value}`` pair, read from ``document``."""
    assertions = []
    for path, expected in expected_by_path.items():
        try:
            actual = find_first(path, document)
        except JsonPathError as exc:
            assertions.append(Assertion(f"json {path}", False, expected, None, str(exc)))
            continue
        passed = actual == expected
        message = "" if passed else f"{path} is {actual!r}, expected {expected!r}"
        assertions.append(Assertion(f"json {path}", passed, expected, actual, message))
    return assertions
