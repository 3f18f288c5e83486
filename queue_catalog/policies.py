"""Pure decisions of the scenario queue."""

from __future__ import annotations


def rerun_delay(*, start_count: int, base_seconds: float, max_seconds: float) -> float:
    """Seconds before a failed record runs again: base * 2^(starts - 1), capped."""
    return min(max_seconds, base_seconds * 2 ** max(start_count - 1, 0))


def should_rerun(*, start_count: int, max_attempts: int) -> bool:
    """A failed record runs again while it has started fewer than ``max_attempts`` times."""
    return start_count < max_attempts
