"""Secrets never reach storage in any spelling: whatever a template makes from a credential or a
declared secret is redacted from every stored field of the step and the run, and each step
knows which credentials it sends."""

from __future__ import annotations

import io
import json
import logging

import pytest

from plugins.base import PluginResult, ProtocolPlugin
from runs import executor
from runs.executor import run_execute
from runs.models import TestRun
from runs.redaction import RedactingFilter, redacted_in_logs
from runs.secrets import RunSecrets
from runs.templating import TemplateError
from tests.factories import make_scenario

TOKEN = "s3cret-Token-4711"
OTHER = "other-Credential-99"


class EchoPlugin(ProtocolPlugin):
    """Sends nothing; its request, response and data are the parameters it was given, the way
    a target that echoes its request would answer."""

    name = "echo"
    params_schema = {"type": "object"}
    expect_schema = {"type": "object"}
    sent: list[frozenset[str]] = []

    def execute(self, params, context):
        EchoPlugin.sent.append(context.credentials_sent)
        return PluginResult(data=params, request=params, response={"body": json.dumps(params)})


@pytest.fixture
def credentials(settings):
    settings.ORCHESTRA_CREDENTIALS = {"TOKEN": TOKEN, "OTHER": OTHER}
    EchoPlugin.sent = []


def execute(monkeypatch, steps: list[dict], **definition) -> TestRun:
    monkeypatch.setattr(executor, "get_plugin", lambda name: EchoPlugin())
    run = TestRun.objects.create(
        scenario=make_scenario(),
        definition={"steps": steps, **definition},
        context={"payload": {"apiKey": "payload-Key-123456"}},
    )
    run_execute(run_id=run.id, worker="test:1")
    run.refresh_from_db()
    return run


def stored(run: TestRun) -> str:
    """Everything stored about the run and its steps, as text."""
    rows = [
        {f: getattr(step, f) for f in ("request", "response", "captures", "assertions", "tries")}
        | {"error": step.error}
        for step in run.steps.order_by("position")
    ]
    return json.dumps([run.error, rows], ensure_ascii=False)


SPELLINGS = {
    "reverse": ("{{ credentials.TOKEN | reverse }}", TOKEN[::-1]),
    "upper": ("{{ credentials.TOKEN | upper }}", TOKEN.upper()),
    "lower": ("{{ credentials.TOKEN | lower }}", TOKEN.lower()),
    "list-join": ("{{ credentials.TOKEN | list | join('-') }}", "-".join(TOKEN)),
    "list": ("{{ credentials.TOKEN | list }}", json.dumps(list(TOKEN))[1:-1]),
    "replace": ("{{ credentials.TOKEN | replace('-', '+') }}", TOKEN.replace("-", "+")),
    "slice-reversed": ("{{ credentials.TOKEN[::-1] }}", TOKEN[::-1]),
    "slice": ("{{ credentials['TOKEN'][1:] }}", TOKEN[1:]),
    "concat": ("{{ 'Bearer:' ~ credentials.TOKEN ~ ':end' }}", f"Bearer:{TOKEN}:end"),
    "text": ("id {{ credentials.TOKEN }} end", f"id {TOKEN} end"),
    "urlencode": ("{{ ('a b ' ~ credentials.TOKEN) | urlencode }}", f"a%20b%20{TOKEN}"),
    "tojson": ("{{ {'t': credentials.TOKEN} | tojson }}", json.dumps({"t": TOKEN})),
    "string": ("{{ [credentials.TOKEN] | string }}", str([TOKEN])),
    "format-filter": ("{{ '<%s>' | format(credentials.TOKEN | title) }}", f"<{TOKEN.title()}>"),
    "printf": ("{{ '%20s' % credentials.TOKEN }}", f"{TOKEN:>20}"),
    "str-format": ("{{ '{:^30}'.format(credentials.TOKEN) }}", f"{TOKEN:^30}"),
    "center": ("{{ credentials.TOKEN | center(40) }}", TOKEN.center(40)),
    "method": ("{{ credentials.TOKEN.swapcase() }}", TOKEN.swapcase()),
    "whole-mapping": (
        "{{ credentials | dictsort | string }}",
        str(sorted({"OTHER": OTHER, "TOKEN": TOKEN}.items())),
    ),
}


