"""``manage.py queue_status``: every lane with its depth, running record and failures."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from queue_catalog.selectors import lane_summaries


class Command(BaseCommand):
    help = "Show the scenario queue lane by lane: waiting, running, done, failing."

    def handle(self, *args, **options):
        lanes = lane_summaries()
        if not lanes:
            self.stdout.write("the queue is empty")
            return
        width = max(len(lane["scenario"]) for lane in lanes)
        self.stdout.write(
            f"{'lane':<{width}}  {'waiting':>7} {'running':>7} {'done':>6} {'error':>6} "
            f"{'cancelled':>9}  oldest waiting"
        )
        for lane in lanes:
            age = lane["oldest_waiting_seconds"]
            oldest = f"{age:.0f} s" if age is not None else "—"
            line = (
                f"{lane['scenario']:<{width}}  {lane['SCHEDULED']:>7} {lane['RUNNING']:>7} "
                f"{lane['DONE']:>6} {lane['ERROR']:>6} {lane['CANCELLED']:>9}  {oldest}"
            )
            self.stdout.write(self.style.ERROR(line) if lane["ERROR"] else line)
