"""The contract every protocol plugin implements.

A step of a scenario names a plugin and gives it a ``with`` block of parameters. The executor
renders the templates in that block, validates it against the plugin's ``params_schema`` and calls
``execute(params, context)``. The plugin either

- returns a :class:`PluginResult`: the ``data`` document that ``capture`` JSONPaths and JSON
  expectations read, scalar ``fields`` (status code, elapsed time, ...), and short ``request`` /
  ``response`` summaries that are stored (after redaction) with the step; or
- raises :class:`PluginError` when the step cannot execute at all. ``retryable=True`` says that
  trying again may help (connection refused, timeout); ``retryable=False`` that it never will
  (bad parameters, unsupported feature). Its ``request`` keeps the attempted request.

Expectations are checked by ``check(expect, result)``, which returns one :class:`Assertion` per
expectation; any failed assertion makes the step ``FAILED``. A plugin never touches the database
and never sees other steps: everything it needs comes in ``params`` and ``context``.

Three duties come with the :class:`StepContext`:

- **a total deadline**: connect, send and read together end by ``context.deadline`` (a
  ``time.monotonic()`` instant; ``context.remaining()`` gives the seconds left). Past it the
  plugin raises ``PluginError(..., retryable=True)``;
- **stop when told**: ``context.stop`` is set when the run must stop now (cancelled, its lease
  lost, its time limit reached). A plugin that waits waits on that event, or checks it between
  reads, and gives up promptly;
- **the outbound policy before every connection**: ``context.check_outbound(host, port)``
  raises :class:`plugins.outbound.OutboundRefused` or returns the addresses the policy checked;
  the plugin connects to one of those, never resolves the name again.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from jsonschema import Draft202012Validator

from plugins.jsonpaths import JsonPathError, find_first

if TYPE_CHECKING:
    from plugins.resources import Listener, RunResources


class PluginError(Exception):
    """A step could not be executed; ``retryable`` says whether another try may succeed.

    ``request`` is the summary of what the plugin tried to send (a connection refused, a
    timeout), stored with the step like a result's ``request``; ``{}`` when nothing was tried.
    """

    def __init__(
        self, message: str, *, retryable: bool = False, request: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.request = request or {}


@dataclass(frozen=True)
class Pushback:
    """A target said "not now": HTTP 429, or 503 with ``Retry-After``.

    ``retry_after`` is in seconds from the response (an HTTP date already measured against the
    response's own ``Date``); None when the header is absent or malformed.
    """

    status: int
    retry_after: float | None
    #: The ``Retry-After`` header as the target sent it.
    header: str = ""


@dataclass
class PluginResult:
    """What a step produced."""

    data: Any = None
    fields: dict[str, Any] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)
    response: dict[str, Any] = field(default_factory=dict)
    #: Set when the target pushed back; the executor blocks the step's rate key and sends again.
    pushback: Pushback | None = None


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
    """What a plugin may know about the step it executes (see the module docstring)."""

    run_id: int
    step_name: str
    timeout: float
    #: ``time.monotonic()`` by which the step must end; ``timeout`` from creation by default.
    deadline: float = -1.0
    #: Set when the run must stop now; plugins that wait, wait on it.
    stop: threading.Event = field(default_factory=threading.Event, compare=False)
    #: Names of the credentials the step's rendered parameters carry.
    credentials_sent: frozenset[str] = frozenset()
    #: The run's resources and listeners (plugins/resources.py), shared by its steps.
    resources: RunResources = field(default_factory=lambda: _new_resources(), compare=False)

    def __post_init__(self) -> None:
        if self.deadline < 0:
            object.__setattr__(self, "deadline", time.monotonic() + self.timeout)

    def remaining(self) -> float:
        """Seconds left before the deadline, never negative."""
        return max(0.0, self.deadline - time.monotonic())

    def check_outbound(self, host: str, port: int) -> list:
        """The addresses ``host:port`` may be reached at; raises ``OutboundRefused`` if none."""
        from plugins.outbound import step_outbound_check

        return step_outbound_check(host, port, credentials_sent=self.credentials_sent)


class ProtocolPlugin(ABC):
    """Base class of protocol plugins; see the module docstring for the contract."""

    name: ClassVar[str]
    #: JSON Schema of the step's ``with`` block.
    params_schema: ClassVar[dict[str, Any]] = {"type": "object"}
    #: JSON Schema of the step's ``expect`` block.
    expect_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}

    #: JSON Schema of a ``listen: {with: ...}`` block; None when the plugin cannot listen.
    listen_schema: ClassVar[dict[str, Any] | None] = None
    #: One step using the plugin, as a scenario writes it (shown by ``GET /api/plugins/``).
    example: ClassVar[dict[str, Any] | None] = None

    @cached_property
    def params_validator(self) -> Draft202012Validator:
        """``params_schema``, compiled once per process."""
        return Draft202012Validator(self.params_schema)

    @cached_property
    def expect_validator(self) -> Draft202012Validator:
        """``expect_schema``, compiled once per process."""
        return Draft202012Validator(self.expect_schema)

    @cached_property
    def listen_validator(self) -> Draft202012Validator:
        """``listen_schema``, compiled once per process (refusing everything when it is None)."""
        return Draft202012Validator(self.listen_schema if self.listen_schema is not None else False)

    @abstractmethod
    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        """Perform the step; return a result or raise :class:`PluginError`."""

    def rate_target(self, params: dict[str, Any]) -> str | None:
        """The default rate key of a step with these rendered ``params``: the target's
        ``scheme://host:port``; None for a step that sends nothing (the default)."""
        return None

    def accepts_pushback(self, expect: dict[str, Any], pushback: Pushback) -> bool:
        """Whether ``expect`` accepts ``pushback`` as the step's result (a step that tests the
        target's limiter): then it is not obeyed, nor shared with other workers."""
        return False

    def listen(self, params: dict[str, Any], context: StepContext) -> Listener:
        """Subscribe before a step runs (``listen:``); see plugins/resources.py."""
        raise PluginError(f"plugin {self.name} cannot listen")

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        """Check ``expect`` against ``result``; the default knows only JSONPath on ``data``."""
        return check_json_paths(expect.get("json", {}), result.data)

    def capture(self, expression: str, result: PluginResult) -> Any:
        """Return the value ``expression`` (a JSONPath) selects from ``result.data``."""
        return find_first(expression, result.data)


def _new_resources() -> RunResources:
    from plugins.resources import RunResources

    return RunResources()


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
