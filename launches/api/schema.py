"""OpenAPI post-processing for launches: what serializers cannot say about a launch request."""

from __future__ import annotations

# A launch picks its scenarios one way (tags or names) and gives rows one way (data or payload).
_CHOICES = {
    "oneOf": [{"required": ["tags"]}, {"required": ["scenarios"]}],
    "not": {"required": ["payload", "data"]},
}


def document_launch_choices(result: dict, generator, request, public) -> dict:
    """Add to the launch request body that exactly one of ``tags`` and ``scenarios`` is given,
    and not both ``payload`` and ``data``; so the body itself is required."""
    create = result.get("paths", {}).get("/api/launches/", {}).get("post")
    if create and "requestBody" in create:
        create["requestBody"]["required"] = True
    schemas = result.get("components", {}).get("schemas", {})
    for name in ("LaunchCreateRequest", "LaunchCreate"):
        if name in schemas:
            schemas[name].update(_CHOICES)
    return result
