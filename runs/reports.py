"""Run reports: JUnit XML (scenario = testsuite, step = testcase) and a self-contained HTML page."""

from __future__ import annotations

import json
import re
from datetime import UTC
from xml.etree import ElementTree

from django.template.loader import render_to_string
from django.utils.translation import gettext_lazy as _

from orchestra.times import elapsed, format_duration, format_time
from runs.models import StepResult, StepStatus, TestRun
from runs.selectors import latest_attempt_steps

# Characters outside XML 1.0's ``Char`` production: most C0 controls, lone surrogates, U+FFFE and
# U+FFFF. XML has no spelling for them, not even a character reference, and a lone surrogate
# cannot be encoded as UTF-8 at all; HTML treats the controls as parse errors.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(document: str) -> str:
    """``document`` with every character XML 1.0 cannot hold written as a visible escape
    (``\\x1b``, ``\\ud800``): the one place both reports become valid for any step output."""
    return _UNPRINTABLE.sub(_escape, document)


_UNSAFE_IN_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def report_filename(run: TestRun, extension: str) -> str:
    """``run-42-<scenario>.<extension>``: the scenario's name cut to letters, digits, ``.``,
    ``_`` and ``-``, so the name is safe in a header, on any file system and in a shell."""
    scenario = _UNSAFE_IN_FILENAME.sub("-", run.scenario.name).strip(".-")[:80] or "scenario"
    return f"run-{run.id}-{scenario}.{extension}"


def _seconds(step: StepResult) -> str:
    return f"{(step.duration_ms or 0) / 1000:.3f}"


def step_counts(steps: list[StepResult]) -> dict[str, int]:
    """JUnit's ``tests``, ``failures``, ``errors`` and ``skipped`` of these steps."""
    return {
        "tests": len(steps),
        "failures": sum(step.status == "FAILED" for step in steps),
        "errors": sum(step.status == "ERROR" for step in steps),
        "skipped": sum(step.status == "SKIPPED" for step in steps),
    }


def _attributes(counts: dict[str, int], seconds: float) -> dict[str, str]:
    return {"time": f"{seconds:.3f}", **{k: str(v) for k, v in counts.items()}}


def junit_testcases(
    suite: ElementTree.Element, run: TestRun, steps: list[StepResult], prefix: str = ""
) -> None:
    """Add one ``testcase`` per step of ``run`` to ``suite`` (names start with ``prefix``)."""
    for step in steps:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=run.scenario.name,
            name=prefix + step.name,
            time=_seconds(step),
        )
        if step.status == "FAILED":
            failure = ElementTree.SubElement(
                case, "failure", message=step.error[:500], type="AssertionError"
            )
            failure.text = json.dumps(step.assertions, indent=2, ensure_ascii=False)
        elif step.status == "ERROR":
            error = ElementTree.SubElement(
                case, "error", message=step.error[:500], type="StepError"
            )
            error.text = step.error
        elif step.status == "SKIPPED":
            ElementTree.SubElement(case, "skipped", message=step.error[:500])
        if step.tries:
            output = ElementTree.SubElement(case, "system-out")
            output.text = json.dumps(
                {
                    "request": step.request,
                    "response": step.response,
                    "captures": step.captures,
                    "tries": step.tries,
                },
                indent=2,
                ensure_ascii=False,
            )


def junit_properties(suite: ElementTree.Element, properties: list[tuple[str, object]]) -> None:
    """Add a ``properties`` element with these name/value pairs to ``suite``."""
    element = ElementTree.SubElement(suite, "properties")
    for name, value in properties:
        ElementTree.SubElement(element, "property", name=name, value=str(value))


def junit_testsuites(name: str, suites: list[ElementTree.Element]) -> str:
    """One ``testsuites`` document holding ``suites``, their counts and time summed."""
    keys = ("tests", "failures", "errors", "skipped")
    counts = {key: sum(int(suite.get(key, "0")) for suite in suites) for key in keys}
    seconds = sum(float(suite.get("time", "0")) for suite in suites)
    root = ElementTree.Element("testsuites", name=name, **_attributes(counts, seconds))
    root.extend(suites)
    ElementTree.indent(root)
    return printable(
        '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="unicode")
    )


def _json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


_STEP_LABELS = dict(StepStatus.choices)


def _report_step(step: StepResult) -> dict:
    return {
        "step": step,
        "failed": step.status in (StepStatus.FAILED, StepStatus.ERROR),
        "duration": format_duration(None if step.duration_ms is None else step.duration_ms / 1000),
        "started": format_time(step.started_at),
        "request": _json(step.request) if step.request else "",
        "response": _json(step.response) if step.response else "",
        "captures": _json(step.captures) if step.captures else "",
        "assertions": [
            {
                **assertion,
                "expected": _json(assertion.get("expected")),
                "actual": _json(assertion.get("actual")),
            }
            for assertion in step.assertions
        ],
        "tries": [
            {
                **item,
                "label": _STEP_LABELS.get(item.get("status"), item.get("status", "")),
                "duration": format_duration((item.get("duration_ms") or 0) / 1000),
            }
            for item in step.tries
        ],
    }


def run_report(run: TestRun) -> dict:
    """What a run's report shows, for the HTML report and the admin's run page alike: a summary,
    the failures of the latest attempt first, then every attempt's steps. Everything shown was
    redacted when it was stored."""
    steps = [_report_step(step) for step in run.steps.order_by("attempt", "position")]
    latest = max((item["step"].attempt for item in steps), default=0)
    attempts = sorted({item["step"].attempt for item in steps})
    return {
        "run": run,
        "duration": format_duration(elapsed(run.started_at, run.finished_at)),
        "times": [
            (_("queued"), format_time(run.queued_at)),
            (_("started"), format_time(run.started_at)),
            (_("finished"), format_time(run.finished_at)),
        ],
        "failures": [item for item in steps if item["failed"] and item["step"].attempt == latest],
        "attempts": [
            {
                "number": number,
                "latest": number == latest,
                "steps": [item for item in steps if item["step"].attempt == number],
            }
            for number in attempts
        ],
    }


def run_junit_xml(run: TestRun) -> str:
    """The run's latest attempt as a JUnit XML document (one testsuite inside testsuites)."""
    steps = latest_attempt_steps(run)
    total = sum((step.duration_ms or 0) for step in steps) / 1000
    suite = ElementTree.Element(
        "testsuite",
        name=run.scenario.name,
        id=str(run.id),
        # JUnit's timestamp is ISO 8601; to the second and in UTC, like every time orchestra shows.
        timestamp=(run.started_at or run.queued_at).astimezone(UTC).isoformat(timespec="seconds"),
        hostname=run.worker.rpartition(":")[0] or "unknown",
        **_attributes(step_counts(steps), total),
    )
    junit_properties(
        suite,
        [
            ("run_id", run.id),
            ("status", run.status),
            ("attempt", run.attempt),
            ("priority", run.priority),
        ],
    )
    junit_testcases(suite, run, steps)
    return junit_testsuites("orchestra", [suite])


def run_html_report(run: TestRun) -> str:
    """A self-contained HTML page (inline CSS, no scripts) with every attempt's steps."""
    return printable(render_to_string("runs/report.html", run_report(run)))
