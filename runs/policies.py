"""Pure decisions of the run engine, kept free of I/O so they can be tested with tables."""

from __future__ import annotations

from runs.states import RunStatus

DEFAULT_RETRY_INTERVAL = 1.0
#: The longest pause between two tries of a step, whatever ``interval * backoff ** n`` says.
#: The definition schema allows 100 attempts with backoff 10; uncapped, the 5th pause would
#: already hold the worker (and its unacked message) for hours.
MAX_RETRY_DELAY = 300.0  # also the schema maximum of retry.interval

_SEVERITY = {"PASSED": 0, "SKIPPED": 0, "FAILED": 1, "ERROR": 2}


def step_retry_delay(*, interval: float, backoff: float, failed_tries: int) -> float:
    """Seconds to wait before the next try of a step after ``failed_tries`` failed ones.

    ``interval`` after the first failure, multiplied by ``backoff`` after each further one, never
    negative and never more than :data:`MAX_RETRY_DELAY`.
    """
    if failed_tries < 1:
        raise ValueError(f"failed_tries must be at least 1, not {failed_tries}")
    if interval <= 0:
        return 0.0
    try:
        delay = interval * max(backoff, 1.0) ** (failed_tries - 1)
    except OverflowError:  # a float power past 1e308
        return MAX_RETRY_DELAY
    return min(float(delay), MAX_RETRY_DELAY)


def run_status_from_steps(step_statuses: list[str]) -> str:
    """A run is as bad as its worst step: ERROR beats FAILED beats PASSED; SKIPPED is neutral."""
    worst = max((_SEVERITY[status] for status in step_statuses), default=0)
    return {0: RunStatus.PASSED, 1: RunStatus.FAILED, 2: RunStatus.ERROR}[worst]
