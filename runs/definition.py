"""Validation of scenario definitions, done when a scenario is saved, never first by a worker.

Each problem is data, a :class:`DefinitionProblem`: the path of the field at fault (keys and
list positions), the message, and the step's name; as text it reads ``steps[1] (fetch user):
with.method: 'FETCH' is not one of [...]``. The overall shape is checked by a JSON Schema,
each step's ``with`` and ``expect`` blocks by the schema its plugin declares, templates for
syntax and for names that can never be defined at that point, and capture expressions for
JSONPath syntax.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from jsonschema import Draft202012Validator, ValidationError

import celeryconfig
from plugins.jsonpaths import JsonPathError, compile_path
from plugins.registry import UnknownPlugin, get_plugin
from runs.policies import DEFAULT_RETRY_INTERVAL, MAX_RETRY_DELAY, step_retry_delay
from runs.templating import TemplateError, is_templated, referenced_names, suggestion

# Names every template may read besides variables and captures.
CONTEXT_NAMES = frozenset(
    {"payload", "queueRecordId", "queueStartCount", "run", "credentials", "env"}
)

_STEP_SCHEMA = {
    "type": "object",
    "required": ["name", "plugin"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "plugin": {"type": "string", "minLength": 1},
        "with": {"type": "object"},
        "expect": {"type": "object"},
        "capture": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {"type": "string", "minLength": 1},
        },
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        "retry": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "attempts": {"type": "integer", "minimum": 1, "maximum": 100},
                "interval": {"type": "number", "minimum": 0, "maximum": MAX_RETRY_DELAY},
                "backoff": {"type": "number", "minimum": 1, "maximum": 10},
            },
        },
        "continue_on_failure": {"type": "boolean"},
        # The rate key the step's requests count against (targets.throttle); default: the
        # plugin's rate target, ``scheme://host:port``. As long as RateKey.name allows.
        "rate_key": {"type": "string", "minLength": 1, "maxLength": 300, "pattern": "\\S"},
        # A subscription made before the step runs (plugins/resources.py); later steps await it.
        "listen": {
            "type": "object",
            "required": ["as", "plugin"],
            "additionalProperties": False,
            "properties": {
                "as": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]*$"},
                "plugin": {"type": "string", "minLength": 1},
                "with": {"type": "object"},
            },
        },
    },
}

DEFINITION_SCHEMA = {
    "type": "object",
    "required": ["steps"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "variables": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        },
        "secrets": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "steps": {"type": "array", "minItems": 1, "items": _STEP_SCHEMA},
        "finally": {"type": "array", "items": _STEP_SCHEMA},
    },
}
_definition_validator = Draft202012Validator(DEFINITION_SCHEMA)


Path = tuple[str | int, ...]
# A key written as ``.key`` in a path; any other key is written ``["key"]`` (JSON-quoted), so
# that dots, brackets and quotes in keys cannot be read as separators.
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_path(path: Path) -> str:
    """``("steps", 1, "expect", "json", "$.id")`` -> ``steps[1].expect.json["$.id"]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


@dataclass(frozen=True)
class DefinitionProblem:
    """One problem: ``path`` holds the keys and list positions from the definition's root to
    the field at fault; ``step`` is the name of the step it is in, for people to read."""

    path: Path
    message: str
    step: str | None = None

    @property
    def field(self) -> str:
        """The path as text, ``steps[1].with.method``: one text for each path."""
        return format_path(self.path)

    @property
    def label(self) -> str:
        """Where, for people: ``steps[1] (fetch user): with.method``."""
        path = self.path
        if len(path) >= 2 and path[0] in ("steps", "finally") and isinstance(path[1], int):
            head = f"{path[0]}[{path[1]}]" + (f" ({self.step})" if self.step is not None else "")
            rest = format_path(path[2:])
            return f"{head}: {rest}" if rest else head
        return self.field

    def __str__(self) -> str:
        return f"{self.label}: {self.message}" if self.path else self.message


