"""The dead-letter queue made visible: messages are drained from RabbitMQ into ``DeadLetter``
rows (with the reason the worker gave when it rejected them) and can be re-driven.

Whatever reaches the dead-letter queue is poison by definition: NUL bytes in its body or
headers, headers JSON has no spelling for (bytes keys, NaN, dates), an id longer than its
column. Every field is made storable (:mod:`runs.storable`) and cut to its column; a message the
database still refuses is stored as a stand-in that says why. Either way it is acked, so a
poison message never holds up the ones behind it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.db import InterfaceError, OperationalError, transaction
from django.db.models.functions import Now

from runs.models import DeadLetter, DeadLetterStatus
from runs.storable import storable, storable_text

logger = logging.getLogger(__name__)

DRAIN_BATCH = 500
#: Characters of a dead-lettered body kept; a task message is a few hundred.
MAX_BODY_CHARS = 1_000_000
_BIGINT = range(-(2**63), 2**63)


class DeadLetterConflict(Exception):
    """The dead letter was re-driven already, or its message has not been drained yet."""


def dead_letter_note(*, task_id: str, task: str, run_id: int | None, reason: str) -> None:
    """Remember why a worker rejects a message, before it travels to the dead-letter queue."""
    DeadLetter.objects.create(
        **_fitted(task_id=task_id or "", task=task, reason=reason), run_id_hint=_bigint(run_id)
    )


def _fitted(**fields: Any) -> dict[str, Any]:
    """``fields`` of a DeadLetter, each storable and cut to its column's length."""
    fitted = {}
    for name, value in fields.items():
        if name == "headers":
            fitted[name] = storable(value)
            continue
        text = storable_text(value if isinstance(value, str) else str(value))
        limit = DeadLetter._meta.get_field(name).max_length or MAX_BODY_CHARS
        fitted[name] = text[:limit]
    return fitted


def _bigint(value: Any) -> int | None:
    return value if type(value) is int and value in _BIGINT else None


def _run_id_from(body: str) -> int | None:
    try:
        args = json.loads(body)[0]
        return _bigint(args[0]) if args else None
    except (ValueError, TypeError, IndexError, KeyError, RecursionError):
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
            try:
                _store_message(message)
            except (OperationalError, InterfaceError):
                raise  # the database is away: the message stays in the broker
            except Exception as exc:  # whatever it holds, it must not block the queue
                logger.exception("dead letter refused as it is; storing a stand-in")
                _store_stand_in(message, exc)
            message.ack()
            collected += 1
    return collected


def _broker_reason(headers: dict) -> str:
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths else {}
    death = death if isinstance(death, dict) else {}
    return f"{death.get('reason', 'dead-lettered')} by {death.get('queue', '?')}"


def _body_text(body: Any) -> str:
    # Undecodable bytes are kept visible as \xNN escapes rather than replaced.
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body).decode("utf-8", errors="backslashreplace")
    return body if isinstance(body, str) else str(body)


def _store_message(message) -> None:
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id = _fitted(task_id=headers.get("id") or "")["task_id"]
    fields = {
        **_fitted(
            task=headers.get("task") or "",
            body=_body_text(message.body),
            content_type=message.content_type or "",
            headers=headers,
        ),
        "received": True,
    }
    broker_reason = _fitted(reason=_broker_reason(headers))["reason"]
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
                task_id=task_id,
                run_id_hint=_run_id_from(fields["body"]),
                reason=broker_reason,
                **fields,
            )
        else:
            for name, value in fields.items():
                setattr(noted, name, value)
            noted.save()


def _store_stand_in(message, exc: Exception) -> None:
    """A row for a message the database refused even made storable: what is known, and why."""
    DeadLetter.objects.create(
        **_fitted(
            reason=f"stored as a stand-in: {type(exc).__name__}: {exc}",
            body=_body_text(message.body)[:MAX_BODY_CHARS].encode("unicode_escape").decode(),
            content_type=message.content_type or "",
        ),
        received=True,
    )


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
