"""Templates: sandboxed, strict about undefined names, and typed when a value is one expression."""

from __future__ import annotations

import pytest

from runs.templating import (
    MAX_TEMPLATE_OUTPUT,
    TemplateError,
    is_templated,
    referenced_names,
    render,
)

CONTEXT = {
    "payload": {"name": "Ada", "tags": ["a", "b"], "age": 36, "nested": {"ok": True}},
    "user_id": 42,
    "ratio": 0.5,
    "nothing": None,
    "items": [1, 2, 3],
    "base_url": "http://target.test",
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ user_id }}", 42),
        ("{{ ratio }}", 0.5),
        ("{{ nothing }}", None),
        ("{{ items }}", [1, 2, 3]),
        ("{{ payload.nested }}", {"ok": True}),
        ("{{ payload.nested.ok }}", True),
        ("{{ user_id + 1 }}", 43),
        ("{{ items | length }}", 3),
        ("{{ [user_id, payload.name] }}", [42, "Ada"]),
        ("{{ {'id': user_id} }}", {"id": 42}),
        ("{{ (1, 2) }}", [1, 2]),
        ("{{user_id}}", 42),
        ("  {{ user_id }}\n", 42),
        ("{{ payload.missing | default(7) }}", 7),
        ("{{ payload['name'] }}", "Ada"),
        ("{{ {'user': {'id': user_id}} }}", {"user": {"id": 42}}),
        ("{{ '}}' }}", "}}"),
        ("{{- user_id -}}", 42),
        ("{{ -user_id }}", -42),
    ],
)
def test_a_value_that_is_one_expression_keeps_its_type(template, expected):
    result = render(template, CONTEXT)

    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ base_url }}/users/{{ user_id }}", "http://target.test/users/42"),
        ("id={{ user_id }}", "id=42"),
        ("{{ user_id }}{{ user_id }}", "4242"),
        ("{{ user_id }} {{ ratio }}", "42 0.5"),
        ("{{ user_id }} }}", "42 }}"),
        ("{# note #}{{ user_id }}", "42"),
        ("{% for tag in payload.tags %}{{ tag }};{% endfor %}", "a;b;"),
        ("{% if payload.nested.ok %}yes{% endif %}", "yes"),
        ("{{ payload.name | upper }}!", "ADA!"),
        ("<{{ payload.name }}>&", "<Ada>&"),  # no HTML escaping: these are not web pages
    ],
)
def test_a_value_with_text_around_templates_renders_to_text(template, expected):
    assert render(template, CONTEXT) == expected


def test_text_without_templates_is_returned_unchanged():
    assert render("plain {text} } {", CONTEXT) == "plain {text} } {"


def test_lists_and_objects_are_rendered_recursively_and_keys_are_left_alone():
    value = {
        "url": "{{ base_url }}/u",
        "json": {"ids": ["{{ user_id }}", 7, None, True], "{{ user_id }}": "{{ payload.name }}"},
    }

    assert render(value, CONTEXT) == {
        "url": "http://target.test/u",
        "json": {"ids": [42, 7, None, True], "{{ user_id }}": "Ada"},
    }


def test_rendering_does_not_change_its_input():
    value = {"a": ["{{ user_id }}"]}

    render(value, CONTEXT)

    assert value == {"a": ["{{ user_id }}"]}


@pytest.mark.parametrize(
    ("template", "missing"),
    [
        ("{{ user_idd }}", "user_idd"),
        ("id={{ user_idd }}", "user_idd"),
        ("{{ payload.nmae }}", "nmae"),
        ("x {{ payload.nested.nope }}", "nope"),
        ("{{ [user_idd] }}", "user_idd"),
        ("{{ {'a': {'b': user_idd}} }}", "user_idd"),
        ("in text {{ [user_idd] }}", "user_idd"),
        ("in text {{ {'a': user_idd} }}", "user_idd"),
        ("{{ items[10] }}", "10"),
        ("{% for x in nope %}{% endfor %}", "nope"),
    ],
)
def test_an_undefined_name_is_an_error_naming_it(template, missing):
    with pytest.raises(TemplateError, match=missing):
        render(template, CONTEXT)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "x {{ ''.__class__ }}",
        "{{ items.__class__.__base__ }}",
        "{{ payload | attr('__class__') }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ items.__len__() }}",
        "{{ render.__globals__ }}",
        "{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}",
        "{{ ''.format.__globals__ }}",
        "{{ namespace.__init__.__globals__ }}",
    ],
)
def test_sandbox_refuses_reaching_python_internals(template):
    context = {**CONTEXT, "render": render}

    with pytest.raises(TemplateError, match="unsafe"):
        render(template, context)


@pytest.mark.parametrize(
    "template",
    [
        "{{ items.append(4) }}",
        "{{ items.pop() }}",
        "{{ items.clear() }}",
        "{{ payload.update({'name': 'Eve'}) }}",
        "{{ payload.setdefault('x', 1) }}",
        "{{ payload.nested.clear() }}",
    ],
)
def test_sandbox_refuses_changing_the_context(template):
    context = {"items": [1, 2, 3], "payload": {"name": "Ada", "nested": {"ok": True}}}

    with pytest.raises(TemplateError, match="unsafe"):
        render(template, context)

    assert context == {"items": [1, 2, 3], "payload": {"name": "Ada", "nested": {"ok": True}}}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 10 ** 9999999 }}", "too large"),  # folded by Jinja's compiler unless intercepted
        ("{{ user_id ** 99999999 }}", "too large"),
        ("{{ 'x' * 10 ** 9 }}", "too large"),
        ("{{ [0] * 10 ** 9 }}", "too large"),
        ("{{ 10 ** 9 * 'x' }}", "too large"),
        ("{{ range(10 ** 9) | list }}", "Range too big"),
        ("{% for i in range(1000) %}{{ 'x' * 10000 }}{% endfor %}", "more than"),
    ],
)
def test_sandbox_refuses_expressions_that_would_exhaust_the_worker(template, message):
    with pytest.raises(TemplateError, match=message):
        render(template, CONTEXT)


