"""Production settings: a required secret, no debug, and a clean `check --deploy`."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from tests.support import ROOT


def manage_with(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "SECRET_KEY", "ALLOWED_HOSTS"))
    }
    clean["DJANGO_SETTINGS_MODULE"] = "orchestra.settings"
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )


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
