"""What one run must never store, show or log, and which credentials each step sends.

Redaction (:func:`runs.redaction.redact`) replaces known strings, so a secret is protected in
the spellings that are known. A template can spell a credential in many others:
``{{ credentials.TOKEN | reverse }}``, ``| upper``, ``| list | join``, ``[1:]``, ``~ 'x'``,
``| urlencode``, ``| tojson``, ``'%s' | format(...)``. Redaction cannot guess them, so the run
learns them as they are made, by taint:

- **tainted names**: ``credentials``, every variable named in the definition's ``secrets``, and
  every variable or capture derived from them: a variable whose template reads a tainted name,
  and a variable or capture whose value holds a known secret;
- **a template that reads a tainted name** (found statically, from the names it reads) adds to
  the run's secrets its whole output (every string, key and number in it) and every value
  computed while rendering it (operator, call, filter and slice results), also when it fails,
  since its error may quote one of them.

So everything such a template produces is redacted wherever the run stores it: the request
and response summaries, captures, assertions, tries, errors, and the worker's log (see
:func:`runs.redaction.redacted_in_logs`). The price is over-redaction: a template that mixes a
credential with public text masks that public text too, which is the right side to err on.

An environment's secret variables (``targets.environments``) are tainted the same way, one key
of ``env`` each: a template reading ``env.<secret>`` (or ``env`` in a way that may read any
key) is tainted, one reading only public variables is not.

Each tainted name also carries the names of the credentials its value may hold, so that a step
can say which credentials its ``with`` block sends (``StepContext.credentials_sent``), for the
outbound policy to check against each credential's allowed hosts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from runs.redaction import MIN_EMBEDDED_SECRET, texts_of
from runs.templating import credential_names, member_reads, referenced_names, render

CREDENTIALS = "credentials"
#: The environment's variables; reading one of its secret variables taints a template.
ENV = "env"


class RunSecrets:
    """The secrets of one run: values to redact, and the tainted names that produce them."""

    def __init__(
        self,
        credentials: Mapping[str, str],
        declared: Collection[str] = (),
        env_secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.credentials = dict(credentials)
        self._declared = frozenset(declared)
        self._env_secrets = dict(env_secrets or {})
        self._env_secret_names = {f"{ENV}.{name}" for name in self._env_secrets}
        #: Every string that must not reach storage, for :func:`runs.redaction.redact`.
        self.values: set[str] = {value for value in self.credentials.values() if value}
        self.values |= {value for value in self._env_secrets.values() if value}
        #: Tainted name -> names of the credentials its value may carry.
        self._carries: dict[str, frozenset[str]] = {CREDENTIALS: frozenset(self.credentials)}
        self._carries.update((name, frozenset()) for name in self._declared)
        #: Secret value -> names of the credentials it was made from.
        self._sources: dict[str, frozenset[str]] = {
            value: frozenset({name}) for name, value in self.credentials.items() if value
        }
        for value in self._env_secrets.values():
            self._sources.setdefault(value, frozenset())

    def render(self, value: Any, scope: dict[str, Any]) -> tuple[Any, frozenset[str]]:
        """``value`` rendered in ``scope``, and the names of the credentials it carries.

        Everything a template reading a tainted name makes becomes a secret of the run, also
        when rendering fails (the TemplateError is raised after that).
        """
        rendered, _, carried = self._render(value, scope)
        return rendered, carried

    def variable(self, name: str, value: Any, scope: dict[str, Any]) -> Any:
        """Render the definition's variable ``name``; taint it if it is or holds a secret."""
        rendered, tainted, carried = self._render(value, scope)
        if name in self._declared:
            self._learn(texts_of(rendered), carried)
            tainted = True
        elif not tainted:
            tainted, carried = self._holds_secret(rendered)
        if tainted:
            self._carries[name] = self._carries.get(name, frozenset()) | carried
        return rendered

    def captured(self, captures: Mapping[str, Any]) -> None:
        """Taint the captures that hold a secret; a clean capture replaces a tainted name."""
        for name, value in captures.items():
            holds, carried = self._holds_secret(value)
            if holds:
                self._carries[name] = carried
            elif name not in self._declared and name != CREDENTIALS:
                self._carries.pop(name, None)

    def _render(self, value: Any, scope: dict[str, Any]) -> tuple[Any, bool, frozenset[str]]:
        names = referenced_names(value)
        tainted = names & self._carries.keys()
        if ENV in names and self._env_secrets and self._reads_env_secret(value):
            tainted = tainted | {ENV}
        carried = frozenset().union(
            *(self._carries[n] for n in tainted if n not in (CREDENTIALS, ENV))
        )
        if CREDENTIALS in tainted:
            carried |= credential_names(value, self.credentials)
        made: set[str] = set()
        try:
            secret_names = self._carries.keys() | self._env_secret_names
            rendered = render(value, scope, secret_names=secret_names, secrets=made)
        finally:
            self._learn(made, carried)
        return rendered, bool(tainted), carried

    def _reads_env_secret(self, value: Any) -> bool:
        """Whether a template in ``value`` reads a secret variable of the environment (or
        reads ``env`` in a way that may)."""
        reads = member_reads(value, ENV)
        return reads is None or not reads.isdisjoint(self._env_secrets)

    def _learn(self, values: Collection[str], carried: frozenset[str]) -> None:
        for value in values:
            if value:
                self.values.add(value)
                self._sources[value] = self._sources.get(value, frozenset()) | carried

    def _holds_secret(self, value: Any) -> tuple[bool, frozenset[str]]:
        """Whether ``value`` holds a known secret, and the credentials those were made from."""
        holds, carried = False, frozenset()
        for text in texts_of(value):
            for secret, sources in self._sources.items():
                inside = len(secret) >= MIN_EMBEDDED_SECRET and secret in text
                if inside or secret == text:
                    holds, carried = True, carried | sources
        return holds, carried
