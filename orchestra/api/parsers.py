from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def json_depth(value, limit: int) -> int:
    """Nesting depth of a parsed JSON value; stops counting once past ``limit``."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        children = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        level = [child for child in children if isinstance(child, dict | list)]
    return depth


class LimitedJSONParser(JSONParser):
    """JSON with a bounded nesting depth (``ORCHESTRA_API_MAX_JSON_DEPTH``)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON nested too deeply") from None
        limit = settings.ORCHESTRA_API_MAX_JSON_DEPTH
        if json_depth(data, limit) > limit:
            raise ParseError(f"JSON nested deeper than {limit} levels")
        return data
