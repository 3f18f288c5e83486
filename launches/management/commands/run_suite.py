"""``manage.py run_suite --tag smoke --env staging --wait --junit out.xml``: the CI entry point.

Starts a suite launch (scenarios by tag expression or by name, optionally over a data file,
directly or through the queue), follows it with live progress and exits 0 only when every row
passed: 1 when one did not, 2 on bad arguments or when waiting timed out.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from launches import reports, services
from launches.models import Launch
from launches.rows import RowProblem, file_kind, read_rows
from launches.selectors import FAILING, launch_outcomes, launch_rows, row_of
from launches.states import LaunchStatus
from runs.models import Priority

EXIT_FAILED = 1
EXIT_UNUSABLE = 2  # bad arguments, a refused launch, waiting timed out
FAILING_ROWS_SHOWN = 20


class Command(BaseCommand):
    help = "Start a suite launch (by tag expression or names) and, with --wait, follow it."

    def add_arguments(self, parser):
        parser.add_argument("--tag", help="Tag expression, e.g. 'smoke and not slow'.")
        parser.add_argument(
            "--scenario", action="append", default=[], help="A scenario name (repeatable)."
        )
        parser.add_argument("--env", help="The environment's name.")
        parser.add_argument("--priority", choices=Priority.values, default=Priority.NORMAL)
        parser.add_argument("--via-queue", action="store_true", help="Through the scenario queue.")
        parser.add_argument("--payload", help="JSON object passed as `payload` to every run.")
        parser.add_argument("--data", type=Path, help="CSV or JSON-lines file: one run per row.")
        parser.add_argument("--wait", action="store_true", help="Wait; exit 0 only if all passed.")
        parser.add_argument("--timeout", type=float, default=1800, help="Seconds to wait at most.")
        parser.add_argument("--junit", type=Path, help="Write a JUnit XML report here (--wait).")
        parser.add_argument("--html", type=Path, help="Write an HTML report here (--wait).")

    def handle(self, *args, **options):
        if (options["junit"] or options["html"]) and not options["wait"]:
            raise CommandError("--junit and --html need --wait", returncode=EXIT_UNUSABLE)
        try:
            launch = services.launch_create(
                tags=options["tag"],
                scenarios=options["scenario"] or None,
                environment=options["env"],
                priority=options["priority"],
                via_queue=options["via_queue"],
                payload=self._payload(options["payload"]),
                data=self._data(options["data"]),
            )
        except ValidationError as exc:
            problems = "\n  ".join(f"{f}: {m}" for f, ms in exc.message_dict.items() for m in ms)
            raise CommandError(f"launch refused:\n  {problems}", returncode=EXIT_UNUSABLE) from None
        self.stdout.write(
            f"launch {launch.id}: {', '.join(launch.scenario_names)}"
            f" ({launch.data_rows or 1} row(s) each{', via the queue' if launch.via_queue else ''})"
        )
        if not options["wait"]:
            return
        launch = self._follow(launch, options["timeout"])
        self._summary(launch)
        if options["junit"]:
            options["junit"].write_text(reports.launch_junit_xml(launch))
            self.stdout.write(f"JUnit report: {options['junit']}")
        if options["html"]:
            options["html"].write_text(reports.launch_html_report(launch))
            self.stdout.write(f"HTML report: {options['html']}")
        if launch.status != LaunchStatus.PASSED:
            raise SystemExit(EXIT_FAILED)

    def _payload(self, text: str | None) -> dict | None:
        if text is None:
            return None
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise CommandError(f"--payload is not JSON: {exc}", returncode=EXIT_UNUSABLE) from None
        if not isinstance(payload, dict):
            raise CommandError("--payload must be a JSON object", returncode=EXIT_UNUSABLE)
        return payload

    def _data(self, path: Path | None) -> list | None:
        if path is None:
            return None
        try:
            return read_rows(path.read_bytes(), file_kind(path.name, ""))
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}", returncode=EXIT_UNUSABLE) from None
        except RowProblem as exc:
            raise CommandError(f"{path}: {exc}", returncode=EXIT_UNUSABLE) from None

    def _follow(self, launch: Launch, timeout: float) -> Launch:
        """Print the counts whenever they change until the launch is finished."""
        interactive = self.stdout.isatty()
        deadline = time.monotonic() + timeout
        shown = None
        while True:
            launch.refresh_from_db()
            counts = launch_outcomes(launch)
            line = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items()))
            if line != shown:
                shown = line
                if interactive:
                    sys.stdout.write(f"\r\033[K  {line}")
                    sys.stdout.flush()
                else:
                    self.stdout.write(f"  {line}")
            if launch.is_finished:
                if interactive:
                    sys.stdout.write("\n")
                return launch
            if time.monotonic() > deadline:
                raise CommandError(
                    f"launch {launch.id} still running after {timeout:g}s", returncode=EXIT_UNUSABLE
                )
            time.sleep(0.3)

    def _summary(self, launch: Launch) -> None:
        failing = [
            row_of(item)
            for item in launch_rows(launch, outcomes=list(FAILING))[:FAILING_ROWS_SHOWN]
        ]
        for row in failing:
            where = f" row {row['row']}" if row["row"] else ""
            self.stdout.write(
                self.style.ERROR(
                    f"  ✗ {row['scenario']}{where}: {row['status']} (run {row['run']})"
                    f" {row['error']}"
                )
            )
        counts = launch_outcomes(launch)
        summary = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items()))
        style = self.style.SUCCESS if launch.status == LaunchStatus.PASSED else self.style.ERROR
        self.stdout.write(style(f"launch {launch.id}: {launch.status} ({summary})"))
