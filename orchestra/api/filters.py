"""Filters shared by the list endpoints."""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django_filters.constants import EMPTY_VALUES
from django_filters.fields import IsoDateTimeField
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field


class StrictFilterSet(django_filters.FilterSet):
    """A typed query parameter that is present must say something: django-filter ignores
    ``?queued_after=`` or ``?is_active=maybe`` and lists everything, which is not what the
    caller asked for; here they are a 400 naming the parameter. An empty text filter stays
    what it always was, no filter."""

    def is_valid(self) -> bool:
        if not super().is_valid():
            return False
        for name, filter_ in self.filters.items():
            if isinstance(filter_, django_filters.CharFilter):
                continue
            if name in self.data and self.form.cleaned_data.get(name) in EMPTY_VALUES:
                self.form.add_error(name, "Enter a valid value.")
        return not self.form.errors


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 datetime, converted to UTC before it reaches the database.

    Python accepts UTC offsets up to ±23:59, PostgreSQL only up to ±15:59: passed on as they
    were, offsets in between made the query fail with a 500.
    """

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValidationError("The date is out of range.", code="invalid") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


@extend_schema_field(OpenApiTypes.INT)
class IdFilter(django_filters.NumberFilter):
    """An object id. A plain NumberFilter on ``<fk>_id`` takes any decimal up to 1e50 and is
    documented as a number."""

    field_class = forms.IntegerField
