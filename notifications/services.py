"""Writes of notifications: turn an event into one delivery per subscribed channel, follow a
scenario's health, and send a delivery (one attempt at a time, retried with backoff from
``Delivery.next_attempt_at``, which the beat sweep reads: no broker ETA holds a retry).

A receiver that is down costs a logged attempt, never a run: deliveries are written after the
run's or launch's own transaction committed, and sent by the control queue's tasks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from launches.models import Launch
from launches.selectors import launch_outcomes
from notifications.models import Channel, Delivery, DeliveryAttempt, ScenarioHealth
from notifications.states import DELIVERY_SOURCES, HEALTH_SOURCES, DeliveryStatus, Event, Health
from orchestra.transitions import conditional_transition
from plugins.http.plugin import STEP_EXTENSION, CheckedTransport
from plugins.outbound import IPAddress, OutboundRefused, step_outbound_check
from runs.models import TestRun
from runs.redaction import redact
from runs.states import RunStatus

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Orchestra-Signature"
TIMESTAMP_HEADER = "X-Orchestra-Timestamp"
BACKOFF_CAP_SECONDS = 3600.0
JUDGED = (RunStatus.PASSED, RunStatus.FAILED, RunStatus.ERROR)


def backoff_seconds(attempt: int, *, base: float) -> float:
    """Seconds before the attempt after failed attempt ``attempt`` (1, 2, ...): doubling."""
    return min(BACKOFF_CAP_SECONDS, base * 2 ** (attempt - 1))


def body_bytes(body: dict[str, Any]) -> bytes:
    """The exact bytes sent and signed."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, "<timestamp>." + body): the timestamp is signed
    with the body, so a receiver can refuse an old (replayed) request."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def notify(*, event: str, body: dict[str, Any], secrets: Collection[str] = ()) -> list[int]:
    """One pending delivery of ``body`` (redacted here, the one place it is stored) per enabled
    channel subscribed to ``event``; each is sent once this transaction commits."""
    body = redact({"event": event, **body}, secrets)
    channels = [c for c in Channel.objects.filter(enabled=True) if event in c.events]
    with transaction.atomic():
        deliveries = Delivery.objects.bulk_create(
            Delivery(channel=channel, event=event, body=body, next_attempt_at=timezone.now())
            for channel in channels
        )
        ids = [delivery.id for delivery in deliveries]
        if ids:
            transaction.on_commit(lambda: _publish(ids))
    return ids


def _publish(ids: list[int]) -> None:
    from notifications.tasks import deliver

    for delivery_id in ids:
        try:
            deliver.delay(delivery_id)
        except Exception:  # the broker is down: the sweep sends it
            logger.warning("delivery %s not published; the sweep sends it", delivery_id)


def launch_notify(*, launch_id: int) -> list[int]:
    """Announce a finished launch: its status, counts and scenarios."""
    launch = Launch.objects.select_related("environment").get(id=launch_id)
    environment = launch.environment
    body = {
        "launch": {
            "id": launch.id,
            "status": launch.status,
            "tags": launch.tags,
            "scenarios": launch.scenario_names,
            "environment": environment.name if environment else None,
            "via_queue": launch.via_queue,
            "counts": dict(launch_outcomes(launch)),
            "started_at": launch.started_at.isoformat(),
            "finished_at": launch.finished_at.isoformat() if launch.finished_at else None,
        }
    }
    secrets = [str(v) for v in (environment.secret_variables or {}).values()] if environment else []
    return notify(event=Event.LAUNCH_FINISHED, body=body, secrets=secrets)


def scenario_health_update(*, run_id: int) -> str | None:
    """After a run finished: move its scenario to FAILING when its last N judged runs
    (``ORCHESTRA_NOTIFY_FAILING_AFTER``) all failed, back to PASSING when the last one passed,
    and announce the change. The event sent, or None when nothing changed."""
    run = TestRun.objects.select_related("scenario").get(id=run_id)
    threshold = max(1, settings.ORCHESTRA_NOTIFY_FAILING_AFTER)
    latest = list(
        TestRun.objects.filter(scenario_id=run.scenario_id, status__in=JUDGED)
        .exclude(finished_at=None)
        .order_by("-finished_at", "-id")
        .values_list("id", "status", "error")[:threshold]
    )
    if not latest:
        return None
    if latest[0][1] == RunStatus.PASSED:
        to, event = Health.PASSING, Event.SCENARIO_RECOVERED
    elif len(latest) == threshold and all(status != RunStatus.PASSED for _, status, _ in latest):
        to, event = Health.FAILING, Event.SCENARIO_FAILING
    else:
        return None
    health, _ = ScenarioHealth.objects.get_or_create(scenario_id=run.scenario_id)
    if health.status == to or not conditional_transition(
        ScenarioHealth, HEALTH_SOURCES, health.id, to=to, changed_at=Now()
    ):
        return None
    body = {
        "scenario": {"id": run.scenario_id, "name": run.scenario.name, "health": to},
        "runs": [{"id": i, "status": s, "error": e[:500]} for i, s, e in latest],
        "failing_after": threshold,
    }
    notify(event=event, body=body)
    return event


