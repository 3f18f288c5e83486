"""Writes of rate keys by people (API, admin): their configuration, and lifting a block.

A key's state columns belong to ``targets.throttle``, which updates them from every worker at
once. So nothing here saves a whole row: each write is an UPDATE of its own columns only, and a
configuration change never puts back a ``tat`` or a counter read a moment earlier.
"""

from __future__ import annotations

import math

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models.functions import Least, Now

from targets import selectors
from targets.models import RateKey

# The configuration a person sets; everything else on a key is state.
CONFIG_FIELDS = ("requests", "interval_seconds", "burst", "max_concurrent")
# Bounds of the configuration, shared by the API and the admin: counts fit PostgreSQL's
# integer, and an interval longer than a day is a typo rather than a limit.
MAX_COUNT = 2_147_483_647
MAX_INTERVAL_SECONDS = 86_400.0
NAME_MAX_LENGTH = RateKey._meta.get_field("name").max_length


class RateKeyNameTaken(Exception):
    """Another key has this name (it may have been created by its first request)."""


def validate_interval_seconds(value: float) -> None:
    """An interval is a finite number of seconds, more than 0 and at most a day."""
    if not (math.isfinite(value) and 0 < value <= MAX_INTERVAL_SECONDS):
        raise ValidationError(
            f"must be more than 0 and at most {MAX_INTERVAL_SECONDS:g} seconds", code="range"
        )


def rate_key_create(
    *,
    name: str,
    requests: int | None = None,
    interval_seconds: float = 1.0,
    burst: int = 1,
    max_concurrent: int | None = None,
) -> RateKey:
    """A configured key; raises ``RateKeyNameTaken`` if the name exists (also when a worker
    created it a moment ago)."""
    try:
        with transaction.atomic():
            key = RateKey.objects.create(
                name=name,
                requests=requests,
                interval_seconds=interval_seconds,
                burst=burst,
                max_concurrent=max_concurrent,
            )
    except IntegrityError:
        if RateKey.objects.filter(name=name).exists():
            raise RateKeyNameTaken(name) from None
        raise
    return selectors.rate_key_get(rate_key_id=key.id)


def rate_key_configure(*, rate_key_id: int, **config) -> RateKey:
    """Set some of ``CONFIG_FIELDS`` of a key; its state stays as the throttle left it.
    Raises ``RateKey.DoesNotExist``."""
    unknown = set(config) - set(CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"not configuration: {sorted(unknown)}")
    if not RateKey.objects.filter(id=rate_key_id).update(**config, updated_at=Now()):
        raise RateKey.DoesNotExist(f"rate key {rate_key_id} does not exist")
    return selectors.rate_key_get(rate_key_id=rate_key_id)


def rate_key_delete(*, rate_key_id: int) -> None:
    """Forget a key, its configuration and its state; its next request creates it anew,
    unlimited. Raises ``RateKey.DoesNotExist``."""
    deleted, _ = RateKey.objects.filter(id=rate_key_id).delete()
    if not deleted:
        raise RateKey.DoesNotExist(f"rate key {rate_key_id} does not exist")


def rate_key_unblock(*, rate_key_id: int) -> RateKey:
    """Lift the block a target's 429 put on the key: its next request may go at once, and the
    ones after at the key's pace. Raises ``RateKey.DoesNotExist``.

    A pushback also moves the key's timelines past the block (``tat`` for permits,
    ``release_tat`` for parked runs coming back), so that its waiters are released at the
    key's pace afterwards; clearing ``blocked_until`` alone would leave them waiting as long.
    Both come back to now, with the whole burst free. Runs already parked keep the resume
    time they were given: the sweep wakes them then, at most the block's end.
    """
    updated = RateKey.objects.filter(id=rate_key_id).update(
        blocked_until=None,
        tat=Least("tat", Now()),
        release_tat=Least("release_tat", Now()),
        updated_at=Now(),
    )
    if not updated:
        raise RateKey.DoesNotExist(f"rate key {rate_key_id} does not exist")
    return selectors.rate_key_get(rate_key_id=rate_key_id)
