"""Pure decisions of the throttle: how long a pushback blocks a key, and what it teaches.

Tested with tables (tests/unit/test_throttle_policies.py); ``targets.throttle`` applies them.
"""

from __future__ import annotations

#: The block after a pushback without a readable ``Retry-After``; doubled per pushback in a row.
DEFAULT_BACKOFF_SECONDS = 1.0
#: Pushbacks less than this apart count as "in a row".
IN_A_ROW_SECONDS = 60.0
#: After a pushback the key is paced this much slower than the rate the target accepted.
SLOWDOWN = 1.2
#: Each request sent while the key is busy shortens the learned interval by this fraction: a
#: slow probe upward, ~180 requests from one pushback's slowdown back to the limit (< 1 % 429s).
PROBE = 0.001
#: A learned interval shorter than this is forgotten: the key is unlimited again.
SHORTEST_LEARNED_INTERVAL = 0.0005


def block_seconds(retry_after: float | None, in_a_row: int, cap: float) -> float:
    """How long a pushback blocks its key: the target's ``Retry-After`` when readable, else
    the default backoff doubling with each pushback in a row (``in_a_row`` counts this one);
    never more than ``cap`` (``ORCHESTRA_MAX_RETRY_AFTER``)."""
    if retry_after is not None:
        return max(0.0, min(retry_after, cap))
    return min(cap, DEFAULT_BACKOFF_SECONDS * 2 ** max(0, in_a_row - 1))


def learned_interval(
    current: float | None, configured: float, window_requests: int, window_seconds: float
) -> float:
    """The emission interval (seconds) to pace a key at after a pushback.

    The target accepted ``window_requests`` in ``window_seconds`` (since the last pushback, or
    since the key became busy) and then refused one: that pace was too fast, and so was the
    interval the key was paced at (``current`` learned, ``configured``; 0: none), whichever was
    slowest; the key goes ``SLOWDOWN`` times slower than that.
    """
    accepted = max(1, window_requests)
    observed = max(0.0, window_seconds) / accepted
    paced = max(current or 0.0, configured, observed, SHORTEST_LEARNED_INTERVAL)
    return paced * SLOWDOWN


def in_a_row(previous: int, seconds_since_last: float | None) -> int:
    """The number of pushbacks in a row, this one included."""
    if seconds_since_last is None or seconds_since_last > IN_A_ROW_SECONDS:
        return 1
    return previous + 1
