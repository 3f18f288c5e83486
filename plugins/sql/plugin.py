"""One SQL statement per step with SQLAlchemy Core, in a transaction the database enforces.

The statement always runs as ``sqlalchemy.text(query)`` with ``params`` bound by the driver,
never formatted into the text. ``read_only`` (the default) opens a read-only transaction
(PostgreSQL ``SET TRANSACTION READ ONLY``, MySQL/MariaDB ``START TRANSACTION READ ONLY``), so a
write fails in the database itself. A connection goes only to an address the outbound policy
returned; a DSN's password is never echoed (URLs are rendered with the password hidden).
"""

from __future__ import annotations

import datetime
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from plugins.base import (
    Assertion,
    PluginError,
    PluginResult,
    ProtocolPlugin,
    StepContext,
    check_json_paths,
)
from plugins.bodies import binary_summary, summarize_text
from plugins.outbound import IPAddress, step_outbound_check
from plugins.pushback import host_rate_target

POSTGRESQL, MYSQL = "postgresql+psycopg2", "mysql+pymysql"
#: The drivers a DSN's scheme stands for.
DRIVERS = {
    "postgres": POSTGRESQL,
    "postgresql": POSTGRESQL,
    "postgresql+psycopg2": POSTGRESQL,
    "mysql": MYSQL,
    "mysql+pymysql": MYSQL,
    "mariadb": "mariadb+pymysql",
    "mariadb+pymysql": "mariadb+pymysql",
}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
# DSN query options that cannot change where the connection goes (libpq's host/hostaddr/service,
# PyMySQL's unix_socket/read_default_file would bypass the outbound check).
ALLOWED_OPTIONS = {
    "postgresql": {"sslmode", "application_name"},
    "mysql": {"charset"},
    "mariadb": {"charset"},
}
DEFAULT_MAX_ROWS = 1000
#: Rows kept in the stored response summary (``data`` has all fetched rows).
STORED_ROWS = 20
# Only a SELECT may run on a server-side cursor (PostgreSQL declares it as a cursor).
_STREAMABLE = re.compile(r"\s*SELECT\b", re.IGNORECASE)
# PostgreSQL SQLSTATEs another try may get past: connection, serialization, deadlock, timeout,
# shutdown, resources, lock not available.
_PG_RETRYABLE = re.compile(r"^(08|40001|40P01|57014|57P0[123]|53|55P03)")
# MySQL/MariaDB errors another try may get past: can't connect, gone away, lost connection, too
# many connections, lock wait timeout, deadlock, interrupted, statement time limits.
_MYSQL_RETRYABLE = {1040, 1205, 1213, 1317, 1969, 2002, 2003, 2006, 2013, 2055, 3024}
_CONNECT_PERMANENT = re.compile(
    r"authentication failed|does not exist|no pg_hba\.conf entry|password", re.IGNORECASE
)

_SCALAR = {"type": ["string", "number", "boolean", "null"]}


@dataclass(frozen=True)
class _Target:
    """Where a connection goes: the DSN's name (for summaries and checks) and the checked IP."""

    url: URL
    backend: str
    host: str
    port: int
    #: None until the outbound policy has returned the address to connect to.
    address: IPAddress | None = None

    @property
    def shown(self) -> str:
        return self.url.render_as_string(hide_password=True)


class SqlSession:
    """A connection kept open for the whole run (``with: {session: NAME}``)."""

    def __init__(self, engine: Engine, connection: Connection, target: _Target, sent: frozenset):
        self.engine, self.connection, self.target = engine, connection, target
        #: Credentials the opening step sent (its DSN): a later step sends them again.
        self.credentials_sent = sent

    def close(self) -> None:
        try:
            self.connection.close()
        finally:
            self.engine.dispose()