@pytest.mark.parametrize(("template", "spelling"), SPELLINGS.values(), ids=SPELLINGS.keys())
def test_a_credential_in_any_spelling_is_stored_nowhere(
    transactional_db, monkeypatch, credentials, template, spelling
):
    run = execute(
        monkeypatch,
        [
            {
                "name": "send",
                "plugin": "echo",
                "with": {"header": template, "url": "http://t.test/"},
                "capture": {"echoed": "$.header"},
            },
            # the capture, transformed again, and an assertion that quotes both
            {
                "name": "again",
                "plugin": "echo",
                "with": {"again": "{{ echoed | string | reverse }}"},
                "expect": {"json": {"$.again": "{{ echoed }}-no"}},
            },
        ],
    )

    text = stored(run)
    assert run.steps.count() == 2
    for secret in (spelling, TOKEN, TOKEN[::-1], str(spelling)[::-1]):
        assert secret not in text
    assert "[REDACTED]" in text
    assert "http://t.test/" in text  # what reads no secret stays readable


def test_a_derived_variable_and_a_declared_secret_are_redacted_in_every_spelling(
    transactional_db, monkeypatch, credentials
):
    key = "payload-Key-123456"
    run = execute(
        monkeypatch,
        [
            {
                "name": "send",
                "plugin": "echo",
                "with": {"a": "{{ auth | upper }}", "b": "{{ api_key[::-1] }}", "c": "{{ key2 }}"},
            }
        ],
        variables={
            "api_key": "{{ payload.apiKey }}",
            "auth": "Bearer {{ credentials.TOKEN }}",
            "key2": "{{ api_key | replace('-', '.') }}",
        },
        secrets=["api_key"],
    )

    text = stored(run)
    for secret in (f"BEARER {TOKEN.upper()}", key[::-1], key.replace("-", "."), key, TOKEN):
        assert secret not in text


@pytest.mark.parametrize(
    "template",
    [
        "{{ payload[credentials.TOKEN | reverse] }}",
        "{{ payload[credentials.TOKEN[2:]] }}",
        "{{ payload[credentials.TOKEN ~ 'x'] }}",
        "{{ ('{:' ~ (credentials.TOKEN | upper) ~ '}').format(1) }}",
        "{{ range(credentials.TOKEN | reverse) }}",
        "{{ (credentials.TOKEN | upper).nope() }}",
    ],
)
def test_a_template_error_quoting_a_transformed_credential_is_redacted(
    transactional_db, monkeypatch, credentials, template
):
    run = execute(monkeypatch, [{"name": "send", "plugin": "echo", "with": {"x": template}}])

    step = run.steps.get()
    assert step.status == "ERROR"
    text = stored(run)
    for secret in (TOKEN[::-1], TOKEN[2:], TOKEN + "x", TOKEN.upper()):
        assert secret not in text
    assert repr(template)[:20] in step.error  # the error still names the template


def test_an_error_in_a_variable_reading_a_secret_is_redacted_in_the_run_error(
    transactional_db, monkeypatch, credentials
):
    run = execute(
        monkeypatch,
        [{"name": "send", "plugin": "echo", "with": {}}],
        variables={"v": "{{ payload[credentials.TOKEN | reverse] }}"},
    )

    assert run.status == "ERROR"
    assert run.error.startswith("variables: ")
    assert TOKEN[::-1] not in run.error
    assert "[REDACTED]" in run.error


