"""Rendering of ``{{ ... }}`` templates in step definitions.

Templates run in Jinja's immutable sandbox (no attribute tricks, no code execution, no changing
the lists and objects they are given) with strict undefined names, so a typo is an error, not an
empty string. A value that is exactly one ``{{ expr }}`` keeps the type of what ``expr``
evaluates to, so numbers, lists and objects survive captures; that value must be JSON, because
it is sent to plugins and stored.

A template is code written by whoever may write scenarios, and it must not be able to exhaust
the worker that renders it. Every :func:`render` is bounded:

- in the size of every value it makes, checked where values are made: operators (all of them
  are intercepted), calls, filters, list and object literals, ``~`` and slices; an operation
  whose result can be far larger than its input (a width, a count, a repeated argument) is
  estimated before it runs (:mod:`runs.template_limits`), so the value is never built;
- in the text it emits, counted in every buffer (macros, ``{% set %}`` and ``{% filter %}``
  blocks) and not only in the final output;
- in time: ``ORCHESTRA_TEMPLATE_TIME_LIMIT`` seconds, checked at every block (so every loop
  iteration and macro call), call, operator, filter and emitted piece of text.

Jinja evaluates constant expressions while compiling, outside all of these checks; the
optimizer is off and ``finalize`` takes the evaluation context, so nothing is evaluated before
the render starts. Refusals are :class:`TemplateError`, like every other failure of a template.

Rendering also serves :mod:`runs.secrets`: given ``secret_names``, every template that reads one
of them has its output, and every value computed while rendering it, added to ``secrets``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache, update_wrapper, wraps
from typing import Any

from jinja2 import (
    StrictUndefined,
    TemplateSyntaxError,
    Undefined,
    meta,
    nodes,
    pass_environment,
    pass_eval_context,
)
from jinja2 import TemplateError as JinjaError
from jinja2.compiler import CodeGenerator
from jinja2.filters import FILTERS, make_attrgetter
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, SecurityError
from jinja2.utils import generate_lorem_ipsum
from markupsafe import EscapeFormatter, Markup

from runs.redaction import texts_of
from runs.template_limits import (
    FILTER_ESTIMATES,
    LIPSUM_ESTIMATE,
    MAX_INT_BITS,
    MAX_TEMPLATE_ITEMS,
    MAX_TEMPLATE_OUTPUT,
    check_estimate,
    check_method_call,
    check_printf,
    format_field_size,
    measure,
    refuse_larger,
    text_size,
)

__all__ = [
    "MAX_TEMPLATE_OUTPUT",
    "TemplateError",
    "credential_names",
    "is_templated",
    "referenced_names",
    "render",
]

#: Longest template text: compiling is not interruptible, and costs about 20 µs a character.
MAX_TEMPLATE_SOURCE = 20_000
#: Text a render may emit in all, counting what macros and blocks emit into their buffers.
MAX_TEMPLATE_EMITTED = 4 * MAX_TEMPLATE_OUTPUT
#: Values a render of templates reading a secret may compute, all of which must be redacted.
MAX_RECORDED_SECRETS = 10_000
DEFAULT_TIME_LIMIT = 1.0


@dataclass
class _Render:
    """The budget of the render in progress (one per :func:`render` call, nested ones share)."""

    deadline: float
    time_limit: float
    emitted: int = 0
    #: Where the values a tainted template computes go; None while rendering an untainted one.
    recording: set[str] | None = None


_active: ContextVar[_Render | None] = ContextVar("orchestra_template_render", default=None)


def _tick() -> None:
    state = _active.get()
    if state is not None and time.monotonic() > state.deadline:
        raise SecurityError(f"takes longer than {state.time_limit:g} s to render")


def _record(value: Any) -> None:
    state = _active.get()
    if state is None or state.recording is None:
        return
    state.recording.update(texts_of(value))
    if len(state.recording) > MAX_RECORDED_SECRETS:
        raise SecurityError(
            f"reads a secret and computes more than {MAX_RECORDED_SECRETS} values to redact"
        )


def _emit(size: int) -> None:
    state = _active.get()
    if state is None:
        return
    state.emitted += size
    if state.emitted > MAX_TEMPLATE_EMITTED:
        raise SecurityError(f"renders more than {MAX_TEMPLATE_EMITTED} characters in all")


# Types that are never iterators, checked first because the ABC check is slow.
_NOT_ITERATORS = frozenset({str, int, float, bool, type(None), list, dict, tuple, Markup})


def _made(value: Any) -> Any:
    """``value``, a value a template just made, once it is known to be within the bounds."""
    if type(value) not in _NOT_ITERATORS and isinstance(value, Iterator):
        return _ticking(value)
    measure(value)
    _record(value)
    return value


def _ticking(iterator: Iterator) -> Iterator:
    """A lazy result (``|map``, ``|select``...): each item costs a check of the time budget."""
    for item in iterator:
        _tick()
        _record(item)
        yield item


def _materialized(value: Any) -> Any:
    """An iterator argument as a list, refused as soon as it grows past the bounds.

    Python's own consumers (``dict()``, ``str.join``, ``sorted``) would collect it unchecked.
    """
    if type(value) in _NOT_ITERATORS or not isinstance(value, Iterator):
        return value
    items, size = [], 0
    for item in value:
        _tick()
        items.append(item)
        size += measure(item)[0] + 1
        if size > MAX_TEMPLATE_OUTPUT or len(items) > MAX_TEMPLATE_ITEMS:
            raise SecurityError(
                f"an iterator gives more than {MAX_TEMPLATE_ITEMS} items or "
                f"{MAX_TEMPLATE_OUTPUT} characters"
            )
    return items


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_repeat(left: Any, right: Any) -> None:
    """Refuse ``left * right`` when the product would be too large."""
    if _is_int(left) and _is_int(right):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise SecurityError(
                f"multiplying integers of {left.bit_length()} and "
                f"{right.bit_length()} bits is too large"
            )
        return
    sequence, times = (left, right) if _is_int(right) else (right, left)
    if not (_is_int(times) and isinstance(sequence, str | bytes | list | tuple)):
        return
    items = len(sequence) * times if isinstance(sequence, list | tuple) else 0
    if measure(sequence)[0] * times > MAX_TEMPLATE_OUTPUT or items > MAX_TEMPLATE_ITEMS:
        raise SecurityError(f"repeating a sequence {times} times is too large")


class _BoundedFormatter(SandboxedFormatter):
    """``str.format`` whose fields, widths included, add up to at most the bound."""

    def __init__(self, env: Any, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._size = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        _tick()
        _record(format_spec)
        self._size += format_field_size(value, format_spec)
        refuse_larger(self._size, ".format()")
        return _made(super().format_field(value, format_spec))


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    pass


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator with the checks of the budget compiled into the template.

    Every block (a loop's body on each iteration, a macro's body on each call) starts with a
    check of the time; literals and ``~`` are measured; constant text is counted as emitted.
    """

    def blockvisit(self, nodes_: Any, frame: Any) -> None:
        self.writeline("environment.tick()")
        super().blockvisit(nodes_, frame)

    def visit_Output(self, node: nodes.Output, frame: Any) -> None:
        constant = sum(len(c.data) for c in node.nodes if isinstance(c, nodes.TemplateData))
        if constant:
            self.writeline(f"environment.emitted({constant})")
        super().visit_Output(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.concat_values(context.eval_ctx, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _made(self, visit: Any, node: nodes.Node, frame: Any) -> None:
        self.write("environment.made(")
        visit(node, frame)
        self.write(")")

    def visit_Getitem(self, node: nodes.Getitem, frame: Any) -> None:
        if isinstance(node.arg, nodes.Slice):  # compiled to Python's own slicing: a new value
            self._made(super().visit_Getitem, node, frame)
        else:
            super().visit_Getitem(node, frame)

    def visit_List(self, node: nodes.List, frame: Any) -> None:
        self._made(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Any) -> None:
        self._made(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Any) -> None:
        if node.ctx == "store":
            super().visit_Tuple(node, frame)
        else:
            self._made(super().visit_Tuple, node, frame)


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with every point where a template makes a value checked (module docstring).

    Jinja folds constant expressions while compiling, so ``{{ 9 ** 9 ** 9 }}`` would hang the
    worker before any check could report which step did it; intercepted operators are never
    folded and come through :meth:`call_binop`, and the optimizer is off for everything else.
    """

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    tick = staticmethod(_tick)
    made = staticmethod(_made)
    emitted = staticmethod(_emit)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        _tick()
        if operator_name == "**" and _is_int(left) and _is_int(right) and abs(left) > 1:
            if right > 0 and right * math.log2(abs(left)) > MAX_INT_BITS:
                raise SecurityError(f"{left} ** {right} is too large")
        elif operator_name == "*":
            _check_repeat(left, right)
        elif operator_name == "%" and isinstance(left, str | bytes):
            check_printf(left, right)
        return _made(self.binop_table[operator_name](left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        args = tuple(_materialized(arg) for arg in args)
        kwargs = {key: _materialized(value) for key, value in kwargs.items()}
        check_method_call(__obj, args, kwargs)
        return _made(__context.call(__obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()  # also per item where a filter reads an attribute: |sort, |groupby, |map
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def concat_values(self, eval_ctx: Any, values: tuple) -> str:
        """``a ~ b ~ ...``, refused before joining if the text would be too large."""
        _tick()
        size = 0
        for value in values:
            size += text_size(value)
            refuse_larger(size * (6 if eval_ctx.autoescape else 1), "this ~ concatenation")
        return _made((markup_join if eval_ctx.autoescape else str_join)(values))

    def wrap_str_format(self, value: Any) -> Any:
        """``str.format`` and ``format_map`` through :class:`_BoundedFormatter`."""
        name = getattr(value, "__name__", None)
        owner = getattr(value, "__self__", None)
        if name not in ("format", "format_map") or not isinstance(owner, str):
            return None
        is_map = name == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            if isinstance(owner, Markup):
                formatter = _BoundedEscapeFormatter(self, escape=owner.escape)
            else:
                formatter = _BoundedFormatter(self)
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return update_wrapper(wrapper, value)


def _bounded_filter(name: str, function: Any) -> Any:
    estimate = FILTER_ESTIMATES.get(name)

    @wraps(function)  # keeps Jinja's pass_context / pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        args = tuple([_materialized(arg) for arg in args])
        if kwargs:
            kwargs = {key: _materialized(value) for key, value in kwargs.items()}
        if estimate is not None:
            check_estimate(estimate, f"|{name}", args, kwargs)
        return _made(function(*args, **kwargs))

    return bounded


@pass_environment
def _sum(environment: _Environment, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """``|sum`` one ``+`` at a time, so that summing lists is bounded like ``+`` itself."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    total = start
    for item in iterable:
        total = environment.call_binop(None, "+", total, item)
    return total


def _lipsum(*args: Any, **kwargs: Any) -> Any:
    check_estimate(LIPSUM_ESTIMATE, "lipsum()", args, kwargs)
    return generate_lorem_ipsum(*args, **kwargs)


@pass_eval_context
def _finalize(eval_ctx: Any, value: Any) -> str:
    """Every printed value: refused if undefined anywhere, counted as emitted text.

    Taking the evaluation context also keeps Jinja from evaluating output at compile time.
    """
    _defined(value)
    text = value if isinstance(value, str) else str(value)
    _emit(len(text))
    _record(text)
    return text


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


_environment = _Environment(
    undefined=StrictUndefined, autoescape=False, finalize=_finalize, optimized=False
)
_environment.filters = {
    name: _bounded_filter(name, function) for name, function in {**FILTERS, "sum": _sum}.items()
}
_environment.globals["lipsum"] = _lipsum
# What a template can raise at render time besides Jinja's own errors: ``{{ 1 / 0 }}``,
# ``{{ 'a' + 1 }}``, ``{{ 'x' | int(base=99) }}``, a macro calling itself forever, blocks
# nested deeper than Python compiles, the assertions of Jinja's ``|truncate``... None of them
# may escape as anything but a TemplateError, or a worker would report a step's typo as a crash.
_RENDER_ERRORS = (
    JinjaError,
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    AttributeError,
    RecursionError,
    SyntaxError,
    AssertionError,
)


def _time_limit() -> float:
    from django.conf import settings

    return float(getattr(settings, "ORCHESTRA_TEMPLATE_TIME_LIMIT", DEFAULT_TIME_LIMIT))


class TemplateError(ValueError):
    """A template is malformed, names something undefined, or tried something forbidden."""


def _has_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _check_source(text: str) -> None:
    if len(text) > MAX_TEMPLATE_SOURCE:
        raise TemplateError(
            f"{text[:60]!r}...: a template of {len(text)} characters is longer than "
            f"{MAX_TEMPLATE_SOURCE}; split it into several values or variables"
        )


def render(
    value: Any,
    context: dict[str, Any],
    *,
    secret_names: Collection[str] = frozenset(),
    secrets: set[str] | None = None,
) -> Any:
    """Render every template in ``value`` (strings, lists and dicts, recursively).

    A value without templates comes back as the very same object. The whole call shares one
    budget. A template that reads one of ``secret_names`` (a name, or ``mapping.key``: one key
    of a mapping) adds its output and every value computed while rendering it to ``secrets``,
    also when it fails (its error may quote them).
    """
    if _active.get() is not None:
        return _render(value, context, frozenset(secret_names), secrets)
    limit = _time_limit()
    token = _active.set(_Render(deadline=time.monotonic() + limit, time_limit=limit))
    try:
        return _render(value, context, frozenset(secret_names), secrets)
    finally:
        _active.reset(token)


def _render(
    value: Any, context: dict[str, Any], secret_names: frozenset[str], secrets: set[str] | None
) -> Any:
    if isinstance(value, str):
        return _render_text(value, context, secret_names, secrets)
    if isinstance(value, list):
        items = [_render(item, context, secret_names, secrets) for item in value]
        return value if all(new is old for new, old in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        rendered = {
            key: _render(item, context, secret_names, secrets) for key, item in value.items()
        }
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


def _render_text(
    text: str, context: dict[str, Any], secret_names: frozenset[str], secrets: set[str] | None
) -> Any:
    if not _has_template(text):
        return text
    _check_source(text)
    state = _active.get()
    try:
        if secrets is not None and _reads_secret(text, secret_names):
            state.recording = secrets
        expression = _whole_expression(text)
        if expression is not None:
            result = _json_value(_compile_expression(expression)(**context), text)
        else:
            size, chunks = 0, []
            for chunk in _compile_template(text).generate(context):
                _tick()
                size += len(chunk)
                if size > MAX_TEMPLATE_OUTPUT:
                    raise TemplateError(
                        f"{text!r}: renders more than {MAX_TEMPLATE_OUTPUT} characters"
                    )
                chunks.append(chunk)
            result = "".join(chunks)
        _record(result)
        return result
    except TemplateError:
        raise
    except _RENDER_ERRORS as exc:
        raise TemplateError(f"{text!r}: {exc}") from None
    finally:
        state.recording = None


def _reads_secret(text: str, secret_names: frozenset[str]) -> bool:
    """Whether ``text`` reads one of ``secret_names``: a name, or ``mapping.key`` for one key of
    a mapping (read as ``mapping.key``, ``mapping['key']``, or in a way that may read any key)."""
    names = _names(text)
    if secret_names & names:
        return True
    for secret in secret_names:
        mapping, dot, key = secret.partition(".")
        if dot and mapping in names:
            reads = _member_reads(text, mapping)
            if reads is None or key in reads:
                return True
    return False


def _json_value(value: Any, text: str) -> Any:
    """``value`` as JSON data, within the bounds; an undefined name hidden inside raises."""
    if isinstance(value, Iterator):
        raise TemplateError(
            f"{text!r}: gives a {type(value).__name__}, which is not JSON data "
            "(a filter such as list or string can convert it)"
        )
    measure(value)
    return _json_copy(value, text)


def _json_copy(value: Any, text: str) -> Any:
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming what is missing
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str(value)  # Markup and other str subclasses become plain text
    if isinstance(value, list | tuple):
        return [_json_copy(item, text) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _json_copy(item, text) for key, item in value.items()}
    raise TemplateError(
        f"{text!r}: gives a {type(value).__name__}, which is not JSON data "
        "(a filter such as list or string can convert it)"
    )


@lru_cache(maxsize=1024)
def _parsed(text: str) -> nodes.Template:
    _check_source(text)
    try:
        return _environment.parse(text)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{text!r}: {exc}") from None
    except RecursionError:
        raise TemplateError(f"{text!r}: nested too deeply") from None


@lru_cache(maxsize=1024)
def _names(text: str) -> frozenset[str]:
    try:
        return frozenset(meta.find_undeclared_variables(_parsed(text)))
    except TemplateSyntaxError as exc:  # an unknown filter, found while compiling
        raise TemplateError(f"{text!r}: {exc}") from None


def _template_texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if _has_template(value):
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _template_texts(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _template_texts(item)


def referenced_names(value: Any) -> set[str]:
    """The top-level names the templates in ``value`` read; a syntax error raises TemplateError."""
    names: set[str] = set()
    for text in _template_texts(value):
        names |= _names(text)
    return names


def credential_names(value: Any, known: Collection[str]) -> frozenset[str]:
    """The names of the credentials the templates in ``value`` read.

    ``credentials.NAME`` and ``credentials['NAME']`` read NAME; any other use of
    ``credentials`` (a computed key, the whole mapping, one of its methods) may read any of
    them, so it reads all of ``known``.
    """
    names = member_reads(value, "credentials")
    if names is None or not names <= set(known):
        return frozenset(known)
    return names


def member_reads(value: Any, mapping: str) -> frozenset[str] | None:
    """The keys the templates in ``value`` read of the mapping named ``mapping`` as
    ``mapping.KEY`` or ``mapping['KEY']``; None if one uses it in any other way (a computed
    key, the whole mapping, one of its methods), which may read any key."""
    names: set[str] = set()
    for text in _template_texts(value):
        direct = _member_reads(text, mapping)
        if direct is None:
            return None
        names |= direct
    return frozenset(names)


@lru_cache(maxsize=1024)
def _member_reads(text: str, mapping: str) -> frozenset[str] | None:
    template = _parsed(text)
    uses = sum(1 for node in template.find_all(nodes.Name) if node.name == mapping)
    direct = []
    for node in template.find_all((nodes.Getattr, nodes.Getitem)):
        if not (isinstance(node.node, nodes.Name) and node.node.name == mapping):
            continue
        if isinstance(node, nodes.Getattr):
            direct.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            direct.append(node.arg.value)
    return frozenset(direct) if len(direct) == uses else None


def is_templated(value: Any) -> bool:
    """Whether ``value`` is a string holding a template (its type is only known when rendered)."""
    return isinstance(value, str) and _has_template(value)
