from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse

from orchestra.api.exceptions import error_body


class RequestSizeLimitMiddleware:
    """Refuse bodies over ``ORCHESTRA_API_MAX_BODY_BYTES`` with 413 before reading them."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.ORCHESTRA_API_MAX_BODY_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            return JsonResponse(
                error_body("too_large", f"The request body is larger than {limit} bytes."),
                status=413,
            )
        return self.get_response(request)
