"""``Idempotency-Key`` on POSTs that start work: the same key within 24 hours replays the first
response and starts nothing new."""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from orchestra.api.exceptions import Conflict
from orchestra.models import IdempotencyKey

HEADER = "Idempotency-Key"
KEY_LIFETIME = timedelta(hours=24)
# For ``extend_schema(parameters=[...])`` of every decorated view (with 409 among its responses).
IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    HEADER,
    {"type": "string", "minLength": 1, "maxLength": 255},
    OpenApiParameter.HEADER,
    description="Repeating a key within 24 hours replays the first response (header "
    "`Idempotent-Replayed: true`) and starts nothing; the same key with another body is a 409.",
)
_LOCK_NAMESPACE = 7002


def _fingerprint(request) -> str:
    data = json.dumps(request.data, sort_keys=True, default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{data}".encode()).hexdigest()


def idempotent(view_method):
    """Decorate a DRF view method so that a repeated ``Idempotency-Key`` replays its response.

    The check and the work share one transaction under an advisory lock on (user, key), so two
    concurrent requests with one key cannot both start work; messages the work publishes go out
    only after that transaction commits.
    """

    @functools.wraps(view_method)
    def wrapper(self, request, *args, **kwargs):
        key = request.headers.get(HEADER)
        if key is None:
            return view_method(self, request, *args, **kwargs)
        if not 1 <= len(key) <= 255:
            raise ValidationError({HEADER: ["must be 1 to 255 characters"]})
        fingerprint = _fingerprint(request)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)",
                    [_LOCK_NAMESPACE, zlib.crc32(f"{request.user.pk}:{key}".encode()) - 2**31],
                )
            previous = IdempotencyKey.objects.filter(user=request.user, key=key).first()
            if previous and previous.created_at > timezone.now() - KEY_LIFETIME:
                if previous.fingerprint != fingerprint:
                    raise Conflict(f"{HEADER} {key!r} was already used for a different request")
                return Response(
                    previous.response_body,
                    status=previous.response_status,
                    headers={"Idempotent-Replayed": "true"},
                )
            response = view_method(self, request, *args, **kwargs)
            if 200 <= response.status_code < 300:
                IdempotencyKey.objects.update_or_create(
                    user=request.user,
                    key=key,
                    defaults={
                        "fingerprint": fingerprint,
                        "response_status": response.status_code,
                        "response_body": response.data,
                        "created_at": timezone.now(),
                    },
                )
            return response

    return wrapper


def idempotency_keys_purge() -> int:
    """Delete keys older than their lifetime; returns how many."""
    deleted, _ = IdempotencyKey.objects.filter(
        created_at__lt=timezone.now() - KEY_LIFETIME
    ).delete()
    return deleted
