"""Environments as runs see them: ``env.*`` in templates, secret variables, allowed credentials.

A launch puts :func:`environment_run_context` into each run's launch context (``env``): the
name, the public variables, and the *names* of the secret variables and credentials. The
secret values never enter the context; :func:`run_environment` loads them when a worker starts
the run, so they are stored nowhere but in the environment itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from targets.models import VARIABLE_NAME, Environment


def environment_problems(
    *, variables: Any, secret_variables: Any, credentials: Any
) -> dict[str, list[str]]:
    """What is wrong with an environment's fields, by field; empty when it is valid."""
    problems: dict[str, list[str]] = {}

    def add(name: str, message: str) -> None:
        problems.setdefault(name, []).append(message)

    for name, value in (("variables", variables), ("secret_variables", secret_variables)):
        if not isinstance(value, dict):
            add(name, "must be a JSON object")
            continue
        for key in value:
            if not VARIABLE_NAME.match(key):
                add(name, f"{key!r} is not a variable name (letters, digits, _)")
    if isinstance(secret_variables, dict):
        for key, value in secret_variables.items():
            if not isinstance(value, str) or not value:
                add("secret_variables", f"{key!r} must be a non-empty text")
        if isinstance(variables, dict):
            for key in sorted(set(variables) & set(secret_variables)):
                add("secret_variables", f"{key!r} is also a public variable")
    if not isinstance(credentials, list | tuple):
        add("credentials", "must be a list of credential names")
    else:
        for name in credentials:
            if name not in settings.ORCHESTRA_CREDENTIALS:
                add("credentials", f"{name!r} is not configured (ORCHESTRA_CREDENTIAL_{name})")
    return problems


def environment_run_context(environment: Environment) -> dict[str, Any]:
    """The ``env`` entry of a run's launch context: nothing secret, only names."""
    return {
        "name": environment.name,
        "variables": environment.variables,
        "secrets": sorted(environment.secret_variables),
        "credentials": sorted(environment.credentials),
    }


@dataclass(frozen=True)
class RunEnvironment:
    """What one run's templates see of its environment, once its secrets are loaded."""

    variables: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    #: Names of the credentials the run may read; None: no environment, every credential.
    credential_names: frozenset[str] | None = None

    def scope(self) -> dict[str, Any]:
        """``env`` as templates read it."""
        return {**self.variables, **self.secrets}

    def credentials(self, configured: Mapping[str, str]) -> dict[str, str]:
        """The configured credentials this run may read."""
        if self.credential_names is None:
            return dict(configured)
        return {name: value for name, value in configured.items() if name in self.credential_names}


def run_environment(env: Mapping[str, Any] | None) -> RunEnvironment:
    """The environment of a run from its context's ``env`` entry, secret values loaded.

    A secret variable that has since been removed from the environment is missing, so a
    template reading it fails as an undefined name instead of reading something else.
    """
    if not env:
        return RunEnvironment()
    names = set(env.get("secrets", []))
    stored = (
        Environment.objects.filter(name=env.get("name"))
        .values_list("secret_variables", flat=True)
        .first()
    ) or {}
    return RunEnvironment(
        variables=dict(env.get("variables", {})),
        secrets={name: value for name, value in stored.items() if name in names},
        credential_names=frozenset(env.get("credentials", [])),
    )
