"""Per-class mask AP50 as a sorted bar chart, base and novel classes in two colours (the ALP
paper's Figure 4, bottom).

    plot_per_class_ap50(result["per_class"], "run/per_class.png", title="FCOS-MO, COCO val")

Reads the ``per_class`` table of `models.evaluate` (`models.evaluation.collect.per_class`, AP in
percent). Classes without ground truth have no AP and no bar; each bar carries its value. Up to
`VERTICAL_MAX` classes the bars stand with their names rotated below them; more lie horizontally,
one name per row, so that every name stays legible. matplotlib's Agg canvas without pyplot: no
display, no global state.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["COLOURS", "VERTICAL_MAX", "plot_per_class_ap50"]

COLOURS = {"base": "#0072B2", "novel": "#E69F00"}  # Okabe-Ito blue / orange: colour-blind safe
VERTICAL_MAX = 30  # classes drawn as standing bars; more as horizontal bars


def _values(
    per_class: Mapping[str, Mapping[str, Any]], metric: str
) -> list[tuple[str, str, float]]:
    """(name, part, value) of the classes that have a value, highest first (ties by name)."""
    rows = [
        (name, str(entry["part"]), float(entry[metric]))
        for name, entry in per_class.items()
        if entry.get(metric) is not None
    ]
    return sorted(rows, key=lambda r: (-r[2], r[0]))


def plot_per_class_ap50(
    per_class: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    metric: str = "mask_AP50",
    title: str | None = None,
) -> Path:
    """Write the chart of ``per_class[name][metric]`` (percent) to the PNG ``path``; returns it.
    ValueError when no class has a value (nothing to draw)."""
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state
    from matplotlib.patches import Patch

    rows = _values(per_class, metric)
    if not rows:
        raise ValueError(f"no class has a {metric} (no ground truth, or the metric not computed)")
    names = [r[0] for r in rows]
    values = [r[2] for r in rows]
    colours = [COLOURS.get(r[1], "grey") for r in rows]
    n = len(rows)
    label = f"{metric.replace('_', ' ')} (%)"
    if n <= VERTICAL_MAX:
        fig = Figure(figsize=(max(6.0, 0.35 * n + 2), 4.8))
        ax = fig.subplots()
        bars = ax.bar(range(n), values, color=colours)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)  # a 0 reads as 0, not as missing
        ax.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(0, 100)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    else:
        fig = Figure(figsize=(7.0, max(4.0, 0.22 * n + 1.5)))
        ax = fig.subplots()
        bars = ax.barh(range(n), values, color=colours)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
        ax.set_yticks(range(n), names, fontsize=8)
        ax.set_ylim(n - 0.4, -0.6)  # the best class on top
        ax.set_xlim(0, 100)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    counts = {p: sum(r[1] == p for r in rows) for p in ("base", "novel")}
    handles = [Patch(color=COLOURS[p], label=f"{p} ({k})") for p, k in counts.items() if k]
    # Where the bars are shortest: right of standing bars, bottom of lying ones (sorted).
    ax.legend(handles=handles, loc="upper right" if n <= VERTICAL_MAX else "lower right")
    ax.set_title(title or f"per-class {label}, sorted")
    ax.set_axisbelow(True)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path