class SqlPlugin(ProtocolPlugin):
    """Runs one statement; see the module docstring and the README ("The `sql` plugin")."""

    name = "sql"
    params_schema = {
        "type": "object",
        "required": ["query"],
        "additionalProperties": False,
        "properties": {
            "dsn": {
                "type": "string",
                "pattern": "^(postgres|postgresql|mysql|mariadb)(\\+(psycopg2|pymysql))?://",
            },
            "query": {"type": "string", "minLength": 1},
            "params": {
                "type": "object",
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]},
            },
            "read_only": {"type": "boolean", "default": True},
            "rollback": {"type": "boolean", "default": False},
            "session": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]*$"},
            "max_rows": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100000,
                "default": DEFAULT_MAX_ROWS,
            },
        },
        "anyOf": [{"required": ["dsn"]}, {"required": ["session"]}],
    }
    _count = {"type": "integer", "minimum": 0}
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "rows": {
                "oneOf": [
                    _count,
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {"min": _count, "max": _count},
                    },
                ]
            },
            "columns": {"type": "array", "items": {"type": "string"}},
            "rowcount": _count,
            "json": {"type": "object"},
        },
    }
    example = {
        "name": "the order row exists",
        "plugin": "sql",
        "with": {
            "dsn": "{{ credentials.SHOP_DB }}",
            "query": "SELECT id, status FROM orders WHERE reference = :ref",
            "params": {"ref": "{{ payload.reference }}"},
        },
        "expect": {"rows": 1, "json": {"$[0].status": "paid"}},
        "capture": {"order_id": "$[0].id"},
    }

    def rate_target(self, params: dict[str, Any]) -> str | None:
        # A step on a session runs over the connection its opening step was paced for.
        if "dsn" not in params:
            return None
        target = _target(params["dsn"])
        return host_rate_target(target.backend, target.host, target.port)

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        session_name = params.get("session")
        if "dsn" in params:
            engine, connection, target = _connect(
                _target(params["dsn"]), context, kept=bool(session_name)
            )
            session = SqlSession(engine, connection, target, context.credentials_sent)
            if session_name:
                context.resources.add(session_name, session)
        else:
            session = context.resources.get(session_name, SqlSession)
            target = session.target
            # The connection is reused: its peer must pass this step's check too.
            step_outbound_check(
                target.host,
                target.port,
                credentials_sent=context.credentials_sent | session.credentials_sent,
                addresses=[target.address],
            )
        try:
            return _run(session.connection, target, params, context)
        finally:
            if not session_name:
                session.close()

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        assertions: list[Assertion] = []
        rows, truncated = result.fields["rows"], result.fields["truncated"]
        if "rows" in expect:
            bounds = expect["rows"]
            if isinstance(bounds, int):
                passed = rows == bounds and not truncated
            else:
                passed = bounds.get("min", 0) <= rows <= bounds.get("max", rows)
                passed = passed and not (truncated and "max" in bounds)
            more = f" (more than {rows}: max_rows reached)" if truncated else ""
            message = "" if passed else f"{rows} rows{more}, expected {bounds}"
            assertions.append(Assertion("rows", passed, bounds, rows, message))
        if "columns" in expect:
            columns = result.fields["columns"]
            passed = columns == expect["columns"]
            message = "" if passed else f"columns are {columns}, expected {expect['columns']}"
            assertions.append(Assertion("columns", passed, expect["columns"], columns, message))
        if "rowcount" in expect:
            count = result.fields.get("rowcount")
            passed = count == expect["rowcount"]
            message = "" if passed else f"rowcount is {count}, expected {expect['rowcount']}"
            assertions.append(Assertion("rowcount", passed, expect["rowcount"], count, message))
        assertions += check_json_paths(expect.get("json", {}), result.data)
        return assertions


def _target(dsn: str) -> _Target:
    try:
        url = make_url(dsn)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        raise PluginError("the dsn is not a database URL") from None
    driver = DRIVERS.get(url.drivername)
    if driver is None:
        raise PluginError(
            f"unsupported database {url.drivername!r} (use postgresql:// or mysql://)"
        )
    url = url.set(drivername=driver)
    backend = url.get_backend_name()
    if not url.host:
        raise PluginError(f"{url.render_as_string(hide_password=True)} names no host")
    refused = sorted(set(url.query) - ALLOWED_OPTIONS[backend])
    if refused:
        raise PluginError(f"dsn option(s) {', '.join(refused)} not allowed")
    port = url.port or DEFAULT_PORTS[backend]
    if not 0 < port < 65536:
        raise PluginError(f"{url.render_as_string(hide_password=True)} has no valid port")
    return _Target(url, backend, url.host, port)


