"""How big a template's values may be, and how big an operation's result will be before it runs.

:mod:`runs.templating` calls these at every point where a template creates a value. Two kinds
of check:

- :func:`measure` after the fact: the value exists, and it must be within the bounds (its text
  size, its number of items, its nesting, the bits of its integers). Operations whose result is
  at most a small constant times their inputs need nothing more, since their inputs were measured
  when they were made.
- an *estimate* before the fact, for the operations whose result can be far larger than their
  inputs (a width, a count or a repeated argument: ``'x'.ljust(10**9)``, ``'%0*d' % (10**9, 1)``,
  ``'{:>1000000000}'.format(1)``, ``|indent(width=10**9)``, ``'ab'.replace('', 'x' * 99999)``):
  an upper bound of the result's size, computed from the arguments without building the result.

Both raise :class:`jinja2.sandbox.SecurityError`, which Jinja's own filters never catch.
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from functools import lru_cache
from typing import Any

from jinja2.sandbox import SecurityError
from jinja2.utils import Namespace

#: Most characters a value built by a template, or its rendered text, may have.
MAX_TEMPLATE_OUTPUT = 1_000_000
#: Most items (list, tuple and object members, counted at every level) such a value may have;
#: the same as Jinja's bound on ``range``.
MAX_TEMPLATE_ITEMS = 100_000
#: Deepest nesting of lists and objects in such a value.
MAX_TEMPLATE_DEPTH = 100
#: Largest integer, in bits, a template may build or give.
MAX_INT_BITS = 4096

# repr() of a string is at most this many times its length (``\U0001f600`` for one character).
_REPR_FACTOR = 10


def measure(value: Any) -> tuple[int, int]:
    """(characters, depth) of ``value``'s text, roughly; raises SecurityError past a bound.

    Shared references count every time they are reached, because that is what rendering or
    storing the value costs: ``[a, a, a]`` is three times ``a``. A container reached again is
    not walked again (its size is remembered for the walk), so ``[a, a]`` built again and again
    costs one step each time, and nesting is refused past MAX_TEMPLATE_DEPTH before Python's
    own stack could overflow.
    """
    if type(value) is str:  # the common case, without the walk
        chars, depth = len(value), 0
    else:
        chars, _, depth = _measure(value, 0, {})
    if chars > MAX_TEMPLATE_OUTPUT:
        raise SecurityError(f"value larger than {MAX_TEMPLATE_OUTPUT} characters")
    return chars, depth


def _leaf_chars(item: Any) -> int | None:
    if isinstance(item, str | bytes | bytearray):
        return len(item)
    if item is None or isinstance(item, bool):
        return 4
    if isinstance(item, int):
        return _int_chars(item)
    if isinstance(item, float):
        return len(repr(item))
    return None


def _measure(value: Any, level: int, seen: dict[int, tuple]) -> tuple[int, int, int]:
    """(characters, items, depth) of ``value``."""
    leaf = _leaf_chars(value)
    if leaf is not None:
        return leaf, 0, 0
    known = seen.get(id(value))
    if known is not None:
        return known[1:]
    children = _children(value)
    if children is None:
        return 1, 0, 0
    if level >= MAX_TEMPLATE_DEPTH:
        raise SecurityError(f"value nested deeper than {MAX_TEMPLATE_DEPTH} levels")
    chars, items, depth = len(children) + 2, len(children), 0
    for child in children:
        leaf = _leaf_chars(child)
        if leaf is not None:
            chars += leaf
        else:
            child_chars, child_items, child_depth = _measure(child, level + 1, seen)
            chars, items = chars + child_chars, items + child_items
            depth = max(depth, child_depth)
        if items > MAX_TEMPLATE_ITEMS:
            raise SecurityError(f"value has more than {MAX_TEMPLATE_ITEMS} items")
        if chars > MAX_TEMPLATE_OUTPUT:
            raise SecurityError(f"value larger than {MAX_TEMPLATE_OUTPUT} characters")
    if items > MAX_TEMPLATE_ITEMS:
        raise SecurityError(f"value has more than {MAX_TEMPLATE_ITEMS} items")
    seen[id(value)] = (value, chars, items, depth + 1)  # the value kept alive keeps its id
    return chars, items, depth + 1


def _int_chars(value: int) -> int:
    bits = value.bit_length()
    if bits > MAX_INT_BITS:
        raise SecurityError(f"an integer of {bits} bits is too large (at most {MAX_INT_BITS})")
    return bits * 3 // 10 + 2  # decimal digits and a sign


def _children(value: Any) -> list | tuple | None:
    """The members of a container, keys and values alike; None for anything else."""
    if isinstance(value, list | tuple):
        return value
    if isinstance(value, Mapping):
        return list(itertools.chain.from_iterable(value.items()))
    if isinstance(value, set | frozenset | KeysView | ValuesView | ItemsView):
        return list(value)
    if isinstance(value, Namespace):
        return _children(object.__getattribute__(value, "_Namespace__attrs"))
    return None


def text_size(value: Any) -> int:
    """An upper bound of ``len(str(value))``."""
    if isinstance(value, str | bytes):
        return len(value)
    return _REPR_FACTOR * measure(value)[0] + 2


def refuse_larger(estimate: int, what: str) -> None:
    """Raise SecurityError if an operation's estimated result is over the bound."""
    if estimate > MAX_TEMPLATE_OUTPUT:
        raise SecurityError(f"{what} would build more than {MAX_TEMPLATE_OUTPUT} characters")


