"""Rendering of ``{{ ... }}`` templates in step definitions.

Templates run in Jinja's immutable sandbox (no attribute tricks, no code execution, no changing
the lists and objects they are given) with strict undefined names, so a typo is an error, not an
empty string. A value that is exactly one ``{{ expr }}`` keeps the type of what ``expr``
evaluates to, so numbers, lists and objects survive captures; that value must be JSON, because
it is sent to plugins and stored.
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, UndefinedError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

#: Longest string or list a template may build with ``*``, and longest text it may render.
MAX_TEMPLATE_OUTPUT = 1_000_000
#: Largest integer (in bits) a template may build with ``**``.
MAX_POWER_BITS = 4096


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, plus limits on the operators that can exhaust memory or CPU in one step.

    Jinja folds constant expressions while compiling, so ``{{ 9 ** 9 ** 9 }}`` would hang the
    worker before any time limit could report which step did it; intercepted operators are
    never folded and come through :meth:`call_binop`.
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**" and _is_int(left) and _is_int(right) and abs(left) > 1:
            too_large = right * math.log2(abs(left)) > MAX_POWER_BITS
            if too_large:
                raise SecurityError(f"{left} ** {right} is too large")
        if operator_name == "*":
            sequence, times = (left, right) if _is_int(right) else (right, left)
            repeated = isinstance(sequence, str | list | tuple) and _is_int(times)
            if repeated and len(sequence) * times > MAX_TEMPLATE_OUTPUT:
                raise SecurityError(f"repeating a sequence {times} times is too large")
        return {"*": operator.mul, "**": operator.pow}[operator_name](left, right)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _defined(value: Any) -> Any:
    """Refuse an undefined name anywhere in a printed value, not only at its top.

    ``StrictUndefined`` raises when printed itself, but ``{{ [missing] }}`` would print its
    repr, ``[Undefined]``, silently.
    """
    if isinstance(value, Undefined):
        str(value)
    elif isinstance(value, list | tuple):
        for item in value:
            _defined(item)
    elif isinstance(value, dict):
        for item in value.values():
            _defined(item)
    return value


_environment = _Environment(undefined=StrictUndefined, autoescape=False, finalize=_defined)
# What a template can raise at render time besides Jinja's own errors: ``{{ 1 / 0 }}``,
# ``{{ 'a' + 1 }}``, ``{{ 'x' | int(base=99) }}``... None of them may escape as anything but a
# TemplateError, or a worker would report a step's typo as a crash.
_RENDER_ERRORS = (
    UndefinedError,
    TemplateSyntaxError,
    SecurityError,
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    AttributeError,
)


class TemplateError(ValueError):
    """A template is malformed, names something undefined, or tried something forbidden."""


def _has_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render every template in ``value`` (strings, lists and dicts, recursively).

    A value without templates comes back as the very same object.
    """
    if isinstance(value, str):
        return _render_text(value, context)
    if isinstance(value, list):
        items = [render(item, context) for item in value]
        return value if all(new is old for new, old in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        rendered = {key: render(item, context) for key, item in value.items()}
        return value if all(rendered[key] is item for key, item in value.items()) else rendered
    return value


@lru_cache(maxsize=1024)
def _compile_expression(expression: str):
    return _environment.compile_expression(expression, undefined_to_none=False)


@lru_cache(maxsize=1024)
def _compile_template(text: str):
    return _environment.from_string(text)


@lru_cache(maxsize=1024)
def _whole_expression(text: str) -> str | None:
    """The expression of a text that is exactly one ``{{ expr }}`` (spaces around allowed).

    Decided by Jinja's parser rather than a regular expression, so that a dict literal
    (``{{ {'a': {'b': 1}} }}``) or a string holding ``}}`` is still one expression.
    """
    stripped = text.strip()
    if not (stripped.startswith("{{") and stripped.endswith("}}")):
        return None
    try:
        body = _environment.parse(stripped).body
    except TemplateSyntaxError:
        return None  # reported by the full render
    if len(body) != 1 or not isinstance(body[0], nodes.Output) or len(body[0].nodes) != 1:
        return None
    if isinstance(body[0].nodes[0], nodes.TemplateData):
        return None
    expression = stripped[2:-2]
    # "{{- x -}}": whitespace control marks belong to the delimiters, not to the expression.
    if expression[:1] in ("-", "+"):
        expression = expression[1:]
    if expression[-1:] in ("-", "+"):
        expression = expression[:-1]
    return expression


def _render_text(text: str, context: dict[str, Any]) -> Any:
    if not _has_template(text):
        return text
    try:
        expression = _whole_expression(text)
        if expression is not None:
            return _json_value(_compile_expression(expression)(**context), text)
        size, chunks = 0, []
        for chunk in _compile_template(text).generate(context):
            size += len(chunk)
            if size > MAX_TEMPLATE_OUTPUT:
                raise TemplateError(f"{text!r}: renders more than {MAX_TEMPLATE_OUTPUT} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except TemplateError:
        raise
    except _RENDER_ERRORS as exc:
        raise TemplateError(f"{text!r}: {exc}") from None


def _json_value(value: Any, text: str) -> Any:
    """``value`` as JSON data; an undefined name hidden inside a list or object raises."""
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming what is missing
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str(value)  # Markup and other str subclasses become plain text
    if isinstance(value, list | tuple):
        return [_json_value(item, text) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _json_value(item, text) for key, item in value.items()}
    raise TemplateError(
        f"{text!r}: gives a {type(value).__name__}, which is not JSON data "
        "(a filter such as list or string can convert it)"
    )


def referenced_names(value: Any) -> set[str]:
    """The top-level names the templates in ``value`` read; a syntax error raises TemplateError."""
    names: set[str] = set()
    if isinstance(value, str):
        if _has_template(value):
            try:
                names |= meta.find_undeclared_variables(_environment.parse(value))
            except TemplateSyntaxError as exc:
                raise TemplateError(f"{value!r}: {exc}") from None
    elif isinstance(value, list):
        for item in value:
            names |= referenced_names(item)
    elif isinstance(value, dict):
        for item in value.values():
            names |= referenced_names(item)
    return names


def is_templated(value: Any) -> bool:
    """Whether ``value`` is a string holding a template (its type is only known when rendered)."""
    return isinstance(value, str) and _has_template(value)