@dataclass(frozen=True)
class _WebhookOutbound:
    """What the http plugin's transport asks of a step, for a webhook: the plugins' outbound
    check (the transport then connects only to the addresses it returned); no credentials."""

    credentials_sent: frozenset[str] = frozenset()

    def check_outbound(self, host: str, port: int) -> list[IPAddress]:
        return step_outbound_check(host, port)


class _Permanent(Exception):
    """A delivery that no retry can help (the outbound policy refuses its URL)."""


def _send_webhook(delivery: Delivery) -> int:
    channel = delivery.channel
    parts = urlsplit(channel.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Permanent(f"not an http(s) URL: {channel.url!r}")
    content = body_bytes(delivery.body)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "orchestra-webhooks",
        "X-Orchestra-Event": delivery.event,
        "X-Orchestra-Delivery": str(delivery.id),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(channel.secret, timestamp, content),
    }
    with httpx.Client(
        transport=CheckedTransport(),
        timeout=settings.ORCHESTRA_WEBHOOK_TIMEOUT_SECONDS,
        follow_redirects=False,
        trust_env=False,
    ) as client:
        try:
            response = client.post(
                channel.url,
                content=content,
                headers=headers,
                extensions={STEP_EXTENSION: _WebhookOutbound()},
            )
        except OutboundRefused as exc:
            raise _Permanent(str(exc)) from None
        return response.status_code


def _send_email(delivery: Delivery) -> None:
    body = delivery.body
    subject_of = body.get("launch") or body.get("scenario") or {}
    subject = f"[orchestra] {delivery.event}: {subject_of.get('name') or subject_of.get('id')}"
    if "status" in subject_of:
        subject += f" {subject_of['status']}"
    send_mail(
        subject,
        json.dumps(body, indent=2, sort_keys=True),
        settings.ORCHESTRA_NOTIFY_EMAIL_FROM,
        delivery.channel.recipients,
    )


def delivery_attempt(*, delivery_id: int) -> str | None:
    """Make the next attempt of a due delivery, if this process claims it (a conditional
    UPDATE that also leases it past the timeout, so no other process sends it meanwhile), log
    it, and settle it: DELIVERED on a 2xx (or a sent e-mail), FAILED when refused by the
    outbound policy or out of attempts, else due again after the backoff. Its status after."""
    lease = timedelta(seconds=settings.ORCHESTRA_WEBHOOK_TIMEOUT_SECONDS + 30)
    claimed = Delivery.objects.filter(
        id=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=Now()
    ).update(attempts=F("attempts") + 1, next_attempt_at=Now() + lease)
    if not claimed:
        return None
    delivery = Delivery.objects.select_related("channel").get(id=delivery_id)
    started = time.monotonic()
    code, error, permanent = None, "", False
    try:
        if delivery.channel.kind == Channel.Kind.EMAIL:
            _send_email(delivery)
        else:
            code = _send_webhook(delivery)
            if not 200 <= code < 300:
                error = f"the receiver answered {code}"
    except _Permanent as exc:
        error, permanent = str(exc), True
    except Exception as exc:  # a receiver or mail server down, slow or broken: retried
        error = f"{type(exc).__name__}: {exc}"[:2000]
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=delivery.attempts,
        response_status=code,
        error=error,
        milliseconds=int((time.monotonic() - started) * 1000),
    )
    if not error:
        conditional_transition(
            Delivery, DELIVERY_SOURCES, delivery_id, to=DeliveryStatus.DELIVERED,
            delivered_at=Now(), next_attempt_at=None,
        )  # fmt: skip
        return DeliveryStatus.DELIVERED
    if permanent or delivery.attempts >= settings.ORCHESTRA_WEBHOOK_MAX_ATTEMPTS:
        conditional_transition(
            Delivery, DELIVERY_SOURCES, delivery_id, to=DeliveryStatus.FAILED, next_attempt_at=None
        )
        logger.warning("delivery %s failed for good: %s", delivery_id, error)
        return DeliveryStatus.FAILED
    wait = backoff_seconds(delivery.attempts, base=settings.ORCHESTRA_WEBHOOK_BACKOFF_SECONDS)
    Delivery.objects.filter(id=delivery_id, status=DeliveryStatus.PENDING).update(
        next_attempt_at=Now() + timedelta(seconds=wait)
    )
    return DeliveryStatus.PENDING


def deliveries_sweep(*, limit: int = 100) -> int:
    """Attempt the due deliveries (first attempts whose message was lost, and retries)."""
    due = Delivery.objects.filter(
        status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now()
    ).order_by("next_attempt_at")
    return sum(
        delivery_attempt(delivery_id=delivery_id) is not None
        for delivery_id in due.values_list("id", flat=True)[:limit]
    )
