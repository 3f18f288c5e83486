"""DATABASE_URL is parsed by dj-database-url; its query parameters reach the connection."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from orchestra.env import env_database

DEFAULT = "postgres://postgres@127.0.0.1:5432/orchestra"


def test_the_default_url_names_local_postgresql(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)

    config = env_database("DATABASE_URL", DEFAULT)

    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["HOST"], config["PORT"], config["NAME"], config["USER"]) == (
        "127.0.0.1",
        5432,
        "orchestra",
        "postgres",
    )


def test_sslmode_options_and_connect_timeout_become_connection_options(monkeypatch):
    monkeypatch.setenv(
        "DATABASE_URL",
        "postgresql://app:p%40ss%2Fword@db.example:6432/orch%2Fprod"
        "?sslmode=verify-full&options=-c%20statement_timeout%3D5000&connect_timeout=7",
    )

    config = env_database("DATABASE_URL", DEFAULT)

    assert config["OPTIONS"] == {
        "sslmode": "verify-full",
        "options": "-c statement_timeout=5000",
        "connect_timeout": 7,
    }
    assert (config["USER"], config["PASSWORD"], config["NAME"]) == ("app", "p@ss/word", "orch/prod")
    assert (config["HOST"], config["PORT"]) == ("db.example", 6432)


def test_the_options_reach_psycopg(monkeypatch):
    """What the driver is given, not only what the settings say."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    monkeypatch.setenv(
        "DATABASE_URL", "postgres://u@h:5432/d?sslmode=require&connect_timeout=3&options=-c%20x%3D1"
    )
    config = {**env_database("DATABASE_URL", DEFAULT), "TIME_ZONE": None}
    config.setdefault("CONN_MAX_AGE", 0)

    params = DatabaseWrapper(config).get_connection_params()

    assert params["sslmode"] == "require"
    assert params["connect_timeout"] == 3
    assert params["options"] == "-c x=1"


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://u@h/d", "must be a postgres:// URL"),
        ("nonsense", "is not a database URL"),
        ("postgres://u@h:port/d", "is not a database URL"),
        ("postgres://u@h/d?sslmode=require&sslmode=disable", "sslmode more than once"),
    ],
)
def test_a_bad_url_stops_start_up_with_a_clear_message_without_the_password(
    monkeypatch, url, message
):
    monkeypatch.setenv("DATABASE_URL", url.replace("u@", "u:hunter2@"))

    with pytest.raises(ImproperlyConfigured, match=message) as caught:
        env_database("DATABASE_URL", DEFAULT)

    assert "hunter2" not in str(caught.value)