def test_moderate_arithmetic_and_repetition_are_allowed():
    assert render("{{ 2 ** 64 }}", {}) == 2**64
    assert render("{{ 'ab' * 3 }}", {}) == "ababab"
    assert render("{{ 2 ** -1 }}", {}) == 0.5
    assert len(render("{{ 'x' * n }}", {"n": MAX_TEMPLATE_OUTPUT})) == MAX_TEMPLATE_OUTPUT


@pytest.mark.parametrize(
    "template",
    [
        "{{ 1 / 0 }}",
        "{{ user_id // 0 }}",
        "{{ payload.name + 1 }}",
        "{{ payload.name - 1 }}",
        "{{ 2.0 ** 5000 }}",
        "{{ payload.name.nope() }}",
        "{{ nothing + 1 }}",
        "{{ '%d' % payload.name }}",
    ],
)
def test_a_failing_expression_is_a_template_error_not_a_crash(template):
    with pytest.raises(TemplateError) as caught:
        render(template, CONTEXT)

    assert template in str(caught.value)


@pytest.mark.parametrize(
    ("template", "type_name"),
    [
        ("{{ range(3) }}", "range"),
        ("{{ lipsum }}", "function"),
        ("{{ self }}", "TemplateReference"),
        ("{{ payload.items() }}", "dict_items"),
        ("{{ {1: 'a'} }}", "dict"),
    ],
)
def test_a_whole_expression_must_give_json_data(template, type_name):
    with pytest.raises(TemplateError, match=f"gives a {type_name}, which is not JSON data"):
        render(template, CONTEXT)


def test_conversions_named_in_the_json_error_work():
    assert render("{{ range(3) | list }}", {}) == [0, 1, 2]
    assert render("{{ payload.items() | list }}", {"payload": {"a": 1}}) == [["a", 1]]


@pytest.mark.parametrize(
    "template", ["{{ 1 + }}", "{{ x", "{% for %}", "{% if x %}", "{{ x | nosuchfilter }}"]
)
def test_malformed_template_is_an_error_when_rendered_and_when_inspected(template):
    with pytest.raises(TemplateError):
        render(template, {"x": 1})
    with pytest.raises(TemplateError):
        referenced_names(template)


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("plain", set()),
        ("{{ a }}", {"a"}),
        ("{{ a.b.c }} and {{ d['e'] }}", {"a", "d"}),
        ("{{ a | default(b) }}", {"a", "b"}),
        ("{% for i in xs %}{{ i }}{{ j }}{% endfor %}", {"xs", "j"}),
        ("{% set k = a %}{{ k }}", {"a"}),
        ("{{ range(3) | list }} {{ namespace() }} {{ lipsum() }}", set()),
        (["{{ a }}", {"k": "{{ b }}", "{{ key }}": 1}, 3, None], {"a", "b"}),
        (42, set()),
    ],
)
def test_referenced_names_lists_the_top_level_names_a_template_reads(value, names):
    assert referenced_names(value) == names


@pytest.mark.parametrize(
    ("value", "templated"),
    [
        ("{{ a }}", True),
        ("x {% if a %}y{% endif %}", True),
        ("plain", False),
        ("{ a }", False),
        (5, False),
        (["{{ a }}"], False),
    ],
)
def test_is_templated_is_true_only_for_strings_holding_a_template(value, templated):
    assert is_templated(value) is templated


def test_a_value_without_templates_comes_back_as_the_same_object():
    value = {"url": "http://target.test", "headers": {"Accept": "json"}, "codes": [200, 201]}

    assert render(value, CONTEXT) is value


def test_a_value_with_a_template_comes_back_as_a_new_object():
    value = {"static": {"a": 1}, "codes": [200, "{{ user_id }}"]}

    rendered = render(value, CONTEXT)

    assert rendered == {"static": {"a": 1}, "codes": [200, 42]}
    assert value == {"static": {"a": 1}, "codes": [200, "{{ user_id }}"]}
    assert rendered["static"] is value["static"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"url": "{{ base_ur }}/users"},
            "with.url: 'base_ur' is undefined — did you mean 'base_url'? "
            "(in '{{ base_ur }}/users')",
        ),
        (
            {"json": {"who": "{{ payload.nmae }}"}},
            "with.json.who: 'dict object' has no attribute 'nmae' — did you mean 'name'? "
            "(in '{{ payload.nmae }}')",
        ),
        (
            {"headers": ["ok", "{{ payload['tag'] }}"]},
            "with.headers.1: 'dict object' has no attribute 'tag' — did you mean 'tags'? "
            "(in \"{{ payload['tag'] }}\")",
        ),
        ({"x": "{{ zzzzzz }}"}, "with.x: 'zzzzzz' is undefined (in '{{ zzzzzz }}')"),
    ],
    ids=["name", "attribute", "list-item", "nothing-close"],
)
def test_an_undefined_name_names_where_and_suggests_the_closest_defined_one(value, message):
    with pytest.raises(TemplateError) as caught:
        render(value, CONTEXT, at="with")

    assert str(caught.value) == message


def test_an_error_without_a_location_quotes_the_template_as_before():
    with pytest.raises(TemplateError) as caught:
        render("{{ user_di }}", CONTEXT)

    assert str(caught.value) == "'{{ user_di }}': 'user_di' is undefined — did you mean 'user_id'?"
