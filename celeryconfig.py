"""Celery settings for orchestra: broker, queues, priorities, dead-lettering, acks, beat.

Every value can be overridden from the environment; see README, "Configuration".
"""

from __future__ import annotations

from kombu import Exchange, Queue

from orchestra.env import env_float, env_int, env_str, load_env_file

load_env_file()

broker_url = env_str("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
broker_connection_retry_on_startup = True
broker_heartbeat = 30
# Publishing retries when the broker is briefly gone, bounded, so a producer never hangs.
broker_transport_options = {"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5}
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 5,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 2,
}

# JSON only: a message carries ids, never pickled objects or secrets.
accept_content = ["json"]
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
task_ignore_result = True

RUNS_QUEUE = "test_runs_queue"
DEAD_LETTER_QUEUE = "test_runs_queue.dead"
CONTROL_QUEUE = "orchestra_control"

runs_exchange = Exchange("orchestra", type="direct", durable=True)
dead_letter_exchange = Exchange("orchestra.dlx", type="direct", durable=True)

# Priorities a producer may ask for; RabbitMQ serves higher numbers first.
PRIORITIES = {"urgent": 9, "normal": 5, "background": 1}
task_default_priority = PRIORITIES["normal"]

task_queues = [
    Queue(
        RUNS_QUEUE,
        runs_exchange,
        routing_key=RUNS_QUEUE,
        durable=True,
        queue_arguments={
            "x-max-priority": 10,
            "x-dead-letter-exchange": dead_letter_exchange.name,
            "x-dead-letter-routing-key": DEAD_LETTER_QUEUE,
        },
    ),
    Queue(CONTROL_QUEUE, runs_exchange, routing_key=CONTROL_QUEUE, durable=True),
]
# Workers never consume the dead-letter queue; it is declared by the worker's consumer
# (orchestra.celery.DeadLetteringConsumer) so that rejected messages always have somewhere to go.
dead_letter_queue = Queue(
    DEAD_LETTER_QUEUE, dead_letter_exchange, routing_key=DEAD_LETTER_QUEUE, durable=True
)
task_default_queue = RUNS_QUEUE
task_default_exchange = runs_exchange.name
task_default_routing_key = RUNS_QUEUE
task_routes = {
    "runs.execute_run": {"queue": RUNS_QUEUE, "routing_key": RUNS_QUEUE},
    "runs.sweep_runs": {"queue": CONTROL_QUEUE, "routing_key": CONTROL_QUEUE},
    "runs.collect_dead_letters": {"queue": CONTROL_QUEUE, "routing_key": CONTROL_QUEUE},
    "queue_catalog.*": {"queue": CONTROL_QUEUE, "routing_key": CONTROL_QUEUE},
    "launches.*": {"queue": CONTROL_QUEUE, "routing_key": CONTROL_QUEUE},
    "notifications.*": {"queue": CONTROL_QUEUE, "routing_key": CONTROL_QUEUE},
}

# Late acks + prefetch 1: a crashed worker's message is redelivered, and an urgent message is not
# stuck behind a buffer of prefetched background ones.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# A task that fails is rejected without requeue, so it lands in the dead-letter queue instead of
# being acked into silence (Celery acks failures by default).
task_acks_on_failure = False
task_acks_on_timeout = False
worker_consumer = "orchestra.celery:DeadLetteringConsumer"
# A run outlives a lost broker connection under its database lease; the lease, not the broker,
# decides who owns it, so long tasks are not cancelled on reconnect.
worker_cancel_long_running_tasks_on_connection_loss = False
# A channel the broker closes is reopened, not fatal. RabbitMQ closes a consumer's channel when a
# delivery stays unacknowledged past its consumer_timeout (30 min by default): a run outliving it
# keeps executing under its lease, the broker redelivers the message, the duplicate is dropped.
# Without this, the whole worker stops with "Unrecoverable error: PreconditionFailed".
broker_channel_error_retry = True

# The soft limit interrupts a run (it ends ERROR "time limit", its finally steps get what is left
# before the hard limit); the hard limit kills the pool child. Celery stamps the publisher's limits
# into each message, and the worker enforces those: every process must share these two values.
task_soft_time_limit = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 3540)
task_time_limit = env_int("CELERY_TASK_TIME_LIMIT", 3600)


def run_time_budget(time_limit: float, soft_time_limit: float) -> float:
    """A run's time budget: the soft limit, always short of the hard one, so a run killed by the
    hard limit is past its budget when its message comes back (and is not executed again)."""
    return max(1.0, min(soft_time_limit, time_limit - 1))


RUN_TIME_BUDGET = run_time_budget(task_time_limit, task_soft_time_limit)

worker_hijack_root_logger = False
worker_send_task_events = False

_sweep_interval = env_float("ORCHESTRA_SWEEP_INTERVAL_SECONDS", 5.0)
beat_schedule = {
    "sweep-runs": {
        "task": "runs.sweep_runs",
        "schedule": _sweep_interval,
        "options": {"expires": _sweep_interval * 2},
    },
    "collect-dead-letters": {
        "task": "runs.collect_dead_letters",
        "schedule": _sweep_interval,
        "options": {"expires": _sweep_interval * 2},
    },
    "sweep-queue": {
        "task": "queue_catalog.sweep_queue",
        "schedule": _sweep_interval,
        "options": {"expires": _sweep_interval * 2},
    },
    "sweep-launches": {
        "task": "launches.sweep_launches",
        "schedule": _sweep_interval,
        "options": {"expires": _sweep_interval * 2},
    },
    "sweep-deliveries": {
        "task": "notifications.sweep_deliveries",
        "schedule": _sweep_interval,
        "options": {"expires": _sweep_interval * 2},
    },
}
# Retention (ORCHESTRA_RETENTION_DAYS): an hourly purge in small batches; no entry when it is 0.
if env_int("ORCHESTRA_RETENTION_DAYS", 0) > 0:
    beat_schedule["purge-runs"] = {
        "task": "queue_catalog.purge_runs",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    }
