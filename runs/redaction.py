"""Removes secrets from anything about to be stored, shown or logged."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"
#: Shortest secret masked inside other text; shorter ones are masked only as whole values.
MIN_EMBEDDED_SECRET = 4
# A key is sensitive when its name, lower-cased with ``-`` read as ``_``, contains one of these:
# ``Authorization``, ``X-Api-Key``, ``access_token``, ``client_secret``, ``Set-Cookie``... Masking
# a harmless ``token_type`` now and then is the price of never storing a credential.
SENSITIVE_KEY_PARTS = frozenset(
    {
        "authorization",
        "cookie",
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "private_key",
        "credential",
    }
)
_SENSITIVE_KEY = re.compile("|".join(sorted(SENSITIVE_KEY_PARTS)))


def is_sensitive_key(key: Any) -> bool:
    """Whether a header, field or variable called ``key`` holds a credential."""
    if not isinstance(key, str):
        return False
    return _SENSITIVE_KEY.search(key.lower().replace("-", "_")) is not None


def redact(value: Any, secrets: Collection[str] = frozenset()) -> Any:
    """A copy of ``value`` with sensitive keys masked and every secret string replaced.

    Secrets are replaced in one pass, longest first, so a secret that contains a shorter one is
    masked whole instead of leaving its tail behind, and a marker already written is never
    masked again. A secret shorter than :data:`MIN_EMBEDDED_SECRET` characters is masked where
    a whole string equals it, not inside other text: masking every ``e`` would garble every
    stored text while protecting next to nothing. Numbers equal to a secret are masked too (a
    PIN stored as a JSON number is still the PIN).
    """
    whole = frozenset(secret for secret in secrets if secret)
    return _redact(value, whole, _pattern(whole) if whole else None)


@lru_cache(maxsize=256)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    embedded = sorted((s for s in secrets if len(s) >= MIN_EMBEDDED_SECRET), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, embedded))) if embedded else None


def _redact(value: Any, whole: frozenset[str], pattern: re.Pattern[str] | None) -> Any:
    if isinstance(value, dict):
        return {
            _redact(key, whole, pattern): (
                REDACTED if is_sensitive_key(key) else _redact(item, whole, pattern)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, whole, pattern) for item in value]
    if isinstance(value, str):
        if value in whole:
            return REDACTED
        return pattern.sub(REDACTED, value) if pattern is not None else value
    if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in whole:
        return REDACTED
    return value


def texts_of(value: Any) -> set[str]:
    """Every spelling of ``value`` that storage could hold: its strings (keys included), as
    they are and as they appear inside a JSON text, and the text of its numbers; booleans and
    null say nothing."""
    texts: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if item:
                texts.add(str(item))
                texts.add(json.dumps(item)[1:-1])
                texts.add(json.dumps(item, ensure_ascii=False)[1:-1])
        elif isinstance(item, bytes):
            texts.add(item.decode("utf-8", "replace"))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            texts.add(str(item))
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return texts


# The secrets of the runs this process is executing, each a live set that grows as its run
# renders templates reading secrets (runs.secrets).
_logged: list[Collection[str]] = []


@contextmanager
def redacted_in_logs(secrets: Collection[str]) -> Iterator[None]:
    """Mask ``secrets`` in every log record of this process while the block runs."""
    _logged.append(secrets)
    try:
        yield
    finally:
        _logged[:] = [active for active in _logged if active is not secrets]


def logged_secrets() -> set[str]:
    """The configured credentials' values and the secrets of every run executing here."""
    from django.conf import settings

    secrets = set(settings.ORCHESTRA_CREDENTIALS.values()) if settings.configured else set()
    for active in list(_logged):
        while True:
            try:
                secrets.update(list(active))
                break
            except RuntimeError:  # another thread's run learnt a secret meanwhile: copy again
                continue
    return secrets


class RedactingFilter(logging.Filter):
    """A handler filter that masks secrets in a record's message, arguments and traceback.

    It sits on handlers, not loggers, because a logger's filters do not see the records its
    children propagate to it (orchestra/settings.py LOGGING, and Celery's own handlers).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = logged_secrets()
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record: logging reports it, with nothing of ours in it
            return True
        record.msg, record.args = redact(message, secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        return True


def redact_handlers(logger: logging.Logger) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` that has none."""
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
