"""Run-scoped resources and listeners: what a plugin keeps open across the steps of one run.

- A **resource** is anything a plugin opens for the whole run: a WebSocket connection, a
  database session, a broker channel. The plugin registers it with
  ``context.resources.add(name, resource)``; a later step of the same run finds it with
  ``context.resources.get(name, kind)`` (``with: {session: ws1}``). The executor closes every
  resource when the run ends, whatever the ending (pass, failure, cancel, lease loss, time
  limit), newest first.
- A **listener** is a resource that collects messages. A step that declares
  ``listen: {as: NAME, plugin: P, with: {...}}`` has ``P.listen(params, context)`` called
  *before* the step itself runs, so the subscription is in place when the step triggers the
  message. A later step ``plugin: P, with: {await: NAME, count: N, match: {JSONPath: value}}``
  waits with :meth:`Listener.wait`: messages that arrived at any time since the subscription
  are kept (up to ``max_messages``), never lost, and each is handed out once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol, TypeVar

from plugins.base import PluginError, StepContext
from plugins.jsonpaths import JsonPathError, find_first

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The ``with`` block of a step that waits for a listener's messages.
AWAIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["await"],
    "additionalProperties": False,
    "properties": {
        "await": {"type": "string", "minLength": 1},
        "count": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1},
        "match": {"type": "object"},
    },
}


class Resource(Protocol):
    def close(self) -> None: ...


class RunResources:
    """The resources of one run, by name; closed together by the executor."""

    def __init__(self) -> None:
        self._resources: dict[str, Resource] = {}

    def is_empty(self) -> bool:
        """Whether no resource is open."""
        return not self._resources

    def add(self, name: str, resource: Resource) -> None:
        """Register ``resource`` as ``name``; a name may be used once per run."""
        if name in self._resources:
            resource.close()
            raise PluginError(f"a resource named {name!r} is already open in this run")
        self._resources[name] = resource

    def get(self, name: str, kind: type[T]) -> T:
        """The resource ``name``, which must be a ``kind``."""
        resource = self._resources.get(name)
        if resource is None:
            opened = ", ".join(sorted(self._resources)) or "none"
            raise PluginError(f"no resource named {name!r} is open (open: {opened})")
        if not isinstance(resource, kind):
            raise PluginError(f"resource {name!r} is not a {kind.__name__}")
        return resource

    def close_all(self) -> list[str]:
        """Close every resource, newest first; the errors, as text (it never raises)."""
        errors = []
        for name in reversed(list(self._resources)):
            resource = self._resources.pop(name)
            try:
                resource.close()
            except Exception as exc:  # one broken resource must not keep the others open
                logger.warning("closing resource %s failed", name, exc_info=True)
                errors.append(f"closing {name}: {type(exc).__name__}: {exc}")
        return errors


class Listener:
    """Messages a subscription received, kept until a step awaits them.

    The plugin's receiving thread or callback calls :meth:`deliver` with one dict per message:
    ``data`` (the parsed JSON body, or None) is what ``match`` JSONPaths read; the rest
    (``body`` summary, ``topic``, ``headers``...) is stored with the step. Subclasses close
    their subscription in :meth:`close`.
    """

    def __init__(self, *, max_messages: int = 10000) -> None:
        self.max_messages = max_messages
        self._condition = threading.Condition()
        self._messages: list[dict[str, Any]] = []
        self._taken: set[int] = set()
        self.dropped = 0

    def deliver(self, message: dict[str, Any]) -> None:
        """Keep one received message (past ``max_messages`` it is counted, not kept)."""
        with self._condition:
            if len(self._messages) >= self.max_messages:
                self.dropped += 1
            else:
                self._messages.append(message)
            self._condition.notify_all()

    def wait(
        self, *, count: int, match: dict[str, Any], context: StepContext
    ) -> list[dict[str, Any]]:
        """The first ``count`` not yet awaited messages matching ``match``, in arrival order.

        Waits until the step's deadline or its stop event; then raises a retryable
        :class:`PluginError` saying how many matched.
        """
        while True:
            with self._condition:
                found = [
                    index
                    for index, message in enumerate(self._messages)
                    if index not in self._taken and message_matches(match, message.get("data"))
                ][:count]
                if len(found) == count:
                    self._taken.update(found)
                    return [self._messages[index] for index in found]
                remaining = context.remaining()
                if remaining <= 0 or context.stop.is_set():
                    received = len(self._messages)
                    raise PluginError(
                        f"{len(found)} of {count} matching messages arrived in time "
                        f"({received} received in all)",
                        retryable=True,
                    )
                # Short waits, so that a stop request is seen promptly.
                self._condition.wait(min(remaining, 0.1))

    def close(self) -> None:
        """Stop the subscription (subclasses); the kept messages stay readable."""


def message_matches(match: dict[str, Any], document: Any) -> bool:
    """Whether ``document`` holds every ``{JSONPath: value}`` of ``match``."""
    for path, expected in match.items():
        try:
            if find_first(path, document) != expected:
                return False
        except JsonPathError:
            return False
    return True
