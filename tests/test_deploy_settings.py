"""Production settings: a required secret, no debug, a clean `check --deploy`; the .env file;
a missing setting is one line on stderr for every entry point."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

BIN = Path(sys.executable).parent


def run_with(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    """Run a command of orchestra's with the test environment less its Django settings (and
    with no .env file unless ``env`` names one)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "SECRET_KEY", "ALLOWED_HOSTS"))
    }
    clean["DJANGO_SETTINGS_MODULE"] = "orchestra.settings"
    clean["ORCHESTRA_ENV_FILE"] = os.devnull
    return subprocess.run(
        list(command),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )


def manage_with(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_with(env, sys.executable, "manage.py", *args)


def test_check_deploy_passes_with_production_environment():
    result = manage_with(
        {"SECRET_KEY": secrets.token_urlsafe(60), "ALLOWED_HOSTS": "orchestra.example.com"},
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_a_secret_key():
    result = manage_with({"ALLOWED_HOSTS": "orchestra.example.com"}, "check")
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


ENTRY_POINTS = {
    "manage.py check": [sys.executable, "manage.py", "check"],
    "manage.py run_scenario": [sys.executable, "manage.py", "run_scenario", "x.yaml"],
    "celery worker": [str(BIN / "celery"), "-A", "orchestra", "worker", "-c", "1"],
    "celery beat": [str(BIN / "celery"), "-A", "orchestra", "beat"],
    "wsgi": [sys.executable, "-c", "import orchestra.wsgi"],
    "gunicorn": [
        str(BIN / "gunicorn"),
        "orchestra.wsgi:application",
        "--bind",
        "127.0.0.1:0",
        "--no-control-socket",
    ],
}


@pytest.mark.parametrize("command", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SECRET_KEY is required: set it in the environment or in the .env file"),
        (
            {"SECRET_KEY": "x", "CELERY_TASK_TIME_LIMIT": "an hour"},
            "CELERY_TASK_TIME_LIMIT must be an integer, got 'an hour'.",
        ),
        ({"ORCHESTRA_ENV_FILE": "/nonexistent/.env"}, "ORCHESTRA_ENV_FILE names /nonexistent"),
    ],
    ids=["missing-secret", "bad-celery-value", "missing-env-file"],
)
def test_a_missing_or_bad_setting_is_one_line_on_stderr_and_no_traceback(command, env, message):
    result = run_with(env, *command)

    assert result.returncode != 0
    # gunicorn logs its own start and stop on stderr; orchestra adds one line and no traceback.
    ours = [line for line in result.stderr.splitlines() if not line.startswith("[")]
    assert len(ours) == 1, result.stderr
    assert ours[0].startswith("orchestra: configuration error: ") and message in ours[0]
    assert "Traceback" not in result.stderr + result.stdout


def _print_setting(env: dict[str, str], expression: str) -> str:
    result = manage_with(
        env, "shell", "--no-imports", "-c", f"from django.conf import settings; print({expression})"
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_settings_read_the_env_file_and_the_environment_wins(tmp_path):
    env_file = tmp_path / "orchestra.env"
    env_file.write_text(
        "# a comment\n"
        "SECRET_KEY='from-the-file-$HOME-${HOME}'\n"
        "ALLOWED_HOSTS=file.example\n"
        "ORCHESTRA_MAX_STEPS=7\n"
    )

    from_file = _print_setting(
        {"ORCHESTRA_ENV_FILE": str(env_file)},
        "settings.SECRET_KEY, settings.ALLOWED_HOSTS, settings.ORCHESTRA_MAX_STEPS",
    )
    environment_wins = _print_setting(
        {"ORCHESTRA_ENV_FILE": str(env_file), "ORCHESTRA_MAX_STEPS": "9"},
        "settings.ORCHESTRA_MAX_STEPS",
    )

    assert from_file == "from-the-file-$HOME-${HOME} ['file.example'] 7"
    assert environment_wins == "9"


def test_the_env_file_configures_celery_too(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SECRET_KEY=x\nCELERY_TASK_TIME_LIMIT=123\n")

    result = run_with(
        {"ORCHESTRA_ENV_FILE": str(env_file)},
        sys.executable,
        "-c",
        "from orchestra.celery import app; print(app.conf.task_time_limit)",
    )

    assert result.stdout.strip() == "123", result.stderr


def test_env_example_documents_every_setting_orchestra_reads():
    """Every variable the settings read by name appears in .env.example."""
    import re

    sources = (ROOT / "orchestra" / "settings.py").read_text() + (
        ROOT / "celeryconfig.py"
    ).read_text()
    read = set(re.findall(r'env_(?:str|bool|int|float|list|database)\(\s*"([A-Z0-9_]+)"', sources))
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))

    assert read, "no settings found"
    assert read - documented == set()
