"""Rate keys: the budget of requests that every worker shares for one target.

A row holds a key's configuration (set through the API and the admin; all of it optional) and its
state (written only by ``targets.throttle``, on the database's clock). A key that nobody
configured gets its row on first use and is unlimited until the target pushes back.
"""

from __future__ import annotations

import re

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _


class RateKey(models.Model):
    """One fleet-wide budget: a target's ``scheme://host:port`` or a step's ``rate_key``."""

    name = models.CharField(_("name"), max_length=300, unique=True)

    # Configuration: ``requests`` per ``interval_seconds`` with ``burst`` at once (GCRA), and at
    # most ``max_concurrent`` requests in flight. Null: no limit of that kind.
    requests = models.PositiveIntegerField(_("requests"), null=True, blank=True)
    interval_seconds = models.FloatField(_("per (seconds)"), default=1.0)
    burst = models.PositiveIntegerField(_("burst"), default=1)
    max_concurrent = models.PositiveIntegerField(_("max concurrent"), null=True, blank=True)

    # State (targets.throttle only).
    tat = models.DateTimeField(_("theoretical arrival time"), null=True, blank=True)
    blocked_until = models.DateTimeField(_("blocked until"), null=True, blank=True)
    learned_interval_seconds = models.FloatField(
        _("learned interval (s)"),
        null=True,
        blank=True,
        help_text=_("Seconds between requests learned from the target's 429s."),
    )
    requests_total = models.BigIntegerField(_("requests"), default=0)
    pushbacks_total = models.BigIntegerField(_("429s received"), default=0)
    throttled_waits_total = models.BigIntegerField(_("throttled waits"), default=0)
    wait_seconds_total = models.FloatField(_("seconds waited"), default=0.0)
    recent_pushbacks = models.JSONField(_("recent 429s"), default=list, blank=True)
    # What learning needs: the requests granted since ``window_started_at`` (the last pushback,
    # or the start of the key's current busy spell), how many pushbacks came in a row and when
    # the last came; ``release_tat`` paces the release of the runs that park on the key.
    window_started_at = models.DateTimeField(_("counting since"), null=True, blank=True)
    window_requests = models.BigIntegerField(_("requests since"), default=0)
    consecutive_pushbacks = models.PositiveIntegerField(_("429s in a row"), default=0)
    last_pushback_at = models.DateTimeField(_("last 429"), null=True, blank=True)
    #: The interval the key was paced at when the last pushback came: probing is quick up to
    #: near it and slow beyond.
    ceiling_interval_seconds = models.FloatField(_("refused at (s)"), null=True, blank=True)
    release_tat = models.DateTimeField(_("next release of a parked run"), null=True, blank=True)

    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("rate key")
        verbose_name_plural = _("rate keys")
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(interval_seconds__gt=0), name="rate_key_interval_positive"
            ),
            models.CheckConstraint(condition=models.Q(burst__gte=1), name="rate_key_burst_min"),
        ]

    def __str__(self) -> str:
        return self.name


#: How an environment's variable is named: templates read it as ``env.<name>``.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Environment(models.Model):
    """A named system under test (``staging``, ``prod``): what a launch's templates read as
    ``env.*``, and the credentials its runs may use.

    ``variables`` are public; ``secret_variables`` are read the same way (``env.<name>``) but
    never enter a run's stored context: the worker loads them when the run starts, and they
    are redacted wherever the run stores, shows or logs them (``targets.environments``).
    ``credentials`` names the entries of ``ORCHESTRA_CREDENTIALS`` the runs may read; each stays
    bound to its own hosts (``ORCHESTRA_CREDENTIAL_<NAME>_HOSTS``).
    """

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    variables = models.JSONField(_("variables"), default=dict, blank=True)
    secret_variables = models.JSONField(
        _("secret variables"),
        default=dict,
        blank=True,
        help_text=_("Text values; redacted wherever a run stores, shows or logs them."),
    )
    credentials = ArrayField(
        models.CharField(max_length=100),
        verbose_name=_("credentials"),
        default=list,
        blank=True,
        help_text=_("Names from ORCHESTRA_CREDENTIALS the runs of this environment may read."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("environment")
        verbose_name_plural = _("environments")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from targets.environments import environment_problems

        problems = environment_problems(
            variables=self.variables,
            secret_variables=self.secret_variables,
            credentials=self.credentials,
        )
        if problems:
            raise ValidationError(problems)