@pytest.mark.parametrize(
    ("with_block", "variables", "sent"),
    [
        ({"h": "{{ credentials.TOKEN }}"}, {}, {"TOKEN"}),
        ({"h": "{{ credentials['OTHER'] | upper }}"}, {}, {"OTHER"}),
        ({"h": "{{ credentials[name] }}"}, {"name": "TOKEN"}, {"TOKEN", "OTHER"}),
        ({"h": "{{ credentials | string }}"}, {}, {"TOKEN", "OTHER"}),
        ({"h": "{{ credentials.get('TOKEN') }}"}, {}, {"TOKEN", "OTHER"}),
        ({"h": "{{ auth }}"}, {"auth": "Bearer {{ credentials.TOKEN }}"}, {"TOKEN"}),
        (
            {"h": "{{ a2 }}"},
            {"a1": "{{ credentials.OTHER }}", "a2": "{{ a1 | reverse }}"},
            {"OTHER"},
        ),
        ({"h": "{{ 'x' }}", "u": "http://t.test/"}, {"auth": "{{ credentials.TOKEN }}"}, set()),
    ],
)
def test_a_step_knows_which_credentials_its_parameters_send(
    transactional_db, monkeypatch, credentials, with_block, variables, sent
):
    execute(monkeypatch, [{"name": "s", "plugin": "echo", "with": with_block}], variables=variables)

    assert EchoPlugin.sent == [frozenset(sent)]


def test_a_capture_holding_a_credential_carries_it_to_later_steps(
    transactional_db, monkeypatch, credentials
):
    execute(
        monkeypatch,
        [
            {
                "name": "login",
                "plugin": "echo",
                "with": {"t": "{{ credentials.TOKEN | reverse }}", "id": 7},
                "capture": {"echoed": "$.t", "user": "$.id"},
            },
            {"name": "use", "plugin": "echo", "with": {"h": "{{ echoed | upper }}"}},
            {"name": "public", "plugin": "echo", "with": {"h": "{{ user }}"}},
        ],
    )

    assert EchoPlugin.sent == [frozenset({"TOKEN"}), frozenset({"TOKEN"}), frozenset()]


def test_run_secrets_learn_values_made_before_a_render_fails():
    secrets = RunSecrets({"T": "abcdefgh"})

    with pytest.raises(TemplateError):
        secrets.render(
            {"x": "{{ payload[credentials.T | upper] }}"},
            {"payload": {}, "credentials": {"T": "abcdefgh"}},
        )

    assert "ABCDEFGH" in secrets.values


def test_log_records_lose_credentials_and_a_running_runs_secrets(caplog, credentials):
    logger = logging.getLogger("orchestra.test")
    run_secrets = {"derived-Value-1"}
    caplog.handler.addFilter(RedactingFilter())

    with redacted_in_logs(run_secrets):
        run_secrets.add("learnt-Later-22")
        logger.warning("sending %s and %s", TOKEN, "derived-Value-1")
        try:
            raise ValueError(f"invalid literal: {OTHER!r} learnt-Later-22")
        except ValueError:
            logger.exception("plugin crashed")
    logger.warning("after the run: derived-Value-1")

    for secret in (TOKEN, OTHER, "learnt-Later-22"):
        assert secret not in caplog.text
    assert caplog.text.count("derived-Value-1") == 1  # once the run is over it is not its secret
    assert "[REDACTED]" in caplog.text
    assert "ValueError" in caplog.text


def test_celery_log_handlers_get_the_redacting_filter_once(credentials):
    from orchestra.celery import redact_celery_logs

    stream = io.StringIO()
    logger = logging.getLogger("orchestra.test.celery")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream))

    redact_celery_logs(logger=logger)
    redact_celery_logs(logger=logger)
    logger.error("token %s", TOKEN)

    assert sum(isinstance(f, RedactingFilter) for f in logger.handlers[0].filters) == 1
    assert stream.getvalue() == "token [REDACTED]\n"


def test_a_runtime_template_error_names_the_step_the_field_and_the_closest_name(
    transactional_db, monkeypatch
):
    run = execute(
        monkeypatch,
        [{"name": "fetch user", "plugin": "echo", "with": {"x": "{{ payload.apikey }}"}}],
    )

    step = run.steps.get()
    assert step.status == "ERROR"
    assert step.error == (
        "step 'fetch user': with.x: 'dict object' has no attribute 'apikey' — "
        "did you mean 'apiKey'? (in '{{ payload.apikey }}')"
    )
