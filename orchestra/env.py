"""Typed readers for configuration from the environment; a bad value fails loudly at start-up.

The environment may be completed from a ``.env`` file (:func:`load_env_file`); the entry points
(``manage.py``, the Celery worker and beat, the WSGI application) turn a configuration error into
one line on stderr (:func:`exit_on_configuration_error`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dj_database_url
import dotenv
from django.core.exceptions import ImproperlyConfigured

ENV_FILE_VARIABLE = "ORCHESTRA_ENV_FILE"
DEFAULT_ENV_FILE = Path(__file__).resolve().parent.parent / ".env"


def load_env_file() -> Path | None:
    """Add the variables of the ``.env`` file to the environment and return its path.

    The file is ``ORCHESTRA_ENV_FILE`` if set (an error when it does not exist), else ``.env`` in
    the repository root if there is one. A variable the environment already has keeps its value:
    the environment wins over the file. Values are taken literally (no ``${...}`` expansion), so a
    secret may contain any character.
    """
    named = os.environ.get(ENV_FILE_VARIABLE)
    path = Path(named) if named else DEFAULT_ENV_FILE
    if not path.exists():
        if named:
            raise ImproperlyConfigured(f"{ENV_FILE_VARIABLE} names {named}, which does not exist.")
        return None
    dotenv.load_dotenv(path, override=False, interpolate=False)
    return path


@contextmanager
def exit_on_configuration_error(exit_code: int = 2) -> Iterator[None]:
    """Turn a configuration error into one line on stderr and exit ``exit_code``: what to set
    matters to an operator, the traceback through Django's or Celery's start-up does not."""
    try:
        yield
    except ImproperlyConfigured as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"orchestra: configuration error: {message}\n")
        raise SystemExit(exit_code) from None


def env_str(name: str, default: str | None = None) -> str:
    """Return the variable, or the default; with no default a missing variable is an error."""
    value = os.environ.get(name)
    if value is not None and value != "":
        return value
    if default is None:
        raise ImproperlyConfigured(
            f"{name} is required: set it in the environment or in the .env file (see .env.example)."
        )
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
