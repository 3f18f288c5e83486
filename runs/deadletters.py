"""The dead-letter queue made visible: messages are drained from RabbitMQ into ``DeadLetter``
rows (with the reason the worker gave when it rejected them) and can be re-driven."""

from __future__ import annotations

import json
import logging

from django.db import transaction
from django.db.models.functions import Now

from runs.models import DeadLetter, DeadLetterStatus

logger = logging.getLogger(__name__)

DRAIN_BATCH = 500


class DeadLetterConflict(Exception):
    """The dead letter was re-driven already, or its message has not been drained yet."""


def dead_letter_note(*, task_id: str, task: str, run_id: int | None, reason: str) -> None:
    """Remember why a worker rejects a message, before it travels to the dead-letter queue."""
    DeadLetter.objects.create(task_id=task_id or "", task=task, run_id_hint=run_id, reason=reason)


def _run_id_from(body: str) -> int | None:
    try:
        args = json.loads(body)[0]
        return args[0] if args and type(args[0]) is int else None
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def dead_letters_collect() -> int:
    """Move every message waiting in the dead-letter queue into the database; returns how many.

    Each message is acked only after its row committed, so a crash in between keeps it in the
    broker (at worst it is recorded twice, never lost).
    """
    from celeryconfig import dead_letter_queue
    from orchestra.celery import app

    collected = 0
    with app.connection_for_write() as connection:
        queue = dead_letter_queue(connection.default_channel)
        queue.declare()
        while collected < DRAIN_BATCH:
            message = queue.get(no_ack=False, accept=["json", "text/plain", "application/data"])
            if message is None:
                break
            _store_message(message)
            message.ack()
            collected += 1
    return collected


def _store_message(message) -> None:
    headers = dict(message.headers or {})
    body = (
        message.body.decode(errors="replace")
        if isinstance(message.body, bytes)
        else str(message.body)
    )
    task_id = str(headers.get("id") or "")
    deaths = headers.get("x-death") or [{}]
    broker_reason = f"{deaths[0].get('reason', 'dead-lettered')} by {deaths[0].get('queue', '?')}"
    fields = {
        "task": str(headers.get("task") or ""),
        "body": body,
        "content_type": message.content_type or "",
        "headers": json.loads(json.dumps(headers, default=str)),
        "received": True,
    }
    with transaction.atomic():
        noted = (
            DeadLetter.objects.select_for_update()
            .filter(task_id=task_id, received=False)
            .order_by("id")
            .first()
            if task_id
            else None
        )
        if noted is None:
            DeadLetter.objects.create(
                task_id=task_id, run_id_hint=_run_id_from(body), reason=broker_reason, **fields
            )
        else:
            for name, value in fields.items():
                setattr(noted, name, value)
            noted.save()


def dead_letter_redrive(*, dead_letter_id: int) -> DeadLetter:
    """Publish the message again to the runs queue, exactly as it was.

    A run that finished meanwhile is not executed again (the claim drops the message); to
    execute a scenario again, re-run it instead.
    """
    from celeryconfig import RUNS_QUEUE, runs_exchange
    from orchestra.celery import app

    with transaction.atomic():
        letter = DeadLetter.objects.select_for_update().get(id=dead_letter_id)
        if letter.status == DeadLetterStatus.REDRIVEN:
            raise DeadLetterConflict(f"dead letter {letter.id} was re-driven already")
        if not letter.received:
            raise DeadLetterConflict(f"dead letter {letter.id} has not been drained yet")
        headers = {k: v for k, v in letter.headers.items() if not k.startswith("x-")}
        with app.producer_or_acquire() as producer:
            # retry: a pooled connection may have died with a broker restart
            producer.publish(
                letter.body.encode(),
                exchange=runs_exchange,
                routing_key=RUNS_QUEUE,
                content_type=letter.content_type or "application/json",
                content_encoding="utf-8",
                headers=headers,
                delivery_mode=2,
                declare=[],
                retry=True,
                retry_policy={"max_retries": 3},
            )
        DeadLetter.objects.filter(id=letter.id).update(
            status=DeadLetterStatus.REDRIVEN, redriven_at=Now()
        )
    letter.refresh_from_db()
    return letter
