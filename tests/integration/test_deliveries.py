"""Deliveries sent in this process (no worker takes them first): a receiver down then up
gets the delivery after logged retries with a doubling backoff, attempts are bounded, the
outbound policy refuses an infrastructure address, e-mail goes through Django's backend, and
what is stored is redacted."""

from __future__ import annotations

import json

import pytest
from django.core import mail
from django.test import override_settings

from notifications.models import Channel, Delivery
from notifications.services import deliveries_sweep, delivery_attempt, notify
from tests.support import wait_for
from tests.webhooks import receiver_fixture, webhook  # noqa: F401  (the `receiver` fixture)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db")]


@override_settings(ORCHESTRA_WEBHOOK_BACKOFF_SECONDS=0.2, ORCHESTRA_WEBHOOK_MAX_ATTEMPTS=10)
def test_a_receiver_down_then_up_gets_the_delivery_after_logged_retries(receiver):
    webhook(receiver.url)
    (delivery_id,) = notify(event="launch.finished", body={"launch": {"id": 7}})
    assert delivery_attempt(delivery_id=delivery_id) == "PENDING"
    assert delivery_attempt(delivery_id=delivery_id) is None  # not due: the backoff holds it
    wait_for(
        lambda: deliveries_sweep() and Delivery.objects.get().attempts >= 3,
        timeout=10,
        message="two retries by the sweep",
    )
    receiver.up()
    wait_for(
        lambda: deliveries_sweep() is not None and Delivery.objects.get().status == "DELIVERED",
        timeout=10,
        message="the delivery once the receiver is up",
    )
    delivery = Delivery.objects.get()
    log = list(delivery.log.all())
    assert [a.number for a in log] == list(range(1, delivery.attempts + 1))
    assert all("ConnectError" in a.error for a in log[:-1]) and log[-1].response_status == 204
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(log, log[1:], strict=False)]
    assert gaps[1] >= gaps[0] * 1.5 - 0.05  # the backoff doubles
    assert [e["launch"]["id"] for e in receiver.events] == [7]


@override_settings(ORCHESTRA_WEBHOOK_MAX_ATTEMPTS=2, ORCHESTRA_WEBHOOK_BACKOFF_SECONDS=0)
def test_a_delivery_is_given_up_after_its_attempts(receiver):
    webhook(receiver.url)
    (delivery_id,) = notify(event="launch.finished", body={})
    assert delivery_attempt(delivery_id=delivery_id) == "PENDING"
    assert delivery_attempt(delivery_id=delivery_id) == "FAILED"
    assert Delivery.objects.get().log.count() == 2


def test_the_outbound_policy_refuses_a_webhook_to_the_database():
    webhook("http://127.0.0.1:5432/hook")  # PostgreSQL: infrastructure, denied by default
    (delivery_id,) = notify(event="launch.finished", body={})
    assert delivery_attempt(delivery_id=delivery_id) == "FAILED"  # at once: no retry helps
    (attempt,) = Delivery.objects.get().log.all()
    assert "refused" in attempt.error and attempt.response_status is None


def test_email_goes_through_djangos_backend_and_stored_bodies_are_redacted():
    Channel.objects.create(name="team", kind="email", emails="qa@example.com\nops@example.com")
    (delivery_id,) = notify(
        event="scenario.failing",
        body={"scenario": {"name": "login", "status": "FAILING"}, "password": "hunter2-long"},
        secrets=["s3cr3t-token-value"],
    )
    assert delivery_attempt(delivery_id=delivery_id) == "DELIVERED"
    (message,) = mail.outbox
    assert message.to == ["qa@example.com", "ops@example.com"]
    assert "scenario.failing" in message.subject and "login" in message.subject
    assert "hunter2-long" not in message.body
    (redacted,) = notify(
        event="launch.finished",
        body={"error": "token s3cr3t-token-value"},
        secrets=["s3cr3t-token-value"],
    )
    stored = json.dumps(Delivery.objects.get(id=redacted).body)
    assert "s3cr3t-token-value" not in stored and "token" in stored
