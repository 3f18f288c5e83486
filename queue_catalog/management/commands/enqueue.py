"""``manage.py enqueue SCENARIO --payload JSON [--count N]``: add records to the queue."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from queue_catalog.services import queue_records_create
from runs.models import Priority, Scenario


class Command(BaseCommand):
    help = "Add launches of a scenario (by name or id) to the scenario queue."

    def add_arguments(self, parser):
        parser.add_argument("scenario", help="Scenario name or id.")
        parser.add_argument("--payload", default="{}", help="JSON object given as `payload`.")
        parser.add_argument("--count", type=int, default=1, help="How many records to add.")
        parser.add_argument("--priority", choices=Priority.values, default=Priority.NORMAL)
        parser.add_argument("--max-attempts", type=int, default=None)

    def handle(self, *args, **options):
        reference = options["scenario"]
        lookup = {"id": int(reference)} if reference.isdigit() else {"name": reference}
        scenario = Scenario.objects.filter(**lookup).first()
        if scenario is None:
            raise CommandError(f"no scenario {reference!r}")
        try:
            payload = json.loads(options["payload"])
        except ValueError as exc:
            raise CommandError(f"--payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise CommandError("--payload must be a JSON object")
        if options["count"] < 1:
            raise CommandError("--count must be at least 1")
        if options["max_attempts"] is not None and not 1 <= options["max_attempts"] <= 100:
            raise CommandError("--max-attempts must be between 1 and 100")
        records = queue_records_create(
            scenario=scenario,
            payloads=[payload] * options["count"],
            priority=options["priority"],
            max_attempts=options["max_attempts"],
        )
        for record in records:
            self.stdout.write(f"record {record.id}: {record.status}")
