"""Removes secrets from anything about to be stored or shown."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"
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


def redact(value: Any, secrets: frozenset[str] | set[str] = frozenset()) -> Any:
    """A copy of ``value`` with sensitive keys masked and every secret string replaced.

    Secrets are replaced longest first, so a secret that contains a shorter one is masked whole
    instead of leaving its tail behind; numbers equal to a secret are masked too (a PIN stored as
    a JSON number is still the PIN).
    """
    ordered = sorted((secret for secret in secrets if secret), key=len, reverse=True)
    return _redact(value, ordered)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, dict):
        return {
            _redact(key, secrets): REDACTED if is_sensitive_key(key) else _redact(item, secrets)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, secrets) for item in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in secrets:
        return REDACTED
    return value