def _int_or_zero(value: Any) -> int:
    """``value`` as a size argument; anything else is left to Python to refuse."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- printf-style formatting: ``fmt % args`` and ``|format`` ---------------------------------


def check_printf(fmt: str | bytes, args: Any) -> None:
    """Refuse ``fmt % args`` if it would be too large (see :func:`printf_size`)."""
    refuse_larger(printf_size(fmt, args), "this % formatting")


def printf_size(fmt: str | bytes, args: Any) -> int:
    """An upper bound of ``len(fmt % args)``, parsing ``fmt`` the way CPython does.

    A ``*`` width or precision is bounded by the largest integer among the arguments, so the
    bound holds even where this parser and CPython's disagree about which argument is next.
    """
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    mapping = args if isinstance(args, Mapping) else None
    positional = list(args) if isinstance(args, tuple) else [args]
    star = max((abs(_int_or_zero(arg)) for arg in positional), default=0)
    total, index, position, length = len(text), 0, 0, len(text)

    def char(i: int) -> str:
        return text[i] if i < length else ""

    while (index := text.find("%", index)) >= 0:
        index += 1
        key = None
        if char(index) == "(":
            depth, start = 1, index + 1
            index += 1
            while index < length and depth:
                depth += {"(": 1, ")": -1}.get(text[index], 0)
                index += 1
            key = text[start : index - 1]
        while char(index) and char(index) in "-+ #0":
            index += 1
        width = precision = 0
        if char(index) == "*":
            width, index = star, index + 1
        else:
            start = index
            while char(index).isdigit() and char(index).isascii():
                index += 1
            width = int(text[start:index] or 0)
        if char(index) == ".":
            index += 1
            if char(index) == "*":
                precision, index = star, index + 1
            else:
                start = index
                while char(index).isdigit() and char(index).isascii():
                    index += 1
                precision = int(text[start:index] or 0)
        if char(index) and char(index) in "hlL":
            index += 1
        conversion = char(index)
        index += 1
        if conversion == "%":
            total += max(width, 1)
            continue
        if key is not None and mapping is not None:
            value = mapping.get(key)
        else:
            value = positional[position] if position < len(positional) else None
            position += 1
        total += max(width, _conversion_size(conversion, value, precision))
        refuse_larger(total, "this % formatting")
    return total


def _conversion_size(conversion: str, value: Any, precision: int) -> int:
    if conversion in ("s", "b"):
        return text_size(value)
    if conversion in ("r", "a"):
        return _REPR_FACTOR * text_size(value) + 2
    # numbers: digits of the value (at most MAX_INT_BITS of them), the precision, a sign
    return 400 + precision + 2 * text_size(value)


# --- str.format: the format-spec mini-language -----------------------------------------------

_FORMAT_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>[0-9]*)[,_]?(?:\.(?P<precision>[0-9]+))?[a-zA-Z%]?",
    re.DOTALL,
)


def format_field_size(value: Any, spec: str) -> int:
    """An upper bound of ``len(format(value, spec))``; an unknown spec is refused."""
    match = _FORMAT_SPEC.fullmatch(spec)
    if match is None:
        raise SecurityError(f"format specification {spec!r} is not supported")
    width = int(match["width"] or 0)
    precision = int(match["precision"] or 0)
    if isinstance(value, str):
        return max(width, len(value))
    return max(width, 400 + precision + 2 * text_size(value))


# --- methods of strings, bytes and integers --------------------------------------------------


def check_method_call(method: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a call of a str, bytes or int method whose result would be too large."""
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(owner, str | bytes | bytearray):
        estimate = _string_method_size(owner, name, args, kwargs)
    elif isinstance(owner, int) and name == "to_bytes":
        estimate = _int_or_zero(_argument(args, kwargs, 0, "length", 1))
    else:
        return
    refuse_larger(estimate, f".{name}()")


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: Any = None) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _string_method_size(text: str | bytes, name: str, args: tuple, kwargs: dict) -> int:
    length = len(text)
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(length, _int_or_zero(_argument(args, kwargs, 0, "width", 0)))
    if name == "expandtabs":
        tab = "\t" if isinstance(text, str) else b"\t"
        tabsize = _int_or_zero(_argument(args, kwargs, 0, "tabsize", 8))
        return length + text.count(tab) * max(tabsize, 0)
    if name == "replace":
        old = _argument(args, kwargs, 0, "old", "")
        new = _argument(args, kwargs, 1, "new", "")
        count = _argument(args, kwargs, 2, "count", -1)
        return replace_size(text, old, new, count)
    if name == "join":
        items = _argument(args, kwargs, 0, "iterable", ())
        return join_size(items, length)
    if name == "translate":
        table = _argument(args, kwargs, 0, "table", None)
        if isinstance(table, Mapping):
            longest = max((text_size(item) for item in table.values() if item), default=1)
            return length * max(longest, 1)
    return 0


