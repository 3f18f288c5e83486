"""Writes of the run engine: scenarios, starting, publishing, cancelling and sweeping runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from celery.utils import uuid
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from orchestra.commits import without_flush_wait
from runs.models import Priority, Scenario, ScenarioVersion, TestRun, VersionOrigin
from runs.signals import run_finished
from runs.sources import source_from_definition
from runs.states import RunStatus, transition_run

logger = logging.getLogger(__name__)


class RunConflict(Exception):
    """The run is in a status that does not allow the operation (e.g. cancelling a finished run)."""


def scenario_save(
    *,
    name: str,
    definition: dict[str, Any],
    description: str = "",
    source: str = "",
    origin: str = VersionOrigin.CODE,
    created_by: AbstractBaseUser | None = None,
    tags: list[str] | None = None,
) -> Scenario:
    """Create the scenario ``name`` or replace its definition; invalid definitions are refused.

    ``source`` is the text ``definition`` was read from (YAML with comments), kept as written.
    ``tags`` (else the definition's own ``tags``, if any) replace the scenario's tags. Raises
    ``django.core.exceptions.ValidationError`` naming the step and field at fault.
    """
    scenario = Scenario.objects.filter(name=name).first() or Scenario(name=name)
    scenario.definition = definition
    if tags is None and isinstance(definition, dict) and isinstance(definition.get("tags"), list):
        tags = definition["tags"]
    if tags is not None:
        scenario.tags = tags
    if not description and isinstance(definition, dict):
        description = definition.get("description", "")
    scenario.description = description
    return scenario_store(scenario=scenario, source=source, origin=origin, created_by=created_by)


def scenario_update(
    *,
    scenario: Scenario,
    name: str | None = None,
    description: str | None = None,
    definition: dict[str, Any] | None = None,
    source: str = "",
    origin: str = VersionOrigin.CODE,
    created_by: AbstractBaseUser | None = None,
    tags: list[str] | None = None,
) -> Scenario:
    """Change a scenario; a new definition is validated before it is stored."""
    if name is not None:
        scenario.name = name
    if tags is not None:
        scenario.tags = tags
    if description is not None:
        scenario.description = description
    if definition is not None:
        scenario.definition = definition
    return scenario_store(scenario=scenario, source=source, origin=origin, created_by=created_by)


def scenario_store(
    *,
    scenario: Scenario,
    source: str = "",
    origin: str,
    created_by: AbstractBaseUser | None = None,
) -> Scenario:
    """Validate and save ``scenario`` as it is in memory; a new :class:`ScenarioVersion` is kept
    when its definition or source text differ from the latest version (the first save makes
    version 1). Every path that saves a scenario (admin, API, import) comes through here.

    ``source`` is the text ``scenario.definition`` was read from; without one, a definition that
    changed gets a YAML rendering of itself, an unchanged one keeps its text.
    """
    scenario.full_clean()
    with transaction.atomic():
        scenario.save()
        # The save holds the scenario's row lock until commit, so the latest version read now
        # cannot change under us: two saves of one scenario number their versions one by one.
        latest = scenario.versions.order_by("-number").first()
        if source:
            scenario.definition_source = source
        elif latest is None or latest.definition != scenario.definition:
            scenario.definition_source = source_from_definition(scenario.definition)
        elif not scenario.definition_source:
            scenario.definition_source = latest.source
        if (
            latest is None
            or latest.definition != scenario.definition
            or latest.source != scenario.definition_source
        ):
            latest = ScenarioVersion.objects.create(
                scenario=scenario,
                number=latest.number + 1 if latest else 1,
                source=scenario.definition_source,
                definition=scenario.definition,
                origin=origin,
                created_by=created_by,
            )
        scenario.current_version = latest
        Scenario.objects.filter(id=scenario.id).update(
            definition_source=scenario.definition_source, current_version=latest
        )
    return scenario


class ScenarioImportConflict(Exception):
    """The scenario changed outside imports since it was last imported; the message says how."""


# Where people edit a scenario by hand; an import over such an edit would lose it.
EDITED_ORIGINS = {VersionOrigin.ADMIN, VersionOrigin.API}


class ImportOutcome(StrEnum):
    CREATED = "created"
    NEW_VERSION = "new version"
    UNCHANGED = "unchanged"


def scenario_import(
    *, name: str, definition: dict[str, Any], source: str, force: bool = False
) -> tuple[Scenario, ImportOutcome]:
    """Create or update the scenario a file describes, keeping edits made elsewhere.

    A scenario whose latest version people saved in the admin or through the API is not
    overwritten unless ``force``: :class:`ScenarioImportConflict` names the scenario and the
    versions. A file equal to the latest version changes nothing.
    """
    with transaction.atomic():
        scenario = Scenario.objects.select_for_update().filter(name=name).first()
        latest = scenario.current_version if scenario else None
        if latest is not None and latest.definition == definition and latest.source == source:
            return scenario, ImportOutcome.UNCHANGED
        if latest is not None and latest.origin in EDITED_ORIGINS and not force:
            raise ScenarioImportConflict(_import_conflict_message(scenario, latest))
        saved = scenario_save(
            name=name, definition=definition, source=source, origin=VersionOrigin.IMPORT
        )
    return saved, ImportOutcome.CREATED if scenario is None else ImportOutcome.NEW_VERSION


def _import_conflict_message(scenario: Scenario, latest: ScenarioVersion) -> str:
    imported = scenario.versions.filter(origin=VersionOrigin.IMPORT).order_by("-number").first()
    by = f" by {latest.created_by.get_username()}" if latest.created_by else ""
    changed = (
        f"scenario {scenario.name!r} was changed in the {latest.get_origin_display()}{by} "
        f"(version {latest.number})"
    )
    since = (
        f"since its last import (version {imported.number})"
        if imported
        else "and was never imported"
    )
    return f"{changed} {since}; not overwritten (--force replaces it with the file)"


def scenario_set_active(*, scenario: Scenario, is_active: bool) -> Scenario:
    """Deactivate (no new runs may start) or reactivate a scenario; its history stays."""
    scenario.is_active = is_active
    scenario.save(update_fields=["is_active", "updated_at"])
    return scenario


def scenario_require_active(scenario: Scenario) -> None:
    """Refuse to start anything of a deactivated scenario: ``ValidationError`` on ``scenario``."""
    if not scenario.is_active:
        raise ValidationError({"scenario": f"scenario {scenario.name!r} is not active"})


def run_start(
    *,
    scenario: Scenario,
    payload: dict[str, Any] | None = None,
    priority: str = Priority.NORMAL,
    context: dict[str, Any] | None = None,
) -> TestRun:
    """Create a QUEUED run and publish its message once the surrounding transaction commits."""
    return runs_start(
        scenario=scenario, payloads=[payload or {}], priority=priority, context=context
    )[0]


#: Rows per INSERT of ``runs_start``: a statement's parameters stay far below PostgreSQL's
#: 65,535 whatever columns TestRun grows.
RUNS_PER_INSERT = 1000


def runs_start(
    *,
    scenario: Scenario,
    payloads: list[dict[str, Any]],
    priority: str = Priority.NORMAL,
    context: dict[str, Any] | None = None,
    launch_id: int | None = None,
    row_key: str | None = None,
) -> list[TestRun]:
    """Start one run per payload, one INSERT per :data:`RUNS_PER_INSERT` runs; messages go out
    after commit. ``context`` is shared by every run (each adds its ``payload``, and its
    1-based position among ``payloads`` under ``row_key`` when given); ``launch_id`` ties them
    to a launch.

    One run is saved as :func:`new_run` makes it. Many are inserted set-based, from the
    payloads as one JSON array per INSERT (:func:`new_run_sql`, the same run): the runs
    returned then hold their id, scenario, priority, status, launch and ``queued_at``; any
    other field loads on access."""
    scenario_require_active(scenario)
    if priority not in Priority.values:
        raise ValidationError({"priority": f"must be one of {Priority.values}"})
    if len(payloads) == 1:
        run_context = {**(context or {}), "payload": payloads[0]}
        if row_key is not None:
            run_context[row_key] = 1
        runs = [
            new_run(scenario=scenario, priority=priority, context=run_context, launch_id=launch_id)
        ]
        # One INSERT is atomic by itself: outside a transaction it commits on its own, and the
        # publish below follows at once (no BEGIN/COMMIT round trips for the API's one run).
        runs[0].save(force_insert=True)
        transaction.on_commit(lambda: runs_publish(runs))
        return runs
    insert = _runs_insert_sql(row_key)
    params = {
        **insert.params,
        "scenario_id": scenario.id,
        "scenario_version_id": scenario.current_version_id,
        "priority": priority,
        "definition": _json_param("definition", scenario.definition),
        "context": _json_param("context", context or {}),
        "launch_id": launch_id,
        "row_key": row_key,
    }
    # What each inserted run holds, in the model's field order (that of from_db's values).
    fields = [
        f.attname
        for f in TestRun._meta.concrete_fields
        if f.attname in {"id", "status", "queued_at", "priority", "launch_id"}
    ]
    runs = []
    with transaction.atomic(), connection.cursor() as cursor:
        for offset in range(0, len(payloads), RUNS_PER_INSERT):
            batch = payloads[offset : offset + RUNS_PER_INSERT]
            params["payloads"] = _json_param("context", batch)
            params["offset"] = offset
            cursor.execute(insert.sql, params)
            # Ids come from the sequence in row order, so sorted they follow the payloads.
            for run_id, status, queued_at in sorted(cursor.fetchall()):
                loaded = {
                    "id": run_id,
                    "status": status,
                    "queued_at": queued_at,
                    "priority": priority,
                    "launch_id": launch_id,
                }
                run = TestRun.from_db(connection.alias, fields, [loaded[f] for f in fields])
                run.scenario = scenario
                runs.append(run)
        transaction.on_commit(lambda: runs_publish(runs))
    return runs


@dataclass(frozen=True)
class RunsInsert:
    """The statement of :func:`_runs_insert_sql` and the parameters of its default columns."""

    sql: str
    params: dict[str, Any]


def _runs_insert_sql(row_key: str | None) -> RunsInsert:
    """The INSERT of many runs of one scenario, one per element of ``%(payloads)s`` (a JSON
    array): each run's context is ``%(context)s`` plus its payload, and its row number
    (``%(offset)s`` + its position) under ``row_key`` when given."""
    context = "%(context)s::jsonb || jsonb_build_object('payload', row.payload)"
    if row_key is not None:
        context += " || jsonb_build_object(%(row_key)s::text, %(offset)s::bigint + row.n)"
    run = new_run_sql(
        scenario_id="%(scenario_id)s::bigint",
        scenario_version_id="%(scenario_version_id)s::bigint",
        priority="%(priority)s",
        definition="%(definition)s::jsonb",
        context=context,
        launch_id="%(launch_id)s::bigint",
    )
    sql = (
        f"INSERT INTO runs_testrun ({run.columns}) SELECT {run.values}"
        " FROM jsonb_array_elements(%(payloads)s::jsonb) WITH ORDINALITY AS row(payload, n)"
        " ORDER BY row.n RETURNING id, status, queued_at"
    )
    return RunsInsert(sql, run.params)


def _json_param(field: str, value: Any) -> Any:
    """``value`` as TestRun's JSON column ``field`` stores it (its encoder), for a raw statement."""
    return TestRun._meta.get_field(field).get_db_prep_save(value, connection)


def new_run(
    *, scenario: Scenario, priority: str, context: dict[str, Any], launch_id: int | None = None
) -> TestRun:
    """A new QUEUED run of ``scenario``, not saved yet: the one definition of what a launch
    creates. Its launch decides the columns of :data:`LAUNCH_COLUMNS`; every other column keeps
    the model's default. ``runs_start`` saves one such; many runs, and a launch made in SQL,
    use :func:`new_run_sql`.
    """
    # The loaded version itself when there is one, so that reading the run's version costs no
    # query; its id otherwise.
    version = (
        {"scenario_version": scenario.current_version}
        if Scenario.current_version.is_cached(scenario)
        else {"scenario_version_id": scenario.current_version_id}
    )
    return TestRun(
        scenario=scenario,
        **version,
        priority=priority,
        definition=scenario.definition,
        context=context,
        launch_id=launch_id,
    )


LAUNCH_COLUMNS = (
    "scenario_id",
    "scenario_version_id",
    "priority",
    "definition",
    "context",
    "launch_id",
)


@dataclass(frozen=True)
class RunInsert:
    """The parts of an ``INSERT INTO runs_testrun (columns) SELECT values ...``."""

    columns: str
    values: str
    params: dict[str, Any]  # the statement's parameters for the columns that take a default


def new_run_sql(**launch: str) -> RunInsert:
    """The run of :func:`new_run` as the columns and values of a raw-SQL INSERT.

    ``launch`` maps each of :data:`LAUNCH_COLUMNS` to an SQL expression. Every other column takes
    the value ``new_run`` leaves it, as a typed parameter ``%(new_run_<column>)s`` (see
    ``params``); a column the model stamps on insert (``auto_now_add``) takes ``now()``, one
    with a database default is left to the database. A column added to TestRun is so part of
    every launch without touching the statement.
    """
    if set(launch) != set(LAUNCH_COLUMNS):
        raise ValueError(f"a launch gives exactly {LAUNCH_COLUMNS}, not {sorted(launch)}")
    template = TestRun()
    columns, values, params = [], [], {}
    for field in TestRun._meta.concrete_fields:
        if field.primary_key or field.has_db_default():
            continue
        columns.append(field.column)
        if field.column in launch:
            values.append(launch[field.column])
        elif getattr(field, "auto_now_add", False) or getattr(field, "auto_now", False):
            values.append("now()")
        else:
            name = f"new_run_{field.column}"
            params[name] = field.get_db_prep_save(getattr(template, field.attname), connection)
            values.append(f"%({name})s::{field.db_type(connection)}")
    return RunInsert(", ".join(columns), ", ".join(values), params)


#: Messages ``runs_publish`` writes to the broker's socket in one call.
PUBLISH_FLUSH_EVERY = 500


def runs_publish(runs: list[TestRun]) -> None:
    """Publish one message per run (its id only), then note that they went out.

    The messages are those ``execute_run.apply_async`` would send (same headers, priority,
    queue, persistence, retry policy) but built and published in one batch on one producer
    (one channel), written to the socket :data:`PUBLISH_FLUSH_EVERY` at a time (see
    :class:`_CoalescedWrites`); Celery's per-call routing and a socket write per message cost
    ~0.5 ms per run. Only the runs whose messages were written are noted as published.
    A crash between the commit and this call leaves the run QUEUED with no ``dispatched_at``;
    ``runs_sweep`` republishes it. A publish that fails is logged and left to the same sweep.
    """
    from celeryconfig import PRIORITIES
    from runs.tasks import execute_run

    app = execute_run.app
    names = _scenario_names(runs)
    route = app.amqp.router.route({}, execute_run.name, (), {}, execute_run)
    queue = route["queue"]
    publish = {
        # What send_task_message makes of a route to a direct exchange: the default exchange,
        # the queue's name as routing key; the queue is declared before (see below).
        "exchange": "",
        "routing_key": queue.name,
        "delivery_mode": queue.exchange.delivery_mode or app.conf.task_default_delivery_mode,
        "serializer": app.conf.task_serializer,
        "retry": app.conf.task_publish_retry,
        "retry_policy": app.conf.task_publish_retry_policy,
    }
    parent = app.current_worker_task  # the sweep's task, when the sweep publishes
    published = []
    with app.producer_or_acquire() as producer:
        # Declared (once per connection) before writes are held back: a declaration waits for
        # the broker's answer, which would never come to a request still in the buffer.
        try:
            producer.maybe_declare(queue, retry=publish["retry"], **publish["retry_policy"])
        except Exception:
            logger.exception("could not declare %s; the sweep will publish", queue.name)
            return
        # The time limits apply_async would stamp into the message (Celery's exec options).
        limits = execute_run._get_exec_options()
        with _CoalescedWrites(producer) as writes:
            for start in range(0, len(runs), PUBLISH_FLUSH_EVERY):
                written = []
                for run in runs[start : start + PUBLISH_FLUSH_EVERY]:
                    task_id = uuid()
                    headers, properties, body, _ = app.amqp.create_task_message(
                        task_id,
                        execute_run.name,
                        [run.id],
                        {},
                        time_limit=limits.get("time_limit"),
                        soft_time_limit=limits.get("soft_time_limit"),
                        root_id=parent and (parent.request.root_id or parent.request.id),
                        parent_id=parent and parent.request.id,
                        shadow=run_task_label(run.id, names.get(run.scenario_id)),
                        ignore_result=execute_run.ignore_result,
                    )
                    try:
                        producer.publish(
                            body,
                            headers=headers,
                            priority=PRIORITIES[run.priority],
                            **publish,
                            **properties,
                        )
                    except Exception:
                        logger.exception("could not publish run %s; the sweep will retry", run.id)
                        continue
                    written.append(run.id)
                try:
                    writes.flush()
                except Exception:
                    logger.exception(
                        "could not publish %d runs from run %s; the sweep will retry",
                        len(written),
                        written[0] if written else None,
                    )
                    continue
                published.extend(written)
    if published:
        _note_published(published)


class _CoalescedWrites:
    """Holds back what py-amqp writes to the broker's socket until :meth:`flush`, which sends it
    in one call: one system call (and one wake-up of RabbitMQ) per batch, not per message.

    Only where nothing waits for the broker's answer to a publish: on a channel in confirm mode
    (``confirm_publish``) each publish waits for its ack, so writes there go out as they come.
    A write that fails in :meth:`flush` raises as it would have in ``publish``.
    """

    def __init__(self, producer) -> None:
        amqp_connection = getattr(producer.connection, "connection", None)
        self._transport = getattr(amqp_connection, "transport", None)
        confirming = getattr(producer.channel, "_confirm_selected", False)
        self._write = None if confirming else getattr(self._transport, "_write", None)
        self._chunks: list[bytes] = []

    def __enter__(self) -> _CoalescedWrites:
        if self._write is not None:
            # py-amqp hands over a view of its frame buffer, reused by the next frame: a copy.
            self._transport._write = lambda data: self._chunks.append(bytes(data))
        return self

    def flush(self) -> None:
        """Send every write held back, through the transport's own write (its error handling)."""
        if not self._chunks:
            return
        data, self._chunks = b"".join(self._chunks), []
        self._transport._write = self._write
        try:
            self._transport.write(data)
        finally:
            self.__enter__()

    def __exit__(self, *exc_info) -> None:
        if self._write is not None:
            self._transport._write = self._write


def run_task_label(run_id: int, scenario_name: str | None) -> str:
    """What logs and Flower call a run's task (Celery's ``shadow`` name):
    ``run 42 · create-and-fetch-user``; the task itself stays ``runs.execute_run``."""
    return f"run {run_id} · {scenario_name}" if scenario_name else f"run {run_id}"


def _scenario_names(runs: list[TestRun]) -> dict[int, str]:
    """Scenario id -> name for ``runs``, in at most one query (none when all are loaded)."""
    names = {run.scenario_id: run.scenario.name for run in runs if TestRun.scenario.is_cached(run)}
    missing = {run.scenario_id for run in runs if run.scenario_id not in names} - {None}
    if missing:
        names.update(Scenario.objects.filter(id__in=missing).values_list("id", "name"))
    return names


# ``dispatched_at`` is a hint for the sweep, so noting it need not wait for the WAL flush: lost in
# a database crash, it only makes the sweep publish the run again, and a duplicate delivery is
# dropped by the claim.
_NOTE_PUBLISHED_SQL = (
    "UPDATE runs_testrun SET dispatched_at = now() WHERE id = ANY(%s) AND dispatched_at IS NULL"
)


def _note_published(run_ids: list[int]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(without_flush_wait(_NOTE_PUBLISHED_SQL), [run_ids])


def run_rerun(*, run_id: int) -> TestRun:
    """Start a new run of the same scenario with the same payload and priority."""
    run = TestRun.objects.select_related("scenario").get(id=run_id)
    return run_start(
        scenario=run.scenario, payload=run.context.get("payload") or {}, priority=run.priority
    )


def run_cancel(*, run_id: int) -> TestRun:
    """Cancel a run: a queued one becomes CANCELLED at once and never starts; a running one is
    asked to stop (``cancel_requested_at``) and stays IN_PROGRESS until it has really stopped.

    Its worker interrupts the running step, runs the ``finally`` steps within the finally grace
    and finishes the run CANCELLED; if it cannot (dead, paused), its lease lapses and
    ``runs_sweep`` cancels it. ``run_finished`` fires with CANCELLED only then, so it always
    means "stopped". Raises ``TestRun.DoesNotExist`` or :class:`RunConflict` when the run
    already finished.
    """
    run = TestRun.objects.get(id=run_id)
    cancelled = transition_run(
        run_id,
        to=RunStatus.CANCELLED,
        sources={RunStatus.QUEUED},
        finished_at=Now(),
        lease_expires_at=None,
        cancel_requested_at=Now(),
        error="cancelled",
    )
    if cancelled:
        _announce_finished(run_id, RunStatus.CANCELLED, run.context)
    else:
        # Asking twice changes nothing: the first request's time bounds the grace.
        TestRun.objects.filter(
            id=run_id, status=RunStatus.IN_PROGRESS, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=Now())
    run.refresh_from_db()
    if run.status != RunStatus.CANCELLED and run.cancel_requested_at is None:
        raise RunConflict(f"run {run_id} is {run.status} and cannot be cancelled")
    return run


def _announce_finished(run_id: int, status: str, context: dict[str, Any]) -> None:
    transaction.on_commit(
        lambda: run_finished.send(sender=TestRun, run_id=run_id, status=status, context=context)
    )


def runs_sweep() -> dict[str, int]:
    """Repair runs whose message or worker went missing; safe to run anywhere, any number of
    times.

    - QUEUED runs never published (crash between commit and publish) are published, and so are
      runs parked on a throttled rate key once their ``resume_at`` has come (the throttle
      spaced those out at the key's pace, with jitter);
    - IN_PROGRESS runs whose lease lapsed (their worker died or froze unnoticed, e.g. a whole
      host) are finished when they must not execute again: CANCELLED when a cancel was
      requested, ERROR when their attempt's time budget is spent (a hard time limit killed it);
      the others go back to QUEUED and are published again; the next claim counts the attempt.
    Duplicated messages are harmless: the claim lets only one delivery execute a run.
    """
    grace = timezone.now() - timedelta(seconds=settings.ORCHESTRA_PUBLISH_GRACE_SECONDS)
    # A parked run's message was acked when it parked: none is in flight, so it goes out as
    # soon as its resume_at comes, without the grace a just-queued run's first publish gets.
    unpublished = list(
        TestRun.objects.filter(
            Q(resume_at__isnull=True, queued_at__lt=grace) | Q(resume_at__lte=Now()),
            status=RunStatus.QUEUED,
            dispatched_at__isnull=True,
        ).order_by("id")[:1000]
    )
    lapsed = list(
        TestRun.objects.filter(status=RunStatus.IN_PROGRESS, lease_expires_at__lt=Now()).values(
            "id", "context"
        )[:1000]
    )
    ended = {"cancelled": 0, "timed_out": 0}
    requeued = []
    for run in lapsed:
        lapsed_lease = {"where_lease_expires_at__lt": Now(), "sources": {RunStatus.IN_PROGRESS}}
        finished = {"finished_at": Now(), "lease_expires_at": None}
        if transition_run(
            run["id"],
            to=RunStatus.CANCELLED,
            where_cancel_requested_at__isnull=False,
            error="cancelled (its worker did not confirm before its lease lapsed)",
            **lapsed_lease,
            **finished,
        ):
            ended["cancelled"] += 1
            _announce_finished(run["id"], RunStatus.CANCELLED, run["context"])
        elif transition_run(
            run["id"],
            to=RunStatus.ERROR,
            where_deadline_at__lt=Now(),
            error="time limit: the worker executing it was lost at its time limit",
            **lapsed_lease,
            **finished,
        ):
            ended["timed_out"] += 1
            _announce_finished(run["id"], RunStatus.ERROR, run["context"])
        elif transition_run(
            run["id"], to=RunStatus.QUEUED, dispatched_at=None, resume=None, **lapsed_lease
        ):
            requeued.append(run["id"])
    requeued_runs = list(TestRun.objects.filter(id__in=requeued))
    runs_publish(unpublished + requeued_runs)
    if unpublished or requeued or any(ended.values()):
        logger.warning(
            "sweep republished %d unpublished and %d lapsed runs; finished %d cancelled and "
            "%d timed out",
            len(unpublished),
            len(requeued),
            ended["cancelled"],
            ended["timed_out"],
        )
    return {"republished": len(unpublished), "requeued": len(requeued), **ended}
