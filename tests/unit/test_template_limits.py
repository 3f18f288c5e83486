"""Templates cannot exhaust a worker: a corpus of hostile templates, each refused quickly and
without building its huge value, and a property test over a hostile grammar."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runs.templating import MAX_TEMPLATE_OUTPUT, TemplateError, referenced_names, render

CONTEXT = {"payload": {"name": "Ada", "n": 10**9}, "items": [1, 2, 3], "s": "x"}
# A refusal takes at most this long and this much memory (the time budget is 1 s).
SECONDS = 2.0
PEAK_BYTES = 64 * 1024 * 1024

HOSTILE = [
    # string methods with a width, a count or a repeated argument
    "{{ 'x'.ljust(10**9) }}",
    "{{ 'x'.rjust(10**9) }}",
    "{{ 'x'.center(10**9) }}",
    "{{ 'x'.zfill(10**9) }}",
    "{{ ('\t' * 1000).expandtabs(10**6) }}",
    "{{ ('ab' * 100).replace('', 'x' * 100000) }}",
    "{{ ('a' * 100000).replace('a', 'a' * 1000) }}",
    "{{ ('x' * 100000).join(['a'] * 10000) }}",
    "{{ 'aaaa'.translate({97: 'b' * 900000}) }}",
    "{{ (1).to_bytes(10**9, 'big') }}",
    "{{ ('x' * 900000).encode().center(10**9) }}",
    # printf and str.format widths
    "{{ '%0*d' % (10**9, 1) }}",
    "{{ '%999999999d' % 1 }}",
    "{{ '%.999999999f' % 1.5 }}",
    "{{ '%(a)s' * 1000 % {'a': 'x' * 100000} }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ '{:{}}'.format(1, 10**9) }}",
    "{{ '{0}' * 1000 }}{{ ('{0}' * 1000).format('x' * 100000) }}",
    "{{ '{a}{a}{a}{a}{a}{a}{a}{a}{a}{a}{a}{a}'.format_map({'a': 'x' * 100000}) }}",
    "{{ 'x' | format }}{{ '%*s' | format(10**9, 'x') }}",
    # filters with big arguments
    "{{ 'x' | center(10**9) }}",
    "{{ 'x' | center(1000000000) }}",
    "{{ ('a\n' * 1000) | indent(width=10**6) }}",
    "{{ ('a\n' * 1000) | indent('x' * 100000) }}",
    "{{ ('a ' * 100000) | wordwrap(1, wrapstring='x' * 1000) }}",
    "{{ 'x' | truncate(10**9, end='y' * 10**7) }}",
    "{{ range(100000) | join('x' * 100000) }}",
    "{{ ('x' * 500000) | replace('x', 'yy') | replace('y', 'zz') }}",
    "{{ [1] | batch(10**9, 'x') | list }}",
    "{{ [1] | slice(10**9) | list }}",
    "{{ 'x' in ([1] | slice(10**9)) }}",
    "{{ {'a': [[[[1]]]] * 1000} | tojson(indent=10**6) }}",
    "{{ 'www.x.io ' * 10000 | urlize(target='x' * 100000) }}",
    "{{ [[0] * 1000] * 100 | sum(start=[]) }}",
    "{{ range(100000) | map('center', 100000) | list }}",
    "{{ dict(range(100000) | map('string') | map('center', 1000) | batch(2)) }}",
    "{{ lipsum(10**6) }}",
    "{{ range(100000) | list | groupby('real') | list | length }}",
    # repetition and growth through variables, namespaces and literals
    "{{ 'x' * 10 ** 9 }}",
    "{{ [0] * 10 ** 9 }}",
    "{% set a = 'x' * 100000 %}{{ a * 10000 }}",
    "{% set a = 'x' * 100000 %}{% set b = [a, a, a, a, a, a, a, a, a, a, a] %}{{ b }}",
    "{% set a = 'x' * 100000 %}{% set b = [a] * 100 %}{{ b | length }}",
    "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = [ns.l, ns.l] %}"
    "{% endfor %}{{ ns.l | length }}",
    "{% set ns = namespace(l=[1]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}"
    "{% endfor %}{{ ns.l | length }}",
    "{% set ns = namespace(d={}) %}{% for i in range(30) %}{% set ns.d = {'a': ns.d, 'b': ns.d}"
    " %}{% endfor %}{{ ns.d | length }}",
    "{% set a = 'x' * 900000 %}{{ a ~ a }}",
    "{{ ('x' * 900000 | list) }}",
    "{{ ('x' * 900000) | list | length }}",
    # big integers
    "{{ 10 ** 9999999 }}",
    "{{ payload.n ** 99999999 }}",
    "{% set ns = namespace(n=3) %}{% for i in range(100) %}{% set ns.n = ns.n * ns.n %}"
    "{% endfor %}{{ ns.n > 1 }}",
    "{% set ns = namespace(n=2) %}{% for i in range(10000) %}{% set ns.n = ns.n * 2 ** 4000 %}"
    "{% endfor %}{{ ns.n > 1 }}",
    "{{ ('9' * 4000) | int * ('9' * 4000) | int }}",
    # time
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for x in range(100) recursive %}{{ loop(range(100)) }}{% endfor %}",
    "{% for x in range(3) recursive %}{% if loop.depth < 50 %}{{ loop(range(3)) }}{% endif %}"
    "{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) if j < 0 %}{% endfor %}{% endfor %}",
    # emitted text, also where it is thrown away
    "{% for i in range(1000) %}{{ 'x' * 10000 }}{% endfor %}",
    "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endmacro %}"
    "{{ m() | length }}",
    "{% set t %}{% for i in range(100000) %}" + "x" * 1000 + "{% endfor %}{% endset %}"
    "{{ t | length }}",
    "{% filter length %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfilter %}",
    # compile-time evaluation and nesting
    "{{ " + " ~ ".join(["('x' | center(999999))"] * 20) + " }}",
    "{{ " + "(" * 500 + "1" + ")" * 500 + " }}",
    "{{ " + "[" * 500 + "]" * 500 + " }}",
    "{% for a in [1] %}" * 30 + "{% endfor %}" * 30,
]


@pytest.mark.parametrize("template", HOSTILE)
def test_a_hostile_template_is_refused_quickly_and_without_building_its_value(template):
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(TemplateError):
            render(template, CONTEXT)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert elapsed < SECONDS, f"took {elapsed:.2f} s"
    assert peak < PEAK_BYTES, f"peaked at {peak / 2**20:.0f} MiB"


# --- a hostile grammar ------------------------------------------------------------------------

BIG_NUMBERS = ["0", "1", "7", "-3", "99999", "10 ** 6", "10 ** 9", "2 ** 64", "payload.n"]
ATOMS = BIG_NUMBERS + ["'x'", "'ab\\n'", "'\\t'", "''", "s", "items", "[1, 2]", "payload.name"]
FILTERS = [
    "center({n})",
    "indent({n})",
    "indent('{s}')",
    "replace('x', {e})",
    "replace('', {e})",
    "join({e})",
    "batch({n}, 'x')",
    "slice({n})",
    "wordwrap({n})",
    "truncate({n}, end={e})",
    "format({e}, {e})",
    "list",
    "string",
    "upper",
    "reverse",
    "tojson(indent={n})",
    "sum(start=[])",
    "map('center', {n})",
    "int",
    "length",
]
METHODS = [
    "ljust({n})",
    "center({n}, 'y')",
    "zfill({n})",
    "expandtabs({n})",
    "replace('', {e})",
    "join({e})",
    "format({e})",
    "split()",
    "encode()",
]
OPERATORS = ["+", "-", "*", "/", "//", "%", "**", "~"]


def _expression(depth: int) -> st.SearchStrategy[str]:
    atom = st.sampled_from(ATOMS)
    if depth == 0:
        return atom
    inner = _expression(depth - 1)
    number = st.sampled_from(BIG_NUMBERS)

    def fill(pattern: str, draw: st.DrawFn) -> str:
        while "{" in pattern:
            start = pattern.index("{")
            end = pattern.index("}", start)
            slot = pattern[start + 1 : end]
            value = {"n": draw(number), "e": draw(inner), "s": "x" * draw(st.integers(0, 50))}
            pattern = pattern[:start] + value[slot] + pattern[end + 1 :]
        return pattern

    @st.composite
    def compound(draw: st.DrawFn) -> str:
        kind = draw(st.sampled_from(["binop", "filter", "method", "list", "call", "atom"]))
        if kind == "binop":
            return f"({draw(inner)} {draw(st.sampled_from(OPERATORS))} {draw(inner)})"
        if kind == "filter":
            return f"({draw(inner)} | {fill(draw(st.sampled_from(FILTERS)), draw)})"
        if kind == "method":
            return f"({draw(inner)}).{fill(draw(st.sampled_from(METHODS)), draw)}"
        if kind == "list":
            return f"[{', '.join(draw(st.lists(inner, max_size=4)))}]"
        if kind == "call":
            return f"range({draw(number)})"
        return draw(atom)

    return compound()


@st.composite
def templates(draw: st.DrawFn) -> str:
    expression = _expression(3)
    shape = draw(st.sampled_from(["whole", "text", "set", "loop", "namespace"]))
    if shape == "whole":
        return f"{{{{ {draw(expression)} }}}}"
    if shape == "text":
        return f"a {{{{ {draw(expression)} }}}} b {{{{ {draw(expression)} }}}}"
    if shape == "set":
        return f"{{% set v = {draw(expression)} %}}{{{{ v ~ v }}}}{{{{ (v * 3) | length }}}}"
    if shape == "loop":
        count = draw(st.sampled_from(BIG_NUMBERS))
        return f"{{% for i in range({count}) %}}{{{{ {draw(expression)} }}}}{{% endfor %}}"
    return (
        f"{{% set ns = namespace(v={draw(expression)}) %}}"
        f"{{% for i in range(50) %}}{{% set ns.v = ns.v {draw(st.sampled_from(OPERATORS))} "
        f"ns.v %}}{{% endfor %}}{{{{ ns.v | length }}}}"
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(templates())
def test_any_template_of_the_hostile_grammar_renders_within_bounds_or_is_refused(template):
    started = time.monotonic()
    try:
        result = render(template, CONTEXT)
    except TemplateError:
        result = None
    elapsed = time.monotonic() - started

    assert elapsed < SECONDS, f"{template!r} took {elapsed:.2f} s"
    if isinstance(result, str):
        assert len(result) <= MAX_TEMPLATE_OUTPUT
    elif isinstance(result, int) and not isinstance(result, bool):
        assert result.bit_length() <= 4096
    elif isinstance(result, list):
        assert len(str(result)) <= 10 * MAX_TEMPLATE_OUTPUT


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ 'x'.ljust(5) }}|", "x    |"),
        ("{{ 'ab'.center(6, '-') }}", "--ab--"),
        ("{{ '7'.zfill(3) }}", "007"),
        ("{{ 'a\tb'.expandtabs(4) }}", "a   b"),
        ("{{ 'a-b'.replace('-', '+') }}", "a+b"),
        ("{{ '%-4s|%05.1f|%x' % ('a', 2.25, 255) }}", "a   |002.2|ff"),
        ("{{ '%(n)s=%(n)s' % {'n': 1} }}", "1=1"),
        ("{{ '%*d' % (4, 7) }}", "   7"),
        ("{{ '{:>4}|{:.2f}|{:,}|{!r}'.format('a', 1.5, 10**6, 'q') }}", "   a|1.50|1,000,000|'q'"),
        ("{{ '{a}{a}'.format_map({'a': 'x'}) }}", "xx"),
        ("{{ 'a\nb' | indent(2, first=True) }}", "  a\n  b"),
        ("{{ [1, 2, 3] | join(', ') }}", "1, 2, 3"),
        ("{{ 'a b c' | wordwrap(3) }}", "a b\nc"),
        ("{{ [1, 2, 3] | batch(2, 0) | list }}", [[1, 2], [3, 0]]),
        ("{{ [1, 2, 3] | slice(2) | list }}", [[1, 2], [3]]),
        ("{{ [[1], [2]] | sum(start=[]) }}", [1, 2]),
        ("{{ range(5) | sum }}", 10),
        ("{{ {'a': [1]} | tojson }}", '{"a": [1]}'),
        ("{{ '%s-%s' | format('a', 1) }}", "a-1"),
        ("{{ 'x' * 3 ~ 'y' }}", "xxxy"),
        ("{{ 2 ** 4000 > 0 }}", True),
        ("{{ (2 ** 2000) * (2 ** 2000) > 0 }}", True),
        ("{{ range(100000) | list | length }}", 100000),
        ("{{ ('x' * 1000000) | length }}", 1000000),
        ("{{ [1, [2, [3]]] }}", [1, [2, [3]]]),
        ("{{ 'abc'[::-1] }}", "cba"),
        (
            "{% set ns = namespace(s='') %}{% for i in range(10) %}{% set ns.s = ns.s ~ i %}"
            "{% endfor %}{{ ns.s }}",
            "0123456789",
        ),
        (
            "{% macro f(n) %}{% if n %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}",
            "321",
        ),
    ],
)
def test_ordinary_templates_render_as_before(template, expected):
    assert render(template, CONTEXT) == expected


def test_the_time_budget_is_a_setting(settings):
    settings.ORCHESTRA_TEMPLATE_TIME_LIMIT = 0.2
    started = time.monotonic()

    with pytest.raises(TemplateError, match=r"takes longer than 0.2 s to render"):
        render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", {}
        )

    assert time.monotonic() - started < 1.0


def test_a_template_too_long_to_compile_quickly_is_refused_when_saved_and_when_rendered():
    template = "{{ a }}" * 3000

    with pytest.raises(TemplateError, match="longer than 20000"):
        referenced_names(template)
    with pytest.raises(TemplateError, match="longer than 20000"):
        render(template, {"a": 1})
    assert render("{{ a }}" * 2800, {"a": 1}) == "1" * 2800
