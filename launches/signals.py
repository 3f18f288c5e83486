"""Signals the launches send; notifications and schedules listen without launches knowing them."""

from django.dispatch import Signal

#: Sent once per launch, after the statement that finished it committed.
#: Arguments: ``launch_id`` (int), ``status`` (a LaunchStatus value).
launch_finished = Signal()