class DefinitionError(ValueError):
    """A scenario definition is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[DefinitionProblem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems

    def as_dict(self) -> dict[str, list[str]]:
        """Messages grouped by field path (:attr:`DefinitionProblem.field`), the shape DRF and
        Django forms report; a problem of the whole definition is under ``definition``."""
        grouped: dict[str, list[str]] = {}
        for problem in self.problems:
            grouped.setdefault(problem.field or "definition", []).append(problem.message)
        return grouped


def _relevant(error: ValidationError) -> ValidationError:
    """For ``oneOf``/``anyOf``, the error of the branch that had the right type, if one did.

    ``status: 99`` then reads "99 is less than the minimum of 100", not "99 is not valid under
    any of the given schemas".
    """
    if error.validator in ("oneOf", "anyOf") and error.context:
        typed = [sub for sub in error.context if sub.validator != "type"]
        if typed:
            return _relevant(max(typed, key=lambda sub: len(sub.absolute_path)))
    return error


def _error_problems(error: ValidationError) -> list[tuple[list, str]]:
    """``(path parts, message)`` pairs for one JSON Schema error, naming the field at fault.

    jsonschema reports a missing or unexpected field, and a badly named key, at the object that
    holds it; a user wants the field itself: ``with.url: required field is missing``.
    """
    error = _relevant(error)
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "required" and isinstance(error.instance, dict):
        return [
            ([*path, name], "required field is missing")
            for name in error.validator_value
            if name not in error.instance
        ]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extras = [
            key
            for key in error.instance
            if key not in allowed and not any(re.search(pattern, key) for pattern in patterns)
        ]
        hint = f" (allowed: {', '.join(allowed)})" if allowed else " (none are allowed here)"
        return [([*path, key], f"unexpected field{hint}") for key in extras]
    if "propertyNames" in error.absolute_schema_path:
        rule = (
            f"must match {error.validator_value}" if error.validator == "pattern" else error.message
        )
        return [([*path, error.instance], f"{error.instance!r} is not a valid name: {rule}")]
    if error.validator == "not" and set(error.validator_value) == {"required"}:
        fields = " and ".join(error.validator_value["required"])
        return [(path, f"{fields} cannot be used together")]
    return [(path, error.message)]


def _schema_problems(
    validator, instance: Any, prefix: Path, step: str | None
) -> list[DefinitionProblem]:
    problems = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        # A templated string's type is only known once rendered; it is checked again then.
        if is_templated(_relevant(error).instance):
            continue
        for parts, message in _error_problems(error):
            problems.append(DefinitionProblem((*prefix, *parts), message, step))
    return problems


def _step_name(step: Any) -> str | None:
    name = step.get("name") if isinstance(step, dict) else None
    return name if isinstance(name, str) else None


def _structure_problems(definition: Any) -> tuple[list[DefinitionProblem], set[tuple[str, int]]]:
    """Problems with the overall shape, and the ``(section, index)`` of every step they touch.

    A problem inside a step carries the step's name, like those its plugin finds.
    """
    problems, broken_steps = [], set()
    for error in _definition_validator.iter_errors(definition):
        for parts, message in _error_problems(error):
            section = parts[0] if parts else None
            step = None
            if section in ("steps", "finally") and len(parts) > 1 and isinstance(parts[1], int):
                step = _step_name(definition[section][parts[1]])
                broken_steps.add((section, parts[1]))
            problems.append(DefinitionProblem(tuple(parts), message, step))
    return problems, broken_steps


def _steps_of(definition: dict) -> list[tuple[str, int, dict]]:
    return [
        (section, index, step)
        for section in ("steps", "finally")
        for index, step in enumerate(definition.get(section) or [])
    ]


def validate_definition(definition: Any) -> None:
    """Raise :class:`DefinitionError` listing every problem in ``definition``."""
    problems, broken_steps = _structure_problems(definition)
    shape_ok = (
        isinstance(definition, dict)
        and isinstance(definition.get("steps"), list)
        and isinstance(definition.get("finally", []), list)
        and isinstance(definition.get("variables", {}), dict)
        and isinstance(definition.get("secrets", []), list)
    )
    if not shape_ok:
        raise DefinitionError(problems)
    # Steps with a problem of their own shape are not checked further: their plugin's schema
    # and their templates would only repeat it.
    steps = [
        (section, index, step)
        for section, index, step in _steps_of(definition)
        if (section, index) not in broken_steps
    ]

    total = len(definition["steps"]) + len(definition.get("finally", []))
    if total > settings.ORCHESTRA_MAX_STEPS:
        problems.append(
            DefinitionProblem(("steps",), f"at most {settings.ORCHESTRA_MAX_STEPS} steps allowed")
        )
    first_use: dict[str, str] = {}
    for section, index, step in steps:
        if step["name"] in first_use:
            problems.append(
                DefinitionProblem(
                    (section, index, "name"),
                    f"step names must be unique; also {first_use[step['name']]}",
                    step["name"],
                )
            )
        first_use.setdefault(step["name"], f"{section}[{index}]")

    variables = definition.get("variables", {})
    for index, secret in enumerate(definition.get("secrets", [])):
        if secret not in variables:
            problems.append(DefinitionProblem(("secrets", index), f"{secret!r} is not a variable"))
    # Variables are rendered in order, each seeing the launch context and those before it.
    known = set(CONTEXT_NAMES)
    for name, value in variables.items():
        problems += _template_problems(value, ("variables", name), None, known)
        known.add(name)

    main_captures = {
        name
        for section, _index, step in steps
        if section == "steps"
        for name in step.get("capture", {})
    }
    # Clean-up steps run whatever happened before them: any capture may or may not exist.
    cleanup_known = known | main_captures
    for section, index, step in steps:
        if section == "steps":
            problems += _step_problems(step, (section, index), known)
            known |= set(step.get("capture", {}))
        else:
            problems += _step_problems(step, (section, index), cleanup_known)
            cleanup_known |= set(step.get("capture", {}))
    problems += _listener_problems(steps)
    problems += _time_limit_problems(steps)
    if problems:
        raise DefinitionError(problems)


def _template_problems(
    value: Any, path: Path, step: str | None, known: set[str]
) -> list[DefinitionProblem]:
    """Problems of the templates in ``value``, each at the exact path of its string."""
    if isinstance(value, dict):
        return [
            problem
            for key, item in value.items()
            for problem in _template_problems(item, (*path, str(key)), step, known)
        ]
    if isinstance(value, list):
        return [
            problem
            for index, item in enumerate(value)
            for problem in _template_problems(item, (*path, index), step, known)
        ]
    try:
        unknown = referenced_names(value) - known
    except TemplateError as exc:
        return [DefinitionProblem(path, f"template error {exc}", step)]
    if unknown:
        hint = "".join(suggestion(name, sorted(known)) for name in sorted(unknown)[:1])
        message = f"unknown name(s) {sorted(unknown)} in a template{hint}"
        return [DefinitionProblem(path, message, step)]
    return []


def _step_problems(step: dict, where: Path, known: set[str]) -> list[DefinitionProblem]:
    name = step["name"]
    try:
        plugin = get_plugin(step["plugin"])
    except UnknownPlugin as exc:
        return [DefinitionProblem((*where, "plugin"), str(exc), name)]
    problems = _schema_problems(
        plugin.params_validator, step.get("with", {}), (*where, "with"), name
    )
    problems += _schema_problems(
        plugin.expect_validator, step.get("expect", {}), (*where, "expect"), name
    )
    for key in ("with", "expect"):
        for field, value in step.get(key, {}).items():
            problems += _template_problems(value, (*where, key, field), name, known)
    if "listen" in step:
        problems += _listen_problems(step["listen"], (*where, "listen"), name, known)
    for capture, expression in step.get("capture", {}).items():
        try:
            compile_path(expression)
        except JsonPathError as exc:
            problems.append(DefinitionProblem((*where, "capture", capture), str(exc), name))
    # By the contract of ``ProtocolPlugin.check``, ``expect.json`` maps JSONPaths to values; a
    # malformed path would otherwise only show up as a failed assertion in every run.
    expected_json = step.get("expect", {}).get("json")
    if isinstance(expected_json, dict):
        for expression in expected_json:
            try:
                compile_path(expression)
            except JsonPathError as exc:
                problems.append(
                    DefinitionProblem((*where, "expect", "json", expression), str(exc), name)
                )
    return problems


def _listen_problems(
    listen: dict, where: Path, step: str, known: set[str]
) -> list[DefinitionProblem]:
    try:
        plugin = get_plugin(listen["plugin"])
    except UnknownPlugin as exc:
        return [DefinitionProblem((*where, "plugin"), str(exc), step)]
    if plugin.listen_schema is None:
        return [DefinitionProblem((*where, "plugin"), f"plugin {plugin.name} cannot listen", step)]
    with_block = listen.get("with", {})
    problems = _schema_problems(plugin.listen_validator, with_block, (*where, "with"), step)
    for field, value in with_block.items():
        problems += _template_problems(value, (*where, "with", field), step, known)
    return problems


def _listener_problems(steps: list[tuple[str, int, dict]]) -> list[DefinitionProblem]:
    """Each listener is named once, and a step awaits only a listener of an earlier step."""
    problems = []
    listeners: dict[str, str] = {}  # name -> the plugin that listens
    for section, index, step in steps:
        name = step["name"]
        awaited = step.get("with", {}).get("await")
        if isinstance(awaited, str) and not is_templated(awaited):
            where = (section, index, "with", "await")
            if awaited not in listeners:
                message = f"no earlier step listens as {awaited!r}"
                problems.append(DefinitionProblem(where, message, name))
            elif listeners[awaited] != step["plugin"]:
                message = (
                    f"{awaited!r} is a {listeners[awaited]} listener, awaited by a "
                    f"{step['plugin']} step"
                )
                problems.append(DefinitionProblem(where, message, name))
        if "listen" in step:
            listener = step["listen"]["as"]
            if listener in listeners:
                problems.append(
                    DefinitionProblem(
                        (section, index, "listen", "as"),
                        f"a listener {listener!r} exists already",
                        name,
                    )
                )
            listeners[listener] = step["listen"]["plugin"]
    return problems


def _time_limit_problems(steps: list[tuple[str, int, dict]]) -> list[DefinitionProblem]:
    """The step at which the longest a run could take passes the task's time budget.

    Each step may take ``timeout`` per try, ``retry.attempts`` tries and the pauses between
    them; the main steps and the ``finally`` steps run one after another. A run past the budget
    would be stopped by the time limit every time, so it is refused when it is saved.
    """
    budget = celeryconfig.RUN_TIME_BUDGET
    total = 0.0
    for section, index, step in steps:
        timeout = float(step.get("timeout", settings.ORCHESTRA_DEFAULT_STEP_TIMEOUT))
        retry = step.get("retry", {})
        attempts = retry.get("attempts", 1)
        pauses = sum(
            step_retry_delay(
                interval=retry.get("interval", DEFAULT_RETRY_INTERVAL),
                backoff=retry.get("backoff", 1.0),
                failed_tries=failed,
            )
            for failed in range(1, attempts)
        )
        one_try, longest = total + timeout, total + timeout * attempts + pauses
        if longest > budget:
            field = ("timeout",) if one_try > budget or attempts == 1 else ("retry", "attempts")
            return [
                DefinitionProblem(
                    (section, index, *field),
                    f"the steps up to this one could take {longest:g}s, more than the task "
                    f"time limit of {budget:g}s (CELERY_TASK_SOFT_TIME_LIMIT)",
                    step["name"],
                )
            ]
        total = longest
    return []
