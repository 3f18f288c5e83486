from __future__ import annotations

import json
from datetime import datetime

from django import forms
from django.contrib import admin, messages
from django.core.validators import MinValueValidator
from django.utils.html import format_html
from django.utils.timesince import timeuntil
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from orchestra.roles import OPERATE_PERMISSION, VIEW_PERMISSION
from runs.redaction import REDACTED
from targets import selectors, services
from targets.models import Environment, RateKey

STATE_FIELDS = [
    "blocked_display",
    "learned_interval_seconds",
    "use_display",
    "tat",
    "requests_total",
    "pushbacks_total",
    "throttled_waits_total",
    "wait_seconds_total",
    "recent_pushbacks_display",
    "last_pushback_at",
    "consecutive_pushbacks",
]
BLOCKED_COLOUR = "#dc3545"


class RateKeyForm(forms.ModelForm):
    """The configuration, with the bounds the API checks too."""

    class Meta:
        model = RateKey
        fields = ["name", *services.CONFIG_FIELDS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("requests", "burst", "max_concurrent"):
            field = self.fields[name]
            field.min_value = 1
            field.validators.append(MinValueValidator(1))
            field.widget.attrs["min"] = 1
        self.fields["interval_seconds"].validators.append(services.validate_interval_seconds)


def limit_text(key: RateKey) -> str:
    """``20 / 1 s, burst 5``; a key without a rate says what its 429s taught, if anything."""
    if key.requests:
        return _("%(requests)d / %(interval)s s, burst %(burst)d") % {
            "requests": key.requests,
            "interval": f"{key.interval_seconds:g}",
            "burst": key.burst,
        }
    if key.learned_interval_seconds:
        return _("unlimited; learned from 429s: 1 / %(interval)s s") % {
            "interval": f"{key.learned_interval_seconds:g}"
        }
    return _("unlimited")


def _in(seconds: float, until: datetime, now: datetime) -> str:
    if seconds < 60:
        return _("in %(seconds)d s") % {"seconds": max(round(seconds), 1)}
    return _("in %(time)s") % {"time": timeuntil(until, now)}


@admin.register(RateKey)
class RateKeyAdmin(admin.ModelAdmin):
    """Rate keys: configuration editable by operators, the throttle's state read-only."""

    form = RateKeyForm
    list_display = [
        "name",
        "limit_display",
        "max_concurrent",
        "blocked_display",
        "recent_pushbacks_count",
        "requests_total",
    ]
    search_fields = ["name"]
    actions = ["unblock_keys"]
    readonly_fields = [*STATE_FIELDS, "created_at", "updated_at"]

    def get_queryset(self, request):
        return selectors.rate_key_list()

    def get_fieldsets(self, request, obj=None):
        configuration = (_("Configuration"), {"fields": ["name", *services.CONFIG_FIELDS]})
        if obj is None:
            return [configuration]
        return [
            configuration,
            (_("State (kept by the throttle)"), {"fields": STATE_FIELDS}),
            (_("Service information"), {"fields": ["created_at", "updated_at"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        # A key's name is what steps and targets are counted under: it is set once.
        return [*self.readonly_fields, "name"] if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        # Through the services, which write the configuration columns only: a full save would
        # put back the state read when the form was opened over the throttle's newer one.
        config = {name: form.cleaned_data[name] for name in services.CONFIG_FIELDS}
        if change:
            services.rate_key_configure(rate_key_id=obj.pk, **config)
        else:
            obj.pk = services.rate_key_create(name=form.cleaned_data["name"], **config).pk

    @admin.display(description=_("limit"))
    def limit_display(self, key: RateKey) -> str:
        return limit_text(key)

    @admin.display(description=_("blocked until"), ordering="blocked_until")
    def blocked_display(self, key: RateKey):
        use = selectors.rate_key_use(key=key, now=key.db_now)
        if not use.blocked:
            return "—"
        return format_html(
            '<b style="color:{}" title="{}">{}</b>',
            BLOCKED_COLOUR,
            key.blocked_until.strftime("%Y-%m-%d %H:%M:%S UTC"),
            _in(use.blocked_for_seconds, key.blocked_until, key.db_now),
        )

    @admin.display(description=_("recent 429s"))
    def recent_pushbacks_count(self, key: RateKey) -> int:
        return len(key.recent_pushbacks)

    @admin.display(description=_("recent 429s"))
    def recent_pushbacks_display(self, key: RateKey):
        if not key.recent_pushbacks:
            return "—"
        return format_html("<pre>{}</pre>", json.dumps(key.recent_pushbacks, indent=2))

    @admin.display(description=_("use now"))
    def use_display(self, key: RateKey) -> str:
        use = selectors.rate_key_use(key=key, now=key.db_now)
        if use.requests_per_second is None:
            return _("unlimited")
        return _(
            "%(rate)s requests/s; burst used %(used)s of %(burst)d; next request in %(next)s s"
        ) % {
            "rate": f"{use.requests_per_second:g}",
            "used": f"{use.burst_used:g}",
            "burst": key.burst,
            "next": f"{use.next_request_in_seconds:g}",
        }

    def has_module_permission(self, request) -> bool:
        return request.user.has_perm(VIEW_PERMISSION)

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(VIEW_PERMISSION)

    def has_add_permission(self, request) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    @admin.action(description=_("Unblock selected rate keys"), permissions=["operate"])
    def unblock_keys(self, request, queryset):
        unblocked = 0
        for key_id in queryset.values_list("id", flat=True):
            try:
                services.rate_key_unblock(rate_key_id=key_id)
            except RateKey.DoesNotExist:
                continue
            unblocked += 1
        self.message_user(
            request,
            ngettext("%(count)d rate key unblocked.", "%(count)d rate keys unblocked.", unblocked)
            % {"count": unblocked},
            messages.SUCCESS,
        )


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
