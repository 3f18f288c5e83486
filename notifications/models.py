from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from notifications.states import DeliveryStatus, Event, Health


def all_events() -> list[str]:
    return list(Event.values)


class Channel(models.Model):
    """Where news goes: a webhook (``url``, signed with ``secret``) or e-mail (``emails``),
    for the ``events`` it subscribes to."""

    class Kind(models.TextChoices):
        WEBHOOK = "webhook", _("Webhook")
        EMAIL = "email", _("E-mail")

    name = models.CharField(_("name"), max_length=200, unique=True)
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices, default=Kind.WEBHOOK)
    url = models.URLField(_("URL"), max_length=2000, blank=True)
    secret = models.CharField(
        _("signing secret"), max_length=200, blank=True, help_text=_("HMAC SHA-256 key.")
    )
    emails = models.TextField(_("e-mail addresses"), blank=True, help_text=_("One per line."))
    events = models.JSONField(_("events"), default=all_events)
    enabled = models.BooleanField(_("enabled"), default=True)

    class Meta:
        verbose_name = _("notification channel")
        verbose_name_plural = _("notification channels")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def recipients(self) -> list[str]:
        return [line.strip() for line in self.emails.splitlines() if line.strip()]


class ScenarioHealth(models.Model):
    """Whether a scenario is failing (N consecutive failed runs) or passing, so that each change
    is announced once."""

    scenario = models.OneToOneField(
        "runs.Scenario", on_delete=models.CASCADE, related_name="+", verbose_name=_("scenario")
    )
    status = models.CharField(
        _("health"), max_length=8, choices=Health.choices, default=Health.PASSING
    )
    changed_at = models.DateTimeField(_("changed"), auto_now_add=True)

    class Meta:
        verbose_name = _("scenario health")
        verbose_name_plural = _("scenario health")

    def __str__(self) -> str:
        return f"scenario {self.scenario_id}: {self.status}"


class Delivery(models.Model):
    """One event for one channel; sent by ``notifications.services.delivery_attempt`` until it
    is delivered or its attempts are used up, each attempt in :class:`DeliveryAttempt`."""

    channel = models.ForeignKey(
        Channel, on_delete=models.CASCADE, related_name="deliveries", verbose_name=_("channel")
    )
    event = models.CharField(_("event"), max_length=32, choices=Event.choices)
    body = models.JSONField(_("body"))
    status = models.CharField(
        _("status"), max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    delivered_at = models.DateTimeField(_("delivered"), null=True, blank=True)

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_due_idx",
                condition=models.Q(status="PENDING"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.channel_id} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try to send a delivery: what the receiver answered, or why it could not."""

    delivery = models.ForeignKey(
        Delivery, on_delete=models.CASCADE, related_name="log", verbose_name=_("delivery")
    )
    number = models.PositiveIntegerField(_("attempt"))
    at = models.DateTimeField(_("at"), auto_now_add=True)
    response_status = models.PositiveIntegerField(_("response status"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)
    milliseconds = models.PositiveIntegerField(_("duration (ms)"), default=0)

    class Meta:
        verbose_name = _("delivery attempt")
        verbose_name_plural = _("delivery log")
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="delivery_attempt_once")
        ]

    def __str__(self) -> str:
        return f"delivery {self.delivery_id} attempt {self.number}"
