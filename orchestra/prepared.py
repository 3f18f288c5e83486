"""Statements PostgreSQL parses and plans once per connection (``PREPARE`` / ``EXECUTE``).

A worker runs the same few statements for every run (claim, finish, queue hand-off), and for
such short statements PostgreSQL spends about as much CPU parsing and planning them as
executing them: prepared, a claim and a finish cost the server half the CPU (``bench/per_run.py``,
``bench/README.md``). A :class:`PreparedStatement` is written like any raw query, with ``%(name)s``
placeholders; on each database connection it is prepared on first use (prepared statements
outlive transactions, rolled back or not) and executed by name afterwards.

A pooler that hands one client's statements to several server sessions (PgBouncer in
transaction or statement mode) cannot keep them: set ``ORCHESTRA_DB_PREPARED_STATEMENTS=0``
and the statements are sent whole every time.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


class PreparedStatement:
    """One SQL statement with named ``%(name)s`` parameters, prepared per connection."""

    def __init__(self, name: str, sql: str) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a valid statement name: {name!r}")
        self.name = name
        self.sql = sql
        self.parameters: list[str] = []
        numbered = _PLACEHOLDER.sub(self._number, sql).replace("%%", "%")
        self._prepare = f"PREPARE {name} AS {numbered}"
        arguments = ", ".join(["%s"] * len(self.parameters))
        self._execute = f"EXECUTE {name}({arguments})" if self.parameters else f"EXECUTE {name}"

    def _number(self, match: re.Match) -> str:
        parameter = match.group(1)
        if parameter not in self.parameters:
            self.parameters.append(parameter)
        return f"${self.parameters.index(parameter) + 1}"

    def execute(self, cursor, params: dict[str, Any]) -> None:
        """Execute on ``cursor`` (a Django cursor) with ``params``."""
        if not settings.ORCHESTRA_DB_PREPARED_STATEMENTS:
            cursor.execute(self.sql, params)
            return
        prepared = _prepared_on(cursor.db)
        if self.name not in prepared:
            cursor.execute(self._prepare)
            prepared.add(self.name)
        cursor.execute(self._execute, [params[parameter] for parameter in self.parameters])


def _prepared_on(database) -> set[str]:
    """The statements prepared on ``database``'s (a Django connection's) current DB-API
    connection; a reconnect starts an empty set."""
    raw = database.connection
    known = getattr(database, "_orchestra_prepared", None)
    if known is None or known[0] is not raw:
        known = (raw, set())
        database._orchestra_prepared = known
    return known[1]
