"""Bar charts for the benchmarks' ``--plot PATH`` (matplotlib, installed in .venv-bench)."""

from __future__ import annotations


def bar_chart(
    path: str,
    panels: list[tuple[str, str, dict[str, float]]],
    *,
    log_scale: bool = False,
    rotate_labels: bool = False,
) -> None:
    """One panel per (title, y label, {bar label: value}), side by side, written to ``path``;
    ``rotate_labels`` slants the bar labels, for many or long ones."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed; no plot written (make bench installs it)")
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 4), squeeze=False)
    for axis, (title, ylabel, bars) in zip(axes[0], panels, strict=True):
        axis.bar(list(bars), list(bars.values()), color="#3b7dd8")
        if log_scale:
            axis.set_yscale("log")
        axis.set(title=title, ylabel=ylabel)
        if rotate_labels:
            axis.tick_params(axis="x", labelrotation=35)
        for index, value in enumerate(bars.values()):
            axis.annotate(f"{value:,.1f}", (index, value), ha="center", va="bottom")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"plot written to {path}")


def rate_chart(
    path: str, panels: list[tuple[str, list[tuple[int, int, int]]]], *, limit: float
) -> None:
    """One panel per (title, [(second, accepted, refused)]), stacked: requests per second over
    time, accepted and refused (429) apart, against a dashed line at ``limit``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed; no plot written (make bench installs it)")
        return
    longest = max((len(series) for _, series in panels), default=1)
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(10, 2.4 * len(panels) + 0.6), squeeze=False, sharex=True
    )
    for axis, (title, series) in zip(axes[:, 0], panels, strict=True):
        seconds = [second for second, _, _ in series]
        ok = [accepted for _, accepted, _ in series]
        refused = [limited for _, _, limited in series]
        axis.bar(seconds, ok, width=1.0, align="edge", color="#3b7dd8", label="accepted")
        axis.bar(seconds, refused, width=1.0, align="edge", bottom=ok, color="#d8553b", label="429")
        axis.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"limit {limit:g}/s")
        axis.set(title=title, ylabel="requests/s", xlim=(0, longest))
        axis.legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("seconds since the start")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"plot written to {path}")
