from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from notifications.models import Channel, Delivery, DeliveryAttempt, ScenarioHealth
from notifications.states import Event


class ChannelForm(forms.ModelForm):
    url = forms.URLField(required=False, max_length=2000, assume_scheme="https")
    events = forms.MultipleChoiceField(choices=Event.choices, widget=forms.CheckboxSelectMultiple)
    secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=_("Leave empty to keep the current secret."),
    )

    class Meta:
        model = Channel
        fields = ["name", "kind", "url", "secret", "emails", "events", "enabled"]

    def clean_secret(self) -> str:
        return self.cleaned_data["secret"] or (self.instance.secret if self.instance.pk else "")

    def clean(self):
        values = super().clean()
        if values.get("kind") == Channel.Kind.WEBHOOK and not values.get("url"):
            self.add_error("url", _("A webhook needs a URL."))
        if values.get("kind") == Channel.Kind.EMAIL and not values.get("emails", "").strip():
            self.add_error("emails", _("E-mail needs at least one address."))
        return values


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    form = ChannelForm
    list_display = ["name", "kind", "url", "events", "enabled"]
    list_filter = ["kind", "enabled"]


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ["number", "at", "response_status", "error", "milliseconds"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    """The delivery log: each event per channel, with every attempt inline."""

    list_display = ["id", "event", "channel", "status", "attempts", "next_attempt_at", "created_at"]
    list_filter = ["status", "event", "channel"]
    list_select_related = ["channel"]
    readonly_fields = [
        "channel", "event", "body", "status", "attempts", "next_attempt_at", "created_at",
        "delivered_at",
    ]  # fmt: skip
    fields = readonly_fields
    inlines = [DeliveryAttemptInline]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(ScenarioHealth)
class ScenarioHealthAdmin(admin.ModelAdmin):
    list_display = ["scenario", "status", "changed_at"]
    list_filter = ["status"]
    readonly_fields = ["scenario", "status", "changed_at"]

    def has_add_permission(self, request) -> bool:
        return False
