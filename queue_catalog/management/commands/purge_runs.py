"""``manage.py purge_runs --older-than 30d [--dry-run] [--batch-size N]``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queue_catalog.retention import DEFAULT_BATCH_SIZE, parse_age, runs_purge


class Command(BaseCommand):
    help = (
        "Delete finished runs (with their step results) and finished queue records older than "
        "--older-than, in small batches; runs that a kept queue record references stay."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than", required=True, help="An age: 30d, 12h, 90m (a bare number: days)."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            help=f"Rows deleted per transaction (default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args, **options) -> None:
        try:
            age = parse_age(options["older_than"])
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from None
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        counts = runs_purge(
            older_than=age, batch_size=options["batch_size"], dry_run=options["dry_run"]
        )
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(
            f"{verb} {counts.runs} run(s) with {counts.steps} step result(s) and "
            f"{counts.records} queue record(s) finished more than {options['older_than']} ago"
        )