def replace_size(text: str | bytes, old: Any, new: Any, count: Any = -1) -> int:
    """An upper bound of ``len(text.replace(old, new, count))``."""
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return len(text)
    try:
        occurrences = text.count(old) if old else len(text) + 1
    except TypeError:
        return len(text)
    if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < occurrences:
        occurrences = count
    return len(text) + occurrences * len(new)


def join_size(items: Any, separator_length: int) -> int:
    """An upper bound of joining ``items`` with a separator of ``separator_length``."""
    try:
        total = separator_length * max(len(items) - 1, 0)
    except TypeError:  # not sized: Python refuses it, or it was made a list before
        return 0
    refuse_larger(total, "this join")
    for item in items:
        total += text_size(item)
        refuse_larger(total, "this join")
    return total


# --- Jinja's filters and globals whose result can outgrow their input ------------------------


def _center(value: Any, width: Any = 80) -> int:
    return max(text_size(value), _int_or_zero(width))


def _indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> int:
    text = str(s) if isinstance(s, str) else ""
    step = len(width) if isinstance(width, str) else _int_or_zero(width)
    return text_size(s) + (text.count("\n") + 1) * max(step, 0)


def _join(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> int:
    return join_size(value, text_size(d))


def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> int:
    text = s if isinstance(s, str) else str(s) if isinstance(s, int | float) else ""
    return replace_size(text, old, new, -1 if count is None else count)


def _wordwrap(
    environment: Any,
    s: Any,
    width: Any = 79,
    break_long_words: bool = True,
    wrapstring: Any = None,
    break_on_hyphens: bool = True,
) -> int:
    text = s if isinstance(s, str) else ""
    separator = text_size(wrapstring) if wrapstring is not None else 2
    lines = 2 * len(text) // max(_int_or_zero(width), 1) + text.count("\n") + 2
    return len(text) + lines * separator


def _urlize(
    eval_ctx: Any,
    value: Any,
    trim_url_limit: Any = None,
    nofollow: bool = False,
    target: Any = None,
    rel: Any = None,
    extra_schemes: Any = None,
) -> int:
    text = value if isinstance(value, str) else ""
    per_link = text_size(target or "") + text_size(rel or "") + 80
    return 3 * len(text) + len(text.split()) * per_link


def _tojson(eval_ctx: Any, value: Any, indent: Any = None) -> int:
    chars, depth = measure(value)
    step = len(indent) if isinstance(indent, str) else _int_or_zero(indent)
    return 6 * chars + chars * max(step, 0) * (depth + 1)


def _batch(value: Any, linecount: Any, fill_with: Any = None) -> int:
    fill = text_size(fill_with) + 1 if fill_with is not None else 0
    return _int_or_zero(linecount) * fill


def _slice(eval_ctx: Any, value: Any, slices: Any, fill_with: Any = None) -> int:
    fill = text_size(fill_with) + 1 if fill_with is not None else 0
    return _int_or_zero(slices) * (fill + 2)


def _format(value: Any, *args: Any, **kwargs: Any) -> int:
    return printf_size(value if isinstance(value, str) else str(value), kwargs or args)


def _lipsum(n: Any = 5, html: bool = True, min: Any = 20, max: Any = 100) -> int:  # noqa: A002
    return _int_or_zero(n) * _int_or_zero(max) * 16


#: Estimators of the filters whose result can be much larger than their input, by filter name;
#: each takes the filter's own arguments.
FILTER_ESTIMATES = {
    "center": _center,
    "indent": _indent,
    "join": _join,
    "replace": _replace,
    "wordwrap": _wordwrap,
    "urlize": _urlize,
    "tojson": _tojson,
    "batch": _batch,
    "slice": _slice,
    "format": _format,
}
LIPSUM_ESTIMATE = _lipsum


@lru_cache(maxsize=64)
def _signature(estimate: Any) -> inspect.Signature:
    return inspect.signature(estimate)


def check_estimate(estimate: Any, name: str, args: tuple, kwargs: dict) -> None:
    """Refuse a filter or global call whose ``estimate`` of its result is over the bound.

    Arguments that do not fit the signature are let through: the call itself then raises.
    """
    try:
        _signature(estimate).bind(*args, **kwargs)
    except TypeError:
        return
    refuse_larger(estimate(*args, **kwargs), name)
