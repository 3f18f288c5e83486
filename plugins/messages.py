"""What the broker plugins (amqp, mqtt) share: a received message as a dict, and the
expectations every message step knows.

A message is ``{"data": parsed JSON body or None, "body": stored summary, ...protocol fields}``
(the shape :class:`plugins.resources.Listener` keeps). A step's ``data`` is the list of its
messages' bodies: the parsed JSON where the body is JSON, else the text or binary summary.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from plugins.base import Assertion, PluginResult, check_json_paths
from plugins.bodies import decode_text, summarize

#: Messages whose summaries a step result stores; the rest are counted.
MAX_STORED_MESSAGES = 20

COUNT_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 10000}


def parse_body(content: bytes, content_type: str = "") -> tuple[Any, Any]:
    """``(the JSON document or None, what is stored of the body)``."""
    text = decode_text(content, content_type)
    document = None
    if text is not None:
        with contextlib.suppress(ValueError):  # text, not JSON: stored as text
            document = json.loads(text)
    return document, summarize(content, content_type, text=text)


def bodies(messages: list[dict[str, Any]]) -> list[Any]:
    """The ``data`` of a step that received ``messages``."""
    return [m["body"] if m["data"] is None else m["data"] for m in messages]


def stored(messages: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """The response summary of ``messages``: the first few, with ``keys`` and the body."""
    return {
        "count": len(messages),
        "messages": [
            {key: message.get(key) for key in (*keys, "body")}
            for message in messages[:MAX_STORED_MESSAGES]
        ],
    }


def message_result(
    messages: list[dict[str, Any]],
    *,
    keys: tuple[str, ...],
    request: dict[str, Any],
    wanted: int | None = None,
    received: int | None = None,
) -> PluginResult:
    """The result of a step that received ``messages``; ``wanted`` > their number marks a
    shortfall :func:`check_messages` fails (messages arrived, too few matched)."""
    fields: dict[str, Any] = {"count": len(messages), "messages": messages}
    if wanted is not None:
        fields.update(wanted=wanted, received=received)
    return PluginResult(
        data=bodies(messages), fields=fields, request=request, response=stored(messages, keys)
    )


def check_messages(expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
    """``count`` and ``json`` (JSONPath over the list of bodies), and the shortfall if any."""
    assertions: list[Assertion] = []
    count = result.fields.get("count", 0)
    wanted = result.fields.get("wanted")
    if wanted is not None and count < wanted:
        received = result.fields.get("received")
        assertions.append(
            Assertion(
                "match",
                False,
                wanted,
                count,
                f"{count} of {wanted} messages matched ({received} received)",
            )
        )
    if "count" in expect:
        passed = count == expect["count"]
        message = "" if passed else f"{count} messages, expected {expect['count']}"
        assertions.append(Assertion("count", passed, expect["count"], count, message))
    if "json" in expect:
        assertions.extend(check_json_paths(expect["json"], result.data))
    return assertions


def first_message(result: PluginResult) -> dict[str, Any] | None:
    messages = result.fields.get("messages") or []
    return messages[0] if messages else None
