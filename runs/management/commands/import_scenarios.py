"""``manage.py import_scenarios DIR``: load every YAML/JSON scenario file of a directory."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from runs.management.commands.run_scenario import save_scenario_file

SUFFIXES = {".yaml", ".yml", ".json"}


class Command(BaseCommand):
    help = "Create or update scenarios from the YAML/JSON files in DIR; each file is reported."

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument(
            "--force",
            action="store_true",
            help="Replace scenarios edited in the admin or the API since their last import.",
        )

    def handle(self, *args, **options):
        directory: Path = options["directory"]
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a directory")
        files = sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES)
        if not files:
            raise CommandError(f"no .yaml, .yml or .json file in {directory}")
        failed = 0
        for path in files:
            try:
                scenario, outcome = save_scenario_file(path, force=options["force"])
            except CommandError as exc:
                failed += 1
                self.stderr.write(self.style.ERROR(f"✗ {path.name}: {exc}"))
            else:
                steps = len(scenario.definition["steps"])
                self.stdout.write(
                    self.style.SUCCESS(
                        f"✓ {path.name}: {scenario.name} ({steps} steps, "
                        f"version {scenario.current_version.number}, {outcome})"
                    )
                )
        self.stdout.write(f"{len(files) - failed} imported, {failed} refused")
        if failed:
            raise SystemExit(1)
