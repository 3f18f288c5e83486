"""The state machines of notifications: a delivery, and a scenario's health.

    Delivery:  PENDING ──2xx / sent──> DELIVERED
               PENDING ──attempts used up, or refused by the outbound policy──> FAILED
    Health:    PASSING <──> FAILING   (FAILING after N consecutive failures; PASSING on a pass)

Each change is one conditional UPDATE (``orchestra.transitions``): of two processes that try the
same change, one wins, and only the winner sends the news.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class DeliveryStatus(models.TextChoices):
    PENDING = "PENDING", _("Pending")
    DELIVERED = "DELIVERED", _("Delivered")
    FAILED = "FAILED", _("Failed")


DELIVERY_SOURCES = {
    DeliveryStatus.DELIVERED: frozenset({DeliveryStatus.PENDING}),
    DeliveryStatus.FAILED: frozenset({DeliveryStatus.PENDING}),
}


class Health(models.TextChoices):
    PASSING = "PASSING", _("Passing")
    FAILING = "FAILING", _("Failing")


HEALTH_SOURCES = {
    Health.FAILING: frozenset({Health.PASSING}),
    Health.PASSING: frozenset({Health.FAILING}),
}


class Event(models.TextChoices):
    LAUNCH_FINISHED = "launch.finished", _("A launch finished")
    SCENARIO_FAILING = "scenario.failing", _("A scenario started failing")
    SCENARIO_RECOVERED = "scenario.recovered", _("A scenario recovered")
