"""Signals the run engine sends; other apps (the queue) listen without the engine knowing them."""

from django.dispatch import Signal

#: Sent after the transaction that moved a run to a terminal status has committed.
#: Arguments: ``run_id`` (int), ``status`` (a RunStatus value), ``context`` (the launch context).
run_finished = Signal()
