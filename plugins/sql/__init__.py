"""The ``sql`` plugin: one bound SQL statement per step, on PostgreSQL or MySQL/MariaDB."""

from plugins.sql.plugin import SqlPlugin

__all__ = ["SqlPlugin"]
