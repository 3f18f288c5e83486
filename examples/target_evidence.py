"""The rate-limited target's own evidence: start it as a process, read its log, judge the log.

The verdicts rest on what the target saw, by its own wall clock, never on what orchestra stored:

- :func:`worst_window`: over every window between two requests, the one that came closest to (or
  furthest past) a limit of ``rate`` per second with ``burst`` at once. A sequence obeys the limit
  (GCRA with that rate and burst) exactly when every window holds at most
  ``burst + rate * (its length)`` requests, so checking each pair of requests is the whole test;
  it is done in one pass (the best start of a window ending at ``j`` is the running minimum of
  ``i - rate * t_i``).
- :func:`per_second`: requests per second over time (accepted and refused), for plots.
- :func:`largest_share`: how fairly labels (lanes) took turns: the largest share one label had
  in any stretch of consecutive requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Entry:
    """One request as the target logged it."""

    time: float
    path: str
    query: dict[str, str]
    status: int


@dataclass(frozen=True)
class Window:
    """The requests between two instants, and what a limit allows in that span."""

    start: float
    end: float
    count: int
    allowed: float

    @property
    def excess(self) -> float:
        """Requests past the limit (negative: room to spare)."""
        return self.count - self.allowed


def read_log(path: Path) -> list[Entry]:
    """The entries of a target's ``--log`` file, in the order it wrote them."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [Entry(**json.loads(line)) for line in lines if line]


def accepted(entries: list[Entry]) -> list[Entry]:
    """The requests the target let through (anything but a 429)."""
    return [entry for entry in entries if entry.status != 429]


def refused(entries: list[Entry]) -> list[Entry]:
    """The requests the target answered 429."""
    return [entry for entry in entries if entry.status == 429]


def worst_window(
    times: list[float], *, rate: float, burst: int, slack_seconds: float = 0.0
) -> Window | None:
    """The window with the largest excess over ``burst + rate * (length + slack_seconds)``;
    None without requests. ``slack_seconds`` forgives arrival jitter (the network, two clocks)."""
    if not times:
        return None
    ordered = sorted(times)
    best: Window | None = None
    start = 0  # the i that minimises i - rate * t_i so far
    for j, end in enumerate(ordered):
        if j - rate * end < start - rate * ordered[start]:
            start = j
        window = Window(
            start=ordered[start],
            end=end,
            count=j - start + 1,
            allowed=burst + rate * (end - ordered[start] + slack_seconds),
        )
        if best is None or window.excess > best.excess:
            best = window
    return best


def most_in_any(times: list[float], seconds: float) -> int:
    """The most requests inside any window of ``seconds`` (a sliding window)."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, end in enumerate(ordered):
        while end - ordered[first] > seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def per_second(entries: list[Entry], *, origin: float | None = None) -> list[tuple[int, int, int]]:
    """``(second, accepted, refused)`` for every whole second since ``origin`` (the first
    request by default) up to the last request."""
    if not entries:
        return []
    origin = min(e.time for e in entries) if origin is None else origin
    seconds = int(max(e.time for e in entries) - origin) + 1
    counts = [[0, 0] for _ in range(seconds)]
    for entry in entries:
        counts[int(entry.time - origin)][entry.status == 429] += 1
    return [(second, ok, limited) for second, (ok, limited) in enumerate(counts)]


def largest_share(labels: list[str], stretch: int) -> float:
    """The largest fraction of one label in any ``stretch`` consecutive labels (1.0 if fewer)."""
    if len(labels) <= stretch:
        return 1.0 if labels else 0.0
    counts = Counter(labels[:stretch])
    largest = max(counts.values())
    for index in range(stretch, len(labels)):
        counts[labels[index]] += 1
        counts[labels[index - stretch]] -= 1
        largest = max(largest, max(counts.values()))
    return largest / stretch


def summary(entries: list[Entry], *, rate: float, burst: int) -> dict:
    """Counts and the worst windows (all arrivals, and accepted ones) against one limit."""
    window = worst_window([e.time for e in accepted(entries)], rate=rate, burst=burst)
    arrivals = worst_window([e.time for e in entries], rate=rate, burst=burst)
    span = (entries[-1].time - entries[0].time) if entries else 0.0
    return {
        "requests": len(entries),
        "accepted": len(accepted(entries)),
        "refused": len(refused(entries)),
        "seconds": span,
        "most_accepted_in_1s": most_in_any([e.time for e in accepted(entries)], 1.0),
        "accepted_excess": None if window is None else window.excess,
        "arrivals_excess": None if arrivals is None else arrivals.excess,
    }


class TargetProcess:
    """``examples/target.py`` as a process of its own (rate limit, Retry-After form, log).

    Use as a context manager; ``url`` is its base URL, ``entries()`` what it logged so far.
    """

    def __init__(
        self,
        *,
        rate: float | None = None,
        burst: int = 1,
        retry_after: str = "seconds",
        date_skew: float = 0.0,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.log_path = Path(tempfile.mkstemp(prefix="rate-target-", suffix=".jsonl")[1])
        self.command = [sys.executable, str(ROOT / "examples" / "target.py"), "--port", "0"]
        self.command += ["--log", str(self.log_path), "--retry-after", retry_after]
        self.command += ["--date-skew", str(date_skew)]
        if rate is not None:
            self.command += ["--rate-limit", str(rate), "--burst", str(burst)]
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> TargetProcess:
        """Start it and wait for the line that names its port."""
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(f"the target did not start: {line}")
        self.url = line.split("listening on ", 1)[1].strip()
        return self

    def entries(self) -> list[Entry]:
        """Every request it logged so far."""
        return read_log(self.log_path)

    def stop(self) -> None:
        """Stop the process and remove its log."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> TargetProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
