"""Pure decisions of the throttle: how long a pushback blocks a key, and what it teaches.

Tested with tables (tests/unit/test_throttle_policies.py); ``targets.throttle`` applies them.
"""

from __future__ import annotations

#: The block after a pushback without a readable ``Retry-After``; doubled per pushback in a row.
DEFAULT_BACKOFF_SECONDS = 1.0
#: Pushbacks less than this apart count as "in a row".
IN_A_ROW_SECONDS = 60.0
#: After a pushback the key is paced this much slower than the pace the target refused ...
SLOWDOWN = 1.1
#: ... or this much when the target refused it soon (fewer than FAR_REQUESTS accepted since the
#: last pushback): the pace was far too fast.
FAR_SLOWDOWN = 2.0
FAR_REQUESTS = 20
#: Each request sent while the key is busy shortens the learned interval by a fraction: quickly
#: (0.5 %) while the key is paced more than NEAR slower than the pace last refused, slowly beyond
#: (0.01 %: ~950 requests from one slowdown back to the limit, so few 429s once it is known).
QUICK_PROBE = 0.005
PROBE = 0.0001
NEAR = 1.15
#: A learned interval shorter than this is forgotten: the key is unlimited again.
SHORTEST_LEARNED_INTERVAL = 0.0005
#: A configured key learns only from a pushback that comes fewer than this many accepted
#: requests after the previous one (see ``learns``).
TRUSTED_REQUESTS = 100
#: A configured key that had no pushback for this long forgets what it learned: each request
#: shortens the learned interval by QUICK_PROBE until it is back at the configured one.
QUIET_SECONDS = 30.0


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
    slowest; the key goes ``SLOWDOWN`` times slower than that (``FAR_SLOWDOWN`` when the target
    accepted only a few requests before refusing).
    """
    accepted = max(1, window_requests)
    observed = max(0.0, window_seconds) / accepted
    paced = max(current or 0.0, configured, observed, SHORTEST_LEARNED_INTERVAL)
    return paced * (FAR_SLOWDOWN if window_requests < FAR_REQUESTS else SLOWDOWN)


def learns(configured: float, in_a_row: int, window_requests: int) -> bool:
    """Whether a pushback (the ``in_a_row``-th in a row, after the target accepted
    ``window_requests`` since the last one) teaches its key a slower pace.

    A key nobody configured learns from every pushback: that is how its limit is found. A
    configured key is paced at a limit someone knows; a lone 429 there is a request that arrived
    a little early (the jitter between our clock and the target's arrivals), and the block alone
    answers it. Only when the target pushes back again soon (within ``TRUSTED_REQUESTS``) does
    the configured pace itself count as refused.
    """
    return configured <= 0 or (in_a_row >= 2 and window_requests < TRUSTED_REQUESTS)


def refused_interval(current: float | None, configured: float) -> float:
    """The pace a pushback refused (the key's ceiling), before slowing down from it."""
    return max(current or 0.0, configured, SHORTEST_LEARNED_INTERVAL)


def in_a_row(previous: int, seconds_since_last: float | None) -> int:
    """The number of pushbacks in a row, this one included."""
    if seconds_since_last is None or seconds_since_last > IN_A_ROW_SECONDS:
        return 1
    return previous + 1
