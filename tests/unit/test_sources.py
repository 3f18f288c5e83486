"""Definition source text: read, refused with a reason, bounded, rendered, diffed."""

from __future__ import annotations

import pytest

from runs.sources import (
    MAX_VALUES,
    SourceError,
    definition_from_source,
    source_diff,
    source_from_definition,
)


def test_yaml_with_comments_and_anchors_reads_into_a_definition():
    text = "# why\ndefaults: &d {seconds: 0}\nsteps:\n  - {name: a, plugin: delay, with: *d}\n"

    assert definition_from_source(text)["steps"][0]["with"] == {"seconds": 0}


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("steps: [\n", "YAML", "not valid YAML"),
        ("{", "JSON", "not valid JSON"),
        ("", "YAML", "not an empty text"),
        ("- a\n", "YAML", "not a list"),
        ("just words", "YAML", "not a text"),
    ],
)
def test_a_text_that_is_no_object_is_refused_saying_why(text, kind, message):
    with pytest.raises(SourceError, match=message):
        definition_from_source(text, kind=kind)


def test_aliases_that_expand_past_the_bound_are_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 8)]
    text = "\n".join(lines) + "\nsteps: *a7\n"

    with pytest.raises(SourceError, match=f"more than {MAX_VALUES} values"):
        definition_from_source(text)


def test_a_definition_without_source_renders_as_yaml_that_reads_back_the_same():
    definition = {"steps": [{"name": "é", "plugin": "delay", "with": {"seconds": 1.5}}]}

    text = source_from_definition(definition)

    assert "name: é" in text and definition_from_source(text) == definition


def test_the_diff_is_unified_and_labelled():
    lines = source_diff("a\nb\n", "a\nc\n", old_label="version 1", new_label="version 2")

    assert lines == ["--- version 1", "+++ version 2", "@@ -1,2 +1,2 @@", " a", "-b", "+c"]
