"""OpenAPI post-processing shared by every operation."""

from __future__ import annotations

_WRITE_METHODS = {"post", "put", "patch", "delete"}
_WRITE_LIMITS = {
    "413": "The body is larger than ORCHESTRA_API_MAX_BODY_BYTES.",
    "415": "The body is not JSON.",
    "429": "Too many writes by this user; see the Retry-After header.",
}


def document_write_limits(result: dict, generator, request, public) -> dict:
    """Every write may be refused by the body-size middleware (413), the JSON-only parser (415)
    or the write throttle (429); none is declared per view, so they are added here."""
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in _WRITE_METHODS:
                continue
            for status, description in _WRITE_LIMITS.items():
                operation["responses"].setdefault(
                    status,
                    {
                        "description": description,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                )
    return result
