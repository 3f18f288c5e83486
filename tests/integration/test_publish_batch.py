"""``runs_publish`` publishes a batch of runs on one producer: the messages are the ones
``execute_run.apply_async`` sends, read back from the real RabbitMQ."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from celeryconfig import PRIORITIES, RUNS_QUEUE, task_queues
from runs.models import Priority, TestRun
from runs.services import run_task_label, runs_publish, runs_start, runs_sweep
from runs.tasks import execute_run
from tests.conftest import broker_connection, purge_queues
from tests.factories import delay_step, make_scenario

pytestmark = pytest.mark.django_db(transaction=True)

RUNS_QUEUE_DECLARATION = next(queue for queue in task_queues if queue.name == RUNS_QUEUE)


def _drain() -> list:
    """Every message now in the runs queue (acked)."""
    found = []
    with broker_connection() as conn:
        queue = RUNS_QUEUE_DECLARATION(conn.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            found.append(message)
    return found


def test_a_batch_publishes_what_apply_async_would():
    purge_queues()
    scenario = make_scenario([delay_step("wait")])
    execute_run.apply_async(
        args=[0], priority=PRIORITIES["normal"], shadow=run_task_label(0, scenario.name)
    )
    (reference,) = _drain()
    runs = runs_start(scenario=scenario, payloads=[{"row": n} for n in range(50)])
    urgent = runs_start(scenario=scenario, payloads=[{}], priority=Priority.URGENT)

    messages = _drain()

    # RabbitMQ hands out the urgent message first, then the others in publishing order.
    assert [m.properties["priority"] for m in messages] == [9] + [5] * 50
    assert [m.decode()[0] for m in messages[1:]] == [[run.id] for run in runs]
    assert messages[0].decode()[0] == [urgent[0].id]
    ignored = {"id", "root_id", "argsrepr", "shadow"}
    for message, run in zip(messages[1:], runs, strict=True):
        assert {k: v for k, v in message.headers.items() if k not in ignored} == {
            k: v for k, v in reference.headers.items() if k not in ignored
        }
        assert message.headers["shadow"] == run_task_label(run.id, scenario.name)
        assert message.headers["root_id"] == message.headers["id"]
        assert message.properties["delivery_mode"] == reference.properties["delivery_mode"] == 2
        assert message.content_type == "application/json"
        assert message.delivery_info["routing_key"] == RUNS_QUEUE
    assert len({m.headers["id"] for m in messages}) == 51
    assert not TestRun.objects.filter(dispatched_at__isnull=True).exists()


def test_a_run_whose_publish_fails_is_left_to_the_sweep(monkeypatch):
    purge_queues()
    scenario = make_scenario([delay_step("wait")])
    runs = [
        TestRun.objects.create(scenario=scenario, definition=scenario.definition, context={})
        for _ in range(3)
    ]
    from kombu import Producer

    real_publish = Producer.publish

    def publish(self, body, **kwargs):
        if body[0] == [runs[1].id]:
            raise ConnectionError("broker gone")
        return real_publish(self, body, **kwargs)

    monkeypatch.setattr(Producer, "publish", publish)
    runs_publish(runs)

    assert sorted(m.decode()[0][0] for m in _drain()) == [runs[0].id, runs[2].id]
    unpublished = TestRun.objects.filter(dispatched_at__isnull=True)
    assert list(unpublished.values_list("id", flat=True)) == [runs[1].id]


def test_many_runs_are_inserted_set_based_as_new_run_makes_one():
    purge_queues()
    scenario = make_scenario([delay_step("wait")])
    (single,) = runs_start(scenario=scenario, payloads=[{"n": 0}], context={"launchId": 7})
    payloads = [{"n": n} for n in range(1, 2501)]

    with CaptureQueriesContext(connection) as queries:
        runs = runs_start(
            scenario=scenario,
            payloads=payloads,
            priority=Priority.BACKGROUND,
            context={"launchId": 7},
            row_key="launchRow",
        )

    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 3  # RUNS_PER_INSERT rows per statement
    stored = {run.id: run for run in TestRun.objects.filter(id__in=[run.id for run in runs])}
    assert [stored[run.id].context for run in runs] == [
        {"launchId": 7, "payload": payload, "launchRow": row}
        for row, payload in enumerate(payloads, start=1)
    ]
    assert [run.id for run in runs] == sorted(stored)
    reference = TestRun.objects.get(id=single.id)
    ignored = {"id", "queued_at", "context", "priority", "dispatched_at", "_state"}
    for run in runs[:: len(runs) // 10]:
        row = stored[run.id]
        assert {k: v for k, v in vars(row).items() if k not in ignored} == {
            k: v for k, v in vars(reference).items() if k not in ignored
        }
        assert (run.status, run.priority, run.scenario_id) == (
            row.status,
            Priority.BACKGROUND,
            scenario.id,
        )
        assert run.queued_at == row.queued_at
    assert len(_drain()) == 2501
    assert not TestRun.objects.filter(dispatched_at__isnull=True).exists()


def test_messages_are_held_back_until_the_flush_and_a_failed_flush_is_left_to_the_sweep(
    monkeypatch,
):
    from amqp.transport import TCPTransport

    purge_queues()
    scenario = make_scenario([delay_step("wait")])
    runs = [
        TestRun.objects.create(scenario=scenario, definition=scenario.definition, context={})
        for _ in range(3)
    ]

    def reset(self, data):
        raise OSError("connection reset by peer")

    # Only the flush looks the transport's write up anew: the frames of each publish went to the
    # hold-back buffer, so nothing reaches the broker when that one write fails.
    monkeypatch.setattr(TCPTransport, "write", reset)
    runs_publish(runs)
    monkeypatch.undo()

    assert _drain() == []
    assert TestRun.objects.filter(dispatched_at__isnull=True).count() == 3
    TestRun.objects.update(queued_at=timezone.now() - timedelta(hours=1))
    assert runs_sweep()["republished"] == 3
    assert sorted(m.decode()[0][0] for m in _drain()) == [run.id for run in runs]
    assert not TestRun.objects.filter(dispatched_at__isnull=True).exists()


def test_a_batch_on_a_connection_that_has_not_declared_the_queue_yet():
    """The declaration waits for the broker's answer: it must not sit in the held-back writes."""
    purge_queues()
    scenario = make_scenario([delay_step("wait")])
    with broker_connection() as conn:
        conn.default_channel.queue_delete(RUNS_QUEUE)
    with execute_run.app.producer_or_acquire() as producer:
        producer.connection.declared_entities.clear()
    done = []

    def start() -> None:
        try:
            done.append(runs_start(scenario=scenario, payloads=[{}, {}, {}]))
        finally:
            connection.close()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(timeout=20)

    assert done, "runs_publish hung"
    assert sorted(m.decode()[0][0] for m in _drain()) == sorted(run.id for run in done[0])
