"""What-ifs for bench/README.md: orchestra's own workers with one change, to measure it.

``bench/throughput.py --whatif NAME`` starts the orchestra workers with ``-A bench.whatif`` and
``ORCHESTRA_WHATIF=NAME``. Nothing here is how orchestra runs.

- ``reconnect``: Celery's own Django behaviour, which orchestra replaces in
  ``orchestra/celery.py``: the connection is closed before and after every task, so each run
  opens a new one.

(The earlier what-ifs ``one-statement-finish`` and ``no-health-check`` are now how orchestra
works: ``runs.states.finish_run`` and ``orchestra.celery.keep_database_connections``.)
"""

from __future__ import annotations

import os

from celery import signals

from orchestra.celery import app

WHATIFS = ("reconnect",)
WHATIF = os.environ.get("ORCHESTRA_WHATIF", "")
if WHATIF not in WHATIFS:
    raise RuntimeError(f"ORCHESTRA_WHATIF must be one of {WHATIFS}, got {WHATIF!r}")


@signals.worker_process_init.connect
def _apply_whatif(**kwargs) -> None:
    """In every pool process, after the fork and before its first task."""
    from celery.fixups.django import DjangoFixup

    from orchestra import celery as orchestra_celery

    for handler in (signals.task_prerun, signals.task_postrun):
        handler.disconnect(orchestra_celery._close_old_connections)
    for fixup in app._fixups:
        if isinstance(fixup, DjangoFixup):
            signals.task_prerun.connect(fixup.worker_fixup.on_task_prerun)
            signals.task_postrun.connect(fixup.worker_fixup.on_task_postrun)


__all__ = ["app"]
