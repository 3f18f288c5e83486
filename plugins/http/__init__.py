"""The ``http`` plugin: one HTTP request per step, checked by status, headers, JSON and time."""

from plugins.http.plugin import HttpPlugin

__all__ = ["HttpPlugin"]
