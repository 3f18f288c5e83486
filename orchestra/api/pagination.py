"""Pagination of every list endpoint."""

from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination


class StrictLimitOffsetPagination(LimitOffsetPagination):
    """``limit`` and ``offset`` as in DRF, but a value that is not an integer in range is a 400.

    DRF falls back to the defaults silently, so a typo returned a different page than asked
    for. A ``limit`` above ``max_limit`` is still capped, so no query asks PostgreSQL for more
    rows than a page holds.
    """

    max_limit = 1000

    def get_limit(self, request) -> int | None:
        if self.limit_query_param not in request.query_params:
            return self.default_limit
        return min(self._integer(request, self.limit_query_param, minimum=1), self.max_limit)

    def get_offset(self, request) -> int:
        if self.offset_query_param not in request.query_params:
            return 0
        return self._integer(request, self.offset_query_param, minimum=0)

    @staticmethod
    def _integer(request, name: str, *, minimum: int) -> int:
        try:
            value = int(request.query_params[name])
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ValidationError({name: [f"must be an integer of at least {minimum}"]})
        return value

    def get_schema_operation_parameters(self, view) -> list[dict]:
        minimums = {self.limit_query_param: 1, self.offset_query_param: 0}
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = minimums[parameter["name"]]
        return parameters
