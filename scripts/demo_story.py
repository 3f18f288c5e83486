"""The demo's story, told through the scenario queue (run by scripts/demo.sh).

Three launches of one scenario run one after another in its lane, another scenario runs in
parallel in its own lane, and a flaky one fails twice and passes on its third start. Every
change of a record is printed as it happens, then a summary; exits 1 unless all are DONE.

    .venv/bin/python scripts/demo_story.py [--timeout SECONDS] [--target URL]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestra.settings")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--target", default="http://127.0.0.1:8081")
    args = parser.parse_args()

    import django

    django.setup()
    from queue_catalog.models import QueueRecord
    from queue_catalog.services import queue_record_create, queue_records_create
    from queue_catalog.states import TERMINAL_STATUSES
    from runs.models import Scenario

    def scenario(name: str) -> Scenario:
        return Scenario.objects.get(name=name)

    target = {"base_url": args.target}
    records = queue_records_create(
        scenario=scenario("create-and-fetch-user"),
        payloads=[{**target, "name": name} for name in ("Grace", "Edsger", "Barbara")],
    )
    health = scenario("health-with-credentials")
    records.append(queue_record_create(scenario=health, payload=target))
    flaky = scenario("flaky-payment")
    records.append(queue_record_create(scenario=flaky, payload={**target, "order": "demo"}))
    ids = [record.id for record in records]
    print(f"    enqueued records {', '.join(map(str, ids))}; following them live:")

    seen: dict[int, tuple] = {}
    started = time.monotonic()
    while True:
        current = list(QueueRecord.objects.filter(id__in=ids).select_related("scenario"))
        for record in sorted(current, key=lambda r: r.id):
            state = (record.status, record.start_count)
            if seen.get(record.id) != state:
                seen[record.id] = state
                print(
                    f"    {time.monotonic() - started:6.1f}s  record {record.id}"
                    f" {record.scenario.name:<24} {record.status:<9} start {record.start_count}"
                )
        if all(r.status in TERMINAL_STATUSES for r in current):
            break
        if time.monotonic() - started > args.timeout:
            print(f"    gave up waiting after {args.timeout:g}s", file=sys.stderr)
            break
        time.sleep(0.2)

    def clock(moment) -> str:
        return moment.strftime("%H:%M:%S.%f")[:-3] if moment else "-"

    print("\n    record  scenario                  status  starts  errors  started       finished")
    for record in sorted(current, key=lambda r: r.id):
        print(
            f"    {record.id:>6}  {record.scenario.name:<24}  {record.status:<6}  "
            f"{record.start_count:>6}  {len(record.errors):>6}  {clock(record.started_at)}  "
            f"{clock(record.finished_at)}"
        )
    return 0 if all(r.status == "DONE" for r in current) else 1


if __name__ == "__main__":
    sys.exit(main())
