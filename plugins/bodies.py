"""What a plugin stores of a message body: its text, or a summary of its bytes.

Every plugin that sends or receives bodies (http, sql, amqp, mqtt, websocket, grpc) summarises
them here, so a body reads the same in every step result:

- a **text** body (it decodes in its declared charset, or as UTF-8, and its content type says
  text, or says nothing and it holds no control characters) is stored as that text, cut at
  ``ORCHESTRA_MAX_STORED_BODY_CHARS``;
- a **binary** or undecodable body (PNG, gzip, protobuf, random bytes) is stored as
  ``{"content_type", "size", "sha256", "preview_base64"}``: never as lossy text.

    text = decode_text(content, content_type)        # None when the body is not text
    stored = summarize(content, content_type)        # str, or the binary summary dict
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import re
from email.message import Message
from typing import Any

from django.conf import settings

#: Bytes of a binary body kept, base64-encoded, in its summary.
PREVIEW_BYTES = 48

_TEXT_TYPES = re.compile(
    r"^(text/.*|application/(.*[+/])?(json|xml|javascript|ecmascript|yaml|x-yaml|csv|graphql"
    r"|x-www-form-urlencoded|x-ndjson|problem\+json|sql))$"
)
_BINARY_TYPES = re.compile(r"^(image|audio|video|font)/.*|^application/(octet-stream|.*zip|pdf)$")
# C0 controls other than tab, newline, vertical tab, form feed and carriage return, and DEL.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f]")


def media_type(content_type: str) -> tuple[str, str | None]:
    """``("type/subtype", charset or None)`` of a Content-Type header value, lower-cased."""
    message = Message()
    message["content-type"] = content_type
    charset = message.get_param("charset")
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime, charset.strip() if isinstance(charset, str) else None


def decode_text(content: bytes, content_type: str = "") -> str | None:
    """The body as text, or None when it is binary or does not decode (see the module doc)."""
    mime, charset = media_type(content_type)
    if _BINARY_TYPES.match(mime):
        return None
    text = _decode(content, charset)
    if text is None:
        return None
    if not _TEXT_TYPES.match(mime) and _CONTROL.search(text):
        return None  # nothing says it is text, and it does not read like text
    return text


def summarize(content: bytes, content_type: str = "", *, text: str | None = None) -> Any:
    """What is stored of a body: its (cut) text, or :func:`binary_summary`.

    ``text`` is the body's :func:`decode_text`, when the caller has it already.
    """
    if text is None:
        text = decode_text(content, content_type)
    return binary_summary(content, content_type) if text is None else summarize_text(text)


def summarize_text(text: str) -> str:
    """``text``, cut at ``ORCHESTRA_MAX_STORED_BODY_CHARS`` characters (with a trailing "…")."""
    limit = settings.ORCHESTRA_MAX_STORED_BODY_CHARS
    return text if len(text) <= limit else text[:limit] + "…"


def binary_summary(content: bytes, content_type: str = "") -> dict[str, Any]:
    """Content type, size, SHA-256 and the first :data:`PREVIEW_BYTES` bytes in base64."""
    return {
        "content_type": content_type,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "preview_base64": base64.b64encode(content[:PREVIEW_BYTES]).decode("ascii"),
    }


def _decode(content: bytes, charset: str | None) -> str | None:
    if charset:
        try:
            codecs.lookup(charset)
        except (LookupError, ValueError):
            charset = None  # an unknown charset: read it as UTF-8 or not at all
    try:
        return content.decode(charset or "utf-8-sig")
    except (UnicodeDecodeError, ValueError):
        return None
