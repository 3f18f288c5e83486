from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from runs.redaction import REDACTED
from targets.models import Environment


class SecretVariablesWidget(forms.Textarea):
    """Shows the names of the secret variables, never their values; a value left as
    ``[REDACTED]`` keeps the stored one."""

    def format_value(self, value):
        try:
            stored = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            return value  # the operator's own invalid text, shown back with its error
        if isinstance(stored, dict):
            return json.dumps(dict.fromkeys(stored, REDACTED), indent=2)
        return super().format_value(value)


class EnvironmentAdminForm(forms.ModelForm):
    class Meta:
        model = Environment
        fields = ["name", "description", "variables", "secret_variables", "credentials"]
        widgets = {"secret_variables": SecretVariablesWidget(attrs={"rows": 6, "cols": 80})}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The admin adds a hidden copy of the initial value for fields with a callable default;
        # for secrets that copy would carry the values to the page.
        self.fields["secret_variables"].show_hidden_initial = False

    def clean_secret_variables(self):
        value = self.cleaned_data["secret_variables"]
        stored = self.instance.secret_variables if self.instance.pk else {}
        if isinstance(value, dict):
            return {
                name: stored.get(name, "") if secret == REDACTED else secret
                for name, secret in value.items()
            }
        return value


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    form = EnvironmentAdminForm
    list_display = ["name", "variable_names", "secret_names", "credential_names", "updated_at"]
    search_fields = ["name", "description"]
    readonly_fields = ["created_at", "updated_at"]

    @admin.display(description=_("variables"))
    def variable_names(self, environment: Environment) -> str:
        return ", ".join(sorted(environment.variables))

    @admin.display(description=_("secret variables"))
    def secret_names(self, environment: Environment) -> str:
        return ", ".join(sorted(environment.secret_variables))

    @admin.display(description=_("credentials"))
    def credential_names(self, environment: Environment) -> str:
        return ", ".join(environment.credentials)