def _connect_args(
    target: _Target, address: IPAddress, context: StepContext, *, kept: bool
) -> dict[str, Any]:
    remaining = context.remaining()
    # A dead peer is given up on by the deadline; a session's connection outlives this step, so
    # it gets the step's whole timeout (later statements are bounded by the server, per step).
    silence = context.timeout if kept else remaining
    if target.backend == "postgresql":
        # hostaddr is where libpq connects; host stays the name, for TLS and pg_hba.
        return {
            "hostaddr": str(address),
            "connect_timeout": max(2, math.ceil(remaining)),
            "keepalives": 1,
            "tcp_user_timeout": max(1000, int(silence * 1000)),
            "application_name": "orchestra",
        }
    return {
        "host": str(address),
        "connect_timeout": max(1.0, remaining),
        "read_timeout": max(1.0, silence),
        "write_timeout": max(1.0, silence),
    }


def _connect(
    target: _Target, context: StepContext, *, kept: bool
) -> tuple[Engine, Connection, _Target]:
    """A connection to the first checked address that answers, and the target it reached."""
    addresses = context.check_outbound(target.host, target.port)
    if not addresses:
        raise PluginError(f"{target.host} does not resolve", retryable=True)
    failure: PluginError | None = None
    for address in addresses:
        if context.remaining() <= 0:
            break
        checked = replace(target, address=address)
        arguments = _connect_args(checked, address, context, kept=kept)
        try:
            engine = create_engine(target.url, poolclass=NullPool, connect_args=arguments)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise PluginError(f"{target.shown}: {exc}") from None
        try:
            connection = engine.connect()
        except DBAPIError as exc:
            engine.dispose()
            failure = _error(exc, checked, context, connecting=True)
            if not failure.retryable:
                raise failure from None
            continue
        return engine, connection, checked
    raise failure or PluginError(f"connecting to {target.shown} timed out", retryable=True)


def _run(
    connection: Connection, target: _Target, params: dict[str, Any], context: StepContext
) -> PluginResult:
    query, bound = params["query"], params.get("params") or {}
    read_only = params.get("read_only", True)
    max_rows = params.get("max_rows", DEFAULT_MAX_ROWS)
    request = {
        "dsn": target.shown,
        "query": summarize_text(query),
        "params": _stored(bound),
        "read_only": read_only,
    }
    if params.get("session"):
        request["session"] = params["session"]
    remaining = context.remaining()
    if remaining <= 0:
        raise PluginError(f"{target.shown}: no time left for the query", retryable=True)
    started = time.perf_counter()
    try:
        with _stop_cancels(connection, target, context):
            transaction = connection.begin()
            try:
                _open_transaction(connection, target, read_only=read_only, seconds=remaining)
                statement = text(query)
                if _STREAMABLE.match(query):
                    statement = statement.execution_options(stream_results=True)
                result = connection.execute(statement, bound)
                columns = list(result.keys()) if result.returns_rows else []
                fetched = result.fetchmany(max_rows + 1) if result.returns_rows else []
                rowcount = None if result.returns_rows else result.rowcount
                result.close()
                if read_only or params.get("rollback", False):
                    transaction.rollback()
                else:
                    transaction.commit()
            finally:
                if transaction.is_active:
                    transaction.rollback()
    except DBAPIError as exc:
        raise _error(exc, target, context, connecting=False) from None
    except SQLAlchemyError as exc:
        # A missing bind parameter and the like: wrapped (``orig``) by SQLAlchemy.
        cause = getattr(exc, "orig", None) or exc
        raise PluginError(f"{target.shown}: {_scrub(str(cause), target)}") from None
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    truncated = len(fetched) > max_rows
    rows = [{key: _json_safe(value) for key, value in row._mapping.items()} for row in fetched]
    rows = rows[:max_rows]
    fields: dict[str, Any] = {
        "rows": len(rows),
        "columns": columns,
        "truncated": truncated,
        "elapsed_ms": elapsed_ms,
    }
    response: dict[str, Any] = {
        "columns": columns,
        "rows": [_stored(row) for row in rows[:STORED_ROWS]],
        "row_count": len(rows),
        "elapsed_ms": elapsed_ms,
    }
    if rowcount is not None:
        fields["rowcount"] = response["rowcount"] = rowcount
    if truncated:
        response["truncated"] = f"more than max_rows={max_rows} rows: the rest were not fetched"
    return PluginResult(data=rows, fields=fields, request=request, response=response)


