"""Typed readers for configuration from the environment; a bad value fails loudly at start-up."""

from __future__ import annotations

import os

import dj_database_url
from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str | None = None) -> str:
    """Return the variable, or the default; with no default a missing variable is an error."""
    value = os.environ.get(name)
    if value is not None and value != "":
        return value
    if default is None:
        raise ImproperlyConfigured(f"The environment variable {name} is required.")
    return default


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}.")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}.") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}.") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_database(name: str, default: str) -> dict:
    """A Django DATABASES entry from a ``postgres://`` URL (dj-database-url); query parameters
    (``sslmode``, ``options``, ``connect_timeout``, ...) become the connection's OPTIONS."""
    url = env_str(name, default)
    try:
        config = dj_database_url.parse(url)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not a database URL: {exc}") from None
    if config["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured(f"{name} must be a postgres:// URL.")
    repeated = [key for key, value in config.get("OPTIONS", {}).items() if isinstance(value, list)]
    if repeated:
        raise ImproperlyConfigured(f"{name} gives {', '.join(repeated)} more than once.")
    return config
