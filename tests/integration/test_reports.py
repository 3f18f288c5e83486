"""Reports are valid documents for any step output: JUnit XML for a JUnit parser and an XML
parser, and HTML that escapes what it shows."""

from __future__ import annotations

from xml.etree import ElementTree
from xml.sax.saxutils import escape

import pytest
from django.utils import timezone
from junitparser import Error, Failure, JUnitXml, Skipped

from runs import reports
from runs.models import Scenario, StepResult, TestRun
from tests.factories import delay_step

# What PostgreSQL stores: controls other than NUL, non-characters, markup.
STORABLE_HOSTILE = [
    "escape \x1b[31mred\x1b[0m",
    "form feed \x0c and bell \x07 and \x01\x02\x1f\x7f",
    "non-characters \ufffe \uffff",
    "cdata end ]]> and <![CDATA[ x ]]>",
    "<script>alert(1)</script> & \"quotes\" 'apos'",
    "\r\n\t whitespace",
    "x" * 2_000_000,
]
# What only a step's in-memory values can hold: NUL and lone surrogates.
UNSTORABLE_HOSTILE = ["nul \x00 byte", "lone \ud800 surrogate \udfff", "\x00]]>\x1b\ud83d"]


def _run_with_steps(texts: list[str]) -> TestRun:
    name = "hostile \x1b scenario"
    scenario = Scenario.objects.create(name=name, definition={"steps": [delay_step("a")]})
    now = timezone.now()
    run = TestRun.objects.create(
        scenario=scenario,
        definition=scenario.definition,
        status="FAILED",
        attempt=1,
        worker="host\x0c:1",
        started_at=now,
        finished_at=now,
    )
    statuses = ["FAILED", "ERROR", "PASSED", "SKIPPED"]
    for position, text in enumerate(texts):
        StepResult.objects.create(
            run=run,
            attempt=1,
            position=position,
            name=f"step {position} {text[:100]}",
            plugin="http",
            status=statuses[position % 4],
            duration_ms=1.5,
            request={"body": text, text[:50]: text[:50]},
            response={"body": text},
            captures={"value": text},
            assertions=[{"name": text[:50], "passed": False, "message": text}],
            tries=[{"error": text}],
            error=text,
        )
    return run


def _assert_valid_junit(document: str, cases: int) -> None:
    ElementTree.fromstring(document.encode("utf-8"))
    xml = JUnitXml.fromstring(document)
    suites = list(xml)
    assert len(suites) == 1 and suites[0].tests == cases
    for case in suites[0]:
        for result in case.result:
            assert isinstance(result, Failure | Error | Skipped)
            assert result.message is not None


@pytest.mark.django_db
def test_junit_xml_of_stored_hostile_outputs_is_valid_for_a_junit_and_an_xml_parser(
    api_client,
):
    run = _run_with_steps(STORABLE_HOSTILE)

    response = api_client.get(f"/api/runs/{run.id}/junit/")

    assert response.status_code == 200
    _assert_valid_junit(response.content.decode("utf-8"), len(STORABLE_HOSTILE))
    assert "\\x1b[31mred" in response.content.decode()


@pytest.mark.django_db
def test_junit_xml_of_in_memory_nul_and_surrogates_is_valid(monkeypatch):
    run = _run_with_steps(["placeholder"])
    hostile = [
        StepResult(
            run=run, attempt=1, position=i, name=text, plugin="http", status=status,
            error=text, assertions=[{"message": text}], tries=[{"x": text}],
            request={"body": text}, response={}, captures={},
        )
        for i, (text, status) in enumerate(
            zip(UNSTORABLE_HOSTILE, ["FAILED", "ERROR", "SKIPPED"], strict=True)
        )
    ]  # fmt: skip
    monkeypatch.setattr(reports, "latest_attempt_steps", lambda _run: hostile)

    document = reports.run_junit_xml(run)

    _assert_valid_junit(document, len(hostile))
    document.encode("utf-8")  # a lone surrogate would raise here
    assert "\\x00" in document and "\\ud800" in document


@pytest.mark.parametrize("text", [*STORABLE_HOSTILE[:-1], *UNSTORABLE_HOSTILE])
def test_printable_leaves_only_characters_xml_can_hold(text):
    cleaned = reports.printable(text)

    ElementTree.fromstring(f"<a>{escape(cleaned)}</a>".encode())
    cleaned.encode("utf-8")


@pytest.mark.django_db
def test_the_html_report_escapes_hostile_text(api_client):
    run = _run_with_steps(STORABLE_HOSTILE[:-1])

    response = api_client.get(f"/api/runs/{run.id}/report/")

    html = response.content.decode("utf-8")
    assert response.status_code == 200
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "\x1b" not in html and "\x0c" not in html and "\ufffe" not in html
    assert "\\x1b[31mred" in html


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "extension", "disposition"),
    [("junit", "xml", "attachment"), ("report", "html", "inline")],
)
def test_report_endpoints_send_a_safe_file_name(api_client, path, extension, disposition):
    run = _run_with_steps(["placeholder"])
    Scenario.objects.filter(id=run.scenario_id).update(name='hostile "; ../x/\x1b scenario')

    response = api_client.get(f"/api/runs/{run.id}/{path}/")

    assert response.status_code == 200
    assert response["Content-Disposition"] == (
        f'{disposition}; filename="run-{run.id}-hostile-..-x-scenario.{extension}"'
    )


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("create-and-fetch-user", "run-42-create-and-fetch-user.xml"),
        ("Заказ № 5", "run-42-5.xml"),
        ("...", "run-42-scenario.xml"),
        ("a" * 300, f"run-42-{'a' * 80}.xml"),
    ],
)
def test_report_filename_keeps_only_safe_characters(name, filename):
    run = TestRun(id=42, scenario=Scenario(name=name))

    assert reports.report_filename(run, "xml") == filename