def _open_transaction(
    connection: Connection, target: _Target, *, read_only: bool, seconds: float
) -> None:
    """Make the transaction read-only (or not) and bound its statements by ``seconds``."""
    mode = "READ ONLY" if read_only else "READ WRITE"
    if target.backend == "postgresql":
        # psycopg2 has sent BEGIN: SET TRANSACTION must come before any query.
        connection.exec_driver_sql(f"SET TRANSACTION {mode}")
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}")
        return
    if connection.dialect.is_mariadb:
        connection.exec_driver_sql(f"SET SESSION max_statement_time = {max(0.001, seconds):.3f}")
    else:
        # MySQL bounds SELECTs only.
        milliseconds = max(1, int(seconds * 1000))
        connection.exec_driver_sql(f"SET SESSION max_execution_time = {milliseconds}")
    # The session's access mode too: DDL commits implicitly and starts a transaction of that mode.
    connection.exec_driver_sql(f"SET SESSION TRANSACTION {mode}")
    connection.exec_driver_sql(f"START TRANSACTION {mode}")


@contextmanager
def _stop_cancels(connection: Connection, target: _Target, context: StepContext) -> Iterator[None]:
    """Cancel a running PostgreSQL statement as soon as ``context.stop`` is set.

    MySQL/MariaDB statements end by their time limit (a cancel needs a second connection).
    """
    if target.backend != "postgresql":
        yield
        return
    driver_connection = connection.connection.driver_connection
    done = threading.Event()

    def watch() -> None:
        # Polls the stop event, but ends as soon as the statement does.
        while not done.wait(0.05):
            if context.stop.is_set():
                driver_connection.cancel()
                return

    watcher = threading.Thread(target=watch, name=f"sql-stop-{context.run_id}", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _error(
    exc: DBAPIError, target: _Target, context: StepContext, *, connecting: bool
) -> PluginError:
    """A PluginError with the database's message; retryable when another try may help."""
    orig = exc.orig
    if target.backend == "postgresql":
        code = getattr(orig, "pgcode", None)
        diagnostics = getattr(orig, "diag", None)
        primary = diagnostics.message_primary if diagnostics else None
        # The primary message without the cursor's LINE/caret excerpt; the detail when any.
        message = primary or str(orig).strip()
        if diagnostics and diagnostics.message_detail:
            message += f" ({diagnostics.message_detail})"
        if code:
            retryable = bool(_PG_RETRYABLE.match(code))
        else:
            # No SQLSTATE: the connection could not be made or was lost.
            retryable = not (connecting and _CONNECT_PERMANENT.search(message))
    else:
        args = getattr(orig, "args", ())
        code = args[0] if args and isinstance(args[0], int) else None
        message = f"({code}) {args[1]}" if code is not None and len(args) > 1 else str(orig)
        retryable = code in _MYSQL_RETRYABLE or (code is None and exc.connection_invalidated)
    if context.stop.is_set():
        message = f"stopped: {message}"
    elif context.remaining() <= 0:
        retryable = True
    action = "connecting to" if connecting else "query on"
    return PluginError(
        f"{action} {target.shown} failed: {_scrub(message, target)}", retryable=retryable
    )


def _scrub(message: str, target: _Target) -> str:
    password = target.url.password
    return message.replace(password, "***") if password else message


def _json_safe(value: Any) -> Any:
    """A database value as JSON: numbers, text, ISO dates, binary summaries."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        if value == value.to_integral_value():
            return int(value)
        number = float(value)
        # A number when it reads back the same, text when a float would change it.
        return number if Decimal(repr(number)) == value else str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return binary_summary(bytes(value), "application/octet-stream")
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def _stored(value: Any) -> Any:
    """``value`` with its strings cut for storage."""
    if isinstance(value, str):
        return summarize_text(value)
    if isinstance(value, dict):
        return {key: _stored(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stored(item) for item in value]
    return value
