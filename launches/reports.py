"""Launch reports: JUnit XML (one ``testsuite`` per scenario inside one ``testsuites``; a step
of a row's run is a ``testcase``) and a self-contained HTML page of the rows."""

from __future__ import annotations

from datetime import UTC
from itertools import groupby
from xml.etree import ElementTree

from django.db.models import Prefetch, prefetch_related_objects
from django.template.loader import render_to_string

from launches.models import Launch
from launches.selectors import ROW_KEY, launch_deciding_runs, launch_outcomes, launch_rows, row_of
from runs.models import StepResult, TestRun
from runs.reports import (
    junit_properties,
    junit_testcases,
    junit_testsuites,
    printable,
    step_counts,
)
from runs.selectors import latest_attempt_steps

#: Rows the HTML page lists in full; the counts above them cover every row.
HTML_ROWS = 2000


def _with_steps(runs: list[TestRun]) -> list[TestRun]:
    steps = StepResult.objects.order_by("attempt", "position")
    prefetch_related_objects(runs, Prefetch("steps", queryset=steps))
    return runs


def launch_junit_xml(launch: Launch) -> str:
    """The launch as JUnit XML: per scenario a testsuite holding every row's steps (the latest
    attempt of the run that decides the row), each named ``[row N] step`` in data launches."""
    runs = _with_steps(launch_deciding_runs(launch))
    suites = []
    for scenario_name, scenario_runs in groupby(runs, key=lambda run: run.scenario.name):
        scenario_runs = list(scenario_runs)
        steps_by_run = [(run, latest_attempt_steps(run)) for run in scenario_runs]
        all_steps = [step for _, steps in steps_by_run for step in steps]
        seconds = sum((step.duration_ms or 0) for step in all_steps) / 1000
        counts = step_counts(all_steps)
        suite = ElementTree.Element(
            "testsuite",
            name=scenario_name,
            id=str(launch.id),
            timestamp=launch.started_at.astimezone(UTC).isoformat(timespec="seconds"),
            time=f"{seconds:.3f}",
            **{key: str(value) for key, value in counts.items()},
        )
        junit_properties(
            suite,
            [
                ("launch_id", launch.id),
                ("runs", ",".join(str(run.id) for run in scenario_runs)),
                ("environment", launch.environment.name if launch.environment else ""),
            ],
        )
        for run, steps in steps_by_run:
            row = run.context.get(ROW_KEY)
            junit_testcases(suite, run, steps, prefix=f"[row {row}] " if row else "")
        suites.append(suite)
    return junit_testsuites(f"launch {launch.id}", suites)


def launch_html_report(launch: Launch) -> str:
    """A self-contained HTML page (inline CSS, no scripts): the roll-up, counts and rows."""
    counts = launch_outcomes(launch)
    failing = [row_of(item) for item in launch_rows(launch, outcomes=["FAILED", "ERROR"])[:200]]
    rows = [row_of(item) for item in launch_rows(launch)[:HTML_ROWS]]
    return printable(
        render_to_string(
            "launches/report.html",
            {
                "launch": launch,
                "counts": sorted(counts.items()),
                "total": sum(counts.values()),
                "failing": failing,
                "rows": rows,
                "rows_cut": sum(counts.values()) > HTML_ROWS,
            },
        )
    )
