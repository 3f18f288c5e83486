"""``manage.py run_scenario FILE``: load a scenario file, start a run, optionally wait for it.

With ``--wait`` it follows the run step by step (a progress bar on a terminal, plain lines
otherwise), prints a summary table and exits 0 only if the run passed — ready for CI pipelines.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from runs import reports, services
from runs.models import Priority, Scenario, StepResult, TestRun
from runs.services import ImportOutcome
from runs.sources import SourceError, definition_from_source
from runs.states import TERMINAL_STATUSES

STATUS_MARKS = {"PASSED": "✓", "FAILED": "✗", "ERROR": "!", "SKIPPED": "-"}


def load_scenario_file(path: Path) -> tuple[dict, str]:
    """Read a YAML or JSON scenario file: its definition and its text."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    try:
        definition = definition_from_source(text, kind="JSON" if path.suffix == ".json" else "YAML")
    except SourceError as exc:
        raise CommandError(f"{path} is {exc}") from None
    return definition, text


def save_scenario_file(path: Path, *, force: bool = False) -> tuple[Scenario, ImportOutcome]:
    """Create or update the scenario a file describes (its ``name``, else the file's stem).

    A scenario edited in the admin or the API since its last import is kept unless ``force``.
    """
    definition, text = load_scenario_file(path)
    name = definition.get("name") or path.stem
    try:
        return services.scenario_import(name=name, definition=definition, source=text, force=force)
    except ValidationError as exc:
        problems = "\n  ".join(m for ms in exc.message_dict.values() for m in ms)
        raise CommandError(f"{path} is not a valid scenario:\n  {problems}") from None
    except services.ScenarioImportConflict as exc:
        raise CommandError(f"{path}: {exc}") from None


class Command(BaseCommand):
    help = "Load or update a scenario from a YAML/JSON file and start a run of it."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--payload", default="{}", help="JSON object passed as `payload`.")
        parser.add_argument("--priority", choices=Priority.values, default=Priority.NORMAL)
        parser.add_argument("--wait", action="store_true", help="Wait and exit 0 only if passed.")
        parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait at most.")
        parser.add_argument("--junit", type=Path, help="Write a JUnit XML report here (--wait).")
        parser.add_argument("--html", type=Path, help="Write an HTML report here (--wait).")
        parser.add_argument(
            "--force", action="store_true", help="Replace the scenario even if edited elsewhere."
        )

    def handle(self, *args, **options):
        try:
            payload = json.loads(options["payload"])
        except ValueError as exc:
            raise CommandError(f"--payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise CommandError("--payload must be a JSON object")
        if (options["junit"] or options["html"]) and not options["wait"]:
            raise CommandError("--junit and --html need --wait")
        scenario, _ = save_scenario_file(options["file"], force=options["force"])
        run = services.run_start(scenario=scenario, payload=payload, priority=options["priority"])
        self.stdout.write(f"run {run.id} of {scenario.name} queued ({options['priority']})")
        if not options["wait"]:
            return
        run = self._follow(
            run,
            options["timeout"],
            len(scenario.definition["steps"]) + len(scenario.definition.get("finally", [])),
        )
        self._summary(run)
        if options["junit"]:
            options["junit"].write_text(reports.run_junit_xml(run))
            self.stdout.write(f"JUnit report: {options['junit']}")
        if options["html"]:
            options["html"].write_text(reports.run_html_report(run))
            self.stdout.write(f"HTML report: {options['html']}")
        if run.status != "PASSED":
            raise SystemExit(1)

    def _follow(self, run: TestRun, timeout: float, total_steps: int) -> TestRun:
        """Show each step as it is recorded until the run is finished."""
        interactive = self.stdout.isatty()
        deadline = time.monotonic() + timeout
        shown: set[int] = set()
        while True:
            run.refresh_from_db()
            new_steps = StepResult.objects.filter(run=run).exclude(id__in=shown)
            for step in new_steps.order_by("attempt", "position"):
                shown.add(step.id)
                if interactive:
                    sys.stdout.write("\r\033[K")
                self.stdout.write(self._step_line(step))
            if interactive:
                done = len(shown)
                self._progress(run, min(done, total_steps), total_steps)
            if run.status in TERMINAL_STATUSES:
                if interactive:
                    sys.stdout.write("\r\033[K")
                return run
            if time.monotonic() > deadline:
                raise CommandError(f"run {run.id} still {run.status} after {timeout:g}s")
            time.sleep(0.2)

    def _step_line(self, step: StepResult) -> str:
        mark = STATUS_MARKS.get(step.status, "?")
        duration = f"{step.duration_ms:.0f} ms" if step.duration_ms is not None else ""
        attempt = f" (attempt {step.attempt})" if step.attempt > 1 else ""
        line = f"  {mark} [{step.status:7}] {step.name}{attempt} ({step.plugin}) {duration}"
        if step.error:
            line += f"\n      {step.error}"
        style = self.style.SUCCESS if step.status == "PASSED" else self.style.ERROR
        return style(line) if step.status in ("PASSED", "FAILED", "ERROR") else line

    def _progress(self, run: TestRun, done: int, total: int, width: int = 30) -> None:
        filled = int(width * done / total) if total else width
        bar = "█" * filled + "░" * (width - filled)
        sys.stdout.write(f"\r  {bar} {done}/{total} steps · {run.status.lower()}")
        sys.stdout.flush()

    def _summary(self, run: TestRun) -> None:
        steps = list(run.steps.order_by("attempt", "position"))
        latest = max((s.attempt for s in steps), default=0)
        rows = [s for s in steps if s.attempt == latest]
        width = max([len(s.name) for s in rows] + [4])
        self.stdout.write("")
        self.stdout.write(f"  {'step':<{width}}  {'status':<8} {'duration':>10}")
        for step in rows:
            duration = f"{step.duration_ms:.0f} ms" if step.duration_ms is not None else "—"
            self.stdout.write(f"  {step.name:<{width}}  {step.status:<8} {duration:>10}")
        counts = {status: sum(s.status == status for s in rows) for status in STATUS_MARKS}
        summary = ", ".join(f"{n} {status.lower()}" for status, n in counts.items() if n)
        style = self.style.SUCCESS if run.status == "PASSED" else self.style.ERROR
        error = f" — {run.error}" if run.error and run.status != "PASSED" else ""
        self.stdout.write(style(f"run {run.id}: {run.status} ({summary}){error}"))
