"""The Celery application; its settings live in ``celeryconfig.py``."""

from __future__ import annotations

import os

from celery import Celery, bootsteps, signals
from celery.loaders.app import AppLoader
from celery.worker.consumer import Consumer

from orchestra.env import exit_on_configuration_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestra.settings")


class DeadLetteringConsumer(Consumer):
    """A worker consumer that dead-letters undecodable messages instead of dropping them.

    Celery's default ``on_decode_error`` acks the message, so a malformed body would vanish.
    Rejecting without requeue routes it to the queue's dead-letter exchange, where it stays
    visible and can be re-driven.
    """

    def on_decode_error(self, message, exc):  # noqa: D102 - Celery hook
        from celery.utils.log import get_logger

        get_logger(__name__).error(
            "Dead-lettering undecodable message %r: %s", message.delivery_tag, exc
        )
        message.reject(requeue=False)


class ConfiguredLoader(AppLoader):
    """Celery's loader, stopping on a missing or bad setting with one line on stderr.

    ``celeryconfig.py`` is read when the configuration is first used (by the command line's
    option defaults in a worker), ``orchestra/settings.py`` when a worker or beat starts
    (``init_worker``, before Celery's Django fixup would print its traceback).
    """

    def config_from_object(self, obj, silent: bool = False):  # noqa: D102 - Celery hook
        with exit_on_configuration_error():
            return super().config_from_object(obj, silent=silent)

    def init_worker(self) -> None:  # noqa: D102 - Celery hook
        from django.conf import settings

        with exit_on_configuration_error():
            settings.INSTALLED_APPS  # noqa: B018 - reads orchestra/settings.py
        super().init_worker()


app = Celery("orchestra", loader="orchestra.celery:ConfiguredLoader")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["runs", "queue_catalog", "launches", "notifications"])


class DeclareDeadLetterQueue(bootsteps.StartStopStep):
    """Declare the dead-letter queue whenever the worker (re)connects.

    RabbitMQ silently drops dead-lettered messages whose exchange has no bound queue, so the
    queue must exist before the first rejection.
    """

    requires = {"celery.worker.consumer.connection:Connection"}

    def start(self, c):  # noqa: D102 - bootstep hook
        from celeryconfig import dead_letter_queue

        dead_letter_queue(c.connection.default_channel).declare()


app.steps["consumer"].add(DeclareDeadLetterQueue)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def redact_celery_logs(logger, **kwargs) -> None:
    """Celery's own handlers mask secrets too (settings.LOGGING's handlers already do)."""
    from runs.redaction import redact_handlers

    redact_handlers(logger)


@signals.worker_init.connect
def keep_database_connections(**kwargs) -> None:
    """Keep database connections across tasks, closing only broken or expired ones.

    Celery's Django fixup closes every connection before and after each task, whatever
    ``CONN_MAX_AGE`` says: a reconnect (~15 ms) per task, a quarter of the throughput. Its own
    escape hatch (``CELERY_DB_REUSE_MAX``) is worse: it never checks a kept connection again, so
    one dropped by the server (restart, ``pg_terminate_backend``, failover) fails every later
    task of that process. Django's ``close_old_connections`` is what a request does: drop a
    connection that errored or outlived ``CONN_MAX_AGE``.

    Workers do not ping a kept connection before each task (``CONN_HEALTH_CHECKS``, a
    ``SELECT 1`` round trip per run): a connection the server dropped fails the task's first
    query, the task's autoretry delivers it again, and ``close_old_connections`` replaces the
    broken connection before that retry.
    """
    from celery.fixups.django import DjangoFixup
    from django.db import connections

    for fixup in app._fixups:
        if isinstance(fixup, DjangoFixup):
            signals.task_prerun.disconnect(fixup.worker_fixup.on_task_prerun)
            signals.task_postrun.disconnect(fixup.worker_fixup.on_task_postrun)
    signals.task_prerun.connect(_close_old_connections, weak=False)
    signals.task_postrun.connect(_close_old_connections, weak=False)
    for alias in connections:
        connections.settings[alias]["CONN_HEALTH_CHECKS"] = False
        connections[alias].close()


def _close_old_connections(sender=None, **kwargs) -> None:
    from django.db import close_old_connections

    # An eager task runs inside its caller's transaction, which must not be closed under it.
    if not getattr(sender.request, "is_eager", False):
        close_old_connections()
