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
