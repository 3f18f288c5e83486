from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class IdempotencyKey(models.Model):
    """The first response to a POST carrying an ``Idempotency-Key``, replayed for 24 hours."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    key = models.CharField(_("key"), max_length=255)
    fingerprint = models.CharField(_("request fingerprint"), max_length=64)
    response_status = models.PositiveSmallIntegerField(_("response status"))
    response_body = models.JSONField(_("response body"))
    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="one_response_per_user_and_key")
        ]

    def __str__(self) -> str:
        return self.key


class ThrottleWindow(models.Model):
    """Requests of one client counted in the current window of its rate limit
    (orchestra.api.throttling, which writes it with one upsert)."""

    key = models.CharField(max_length=255, primary_key=True)
    window_index = models.BigIntegerField()
    count = models.PositiveIntegerField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "orchestra_throttle_window"

    def __str__(self) -> str:
        return self.key


class MetricCounter(models.Model):
    """A running sum kept by database triggers as rows are written (orchestra.metrics).

    Each sum is split over shards (the writing backend's pid modulo ``SHARDS``), so that
    concurrent workers add to different rows instead of queueing on one; a reading adds the
    shards up.
    """

    SHARDS = 64

    # No surrogate id: a sequence restored behind rows (serialized test data) would collide.
    pk = models.CompositePrimaryKey("name", "label", "shard")
    name = models.CharField(max_length=64)
    label = models.CharField(max_length=200)
    shard = models.SmallIntegerField()
    count = models.BigIntegerField(default=0)
    total = models.FloatField(default=0)

    def __str__(self) -> str:
        return f"{self.name}{{{self.label}}}"
