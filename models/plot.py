"""Draw the training curves of one or several runs into a PNG: ``python -m models.plot``.

    python -m models.plot runs/voc                           # -> runs/voc/curves.png
    python -m models.plot runs/a runs/b --output ab.png --smooth 0.6
    python -m models.plot runs/a --metrics loss_total,loss_mask,fg_accuracy

Reads each run directory's ``metrics.jsonl`` (`models.run_log`; lines of older runs too) and
draws one panel per metric against the step: the total loss, each loss term, the foreground
classification accuracy. Each run has its colour, each source (``coco``, ``alp``...) its line
style: solid for the mean over every source (``loss_total`` and ``fg_accuracy`` only), then
dashed, dotted, dash-dotted. A loss term a source does not train (``loss_box`` of ALPs) is
drawn all the same, as the zeros it logs. matplotlib draws with its Agg backend: no screen
needed.

    from models.plot import plot_runs
    plot_runs([Path("runs/a")], Path("a.png"), smooth=0.5)
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alp_curation import flags
from models.run_log import METRICS, MetricsError, read_metrics

__all__ = ["PlotError", "Run", "load_run", "main", "plot_runs", "series"]

ALL = "all sources"  # the series of a run-wide figure (loss_total, fg_accuracy)
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS_UP_TO = 30  # points of a series drawn with markers, so a short run still shows
PANEL_ORDER = ("loss_total", "fg_accuracy")  # first; the loss terms follow, sorted


class PlotError(ValueError):
    """A run that cannot be drawn; the message names the directory or file and the fix."""


@dataclass(frozen=True)
class Run:
    """One run's metrics.jsonl lines (format 2 shape, `models.run_log.read_metrics`)."""

    name: str
    path: Path
    records: tuple[dict[str, Any], ...]


def load_run(path: Path, name: str | None = None) -> Run:
    """The metrics of the run directory ``path`` (or of a metrics.jsonl given directly)."""
    file = path if path.suffix == ".jsonl" else path / METRICS
    if not path.exists():
        raise PlotError(f"{path}: no such run directory")
    if not file.is_file():
        raise PlotError(
            f"{path}: no {METRICS} here; give the --output directory of python -m models.train"
        )
    try:
        records = read_metrics(file)
    except MetricsError as exc:
        raise PlotError(str(exc)) from exc
    if not records:
        raise PlotError(f"{file}: empty; the run logged no step yet (a line every --log-every)")
    return Run(name or (path.parent.name if file is path else path.name), path, tuple(records))


def series(run: Run, metric: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per source (and `ALL` for the run-wide figures): the steps and values of ``metric``;
    lines without it (a null accuracy, a source absent from a window) are skipped, and so is a
    source's loss term that is 0 in every line (a loss it does not train, as the ALPs' box and
    mask losses): drawn, it would read as a loss that is perfectly learnt."""
    out: dict[str, tuple[list[int], list[float]]] = {}

    def add(key: str, step: int, value: Any) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps, values = out.setdefault(key, ([], []))
            steps.append(step)
            values.append(float(value))

    for record in run.records:
        step = int(record["step"])
        if metric in PANEL_ORDER and len(record["sources"]) > 1:
            add(ALL, step, record.get(metric))
        for source, values in record["sources"].items():
            add(source, step, values.get(metric))
    if metric.startswith("loss_"):
        out = {k: v for k, v in out.items() if k == ALL or any(x != 0.0 for x in v[1])}
    return out


def _smoothed(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
    if weight <= 0:
        return values
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """The metrics the runs logged: loss_total, fg_accuracy, then the loss terms, sorted."""
    found = set()
    for run in runs:
        for record in run.records:
            for values in record["sources"].values():
                found |= {
                    k
                    for k, v in values.items()
                    if v is not None and (k.startswith("loss_") or k in PANEL_ORDER)
                }
    first = [m for m in PANEL_ORDER if m in found]
    return first + sorted(found - set(PANEL_ORDER))


def plot_runs(
    runs: Sequence[Path],
    output: Path,
    *,
    metrics: Sequence[str] = (),
    smooth: float = 0.0,
    log_y: bool = False,
    title: str = "",
) -> Path:
    """Draw the curves of the run directories ``runs`` into the PNG ``output`` (module doc);
    ``metrics`` picks the panels (all that were logged by default). PlotError when a run has
    no readable metrics or a metric is logged by none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not 0 <= smooth < 1:
        raise PlotError(f"--smooth: expected in [0, 1), got {smooth}")
    names = [p.name or str(p) for p in runs]
    loaded = [
        load_run(p, name=str(p) if names.count(n) > 1 else n)
        for p, n in zip(runs, names, strict=True)
    ]
    logged = available_metrics(loaded)
    chosen = list(metrics) or logged
    unknown = [m for m in chosen if m not in logged]
    if unknown:
        raise PlotError(
            f"--metrics: {unknown} not in the runs' {METRICS}; they logged {', '.join(logged)}"
        )
    columns = min(3, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False, constrained_layout=True
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sources = sorted({s for run in loaded for r in run.records for s in r["sources"]})
    styles = {ALL: LINE_STYLES[0]}
    styles.update({s: LINE_STYLES[1 + i % (len(LINE_STYLES) - 1)] for i, s in enumerate(sources)})
    for ax, metric in zip(axes.flat, chosen, strict=False):
        for i, run in enumerate(loaded):
            for source, (steps, values) in series(run, metric).items():
                ax.plot(
                    steps,
                    _smoothed(values, smooth),
                    color=colours[i % len(colours)],
                    linestyle=styles[source],
                    linewidth=1.4,
                    # a few logged lines (a short run) would draw as next to nothing
                    marker="o" if len(steps) <= MARKERS_UP_TO else None,
                    markersize=3,
                )
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.set_ylabel("share of positives" if metric == "fg_accuracy" else "loss (window mean)")
        if metric == "fg_accuracy":
            ax.set_ylim(0, 1)
        elif log_y:
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    handles = [
        Line2D([], [], color=colours[i % len(colours)], label=run.name)
        for i, run in enumerate(loaded)
    ]
    shown = [ALL, *sources] if any(m in PANEL_ORDER for m in chosen) else sources
    handles += [Line2D([], [], color="grey", linestyle=styles[s], label=s) for s in shown]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)))
    smoothing = f" (smoothed {smooth})" if smooth else ""
    figure.suptitle((title or "training curves") + smoothing)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.plot",
        description="Draw the loss and foreground-accuracy curves of one or several training "
        "runs (their metrics.jsonl) into a PNG: one panel per metric, one colour per run, one "
        "line style per source.",
        formatter_class=flags.HelpFormatter,
    )
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run directories of python -m models.train (each holds metrics.jsonl)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="PNG",
        help="the image to write (default: curves.png in the first RUN_DIR)",
    )
    parser.add_argument(
        "--metrics",
        type=flags.class_list,
        default=(),
        metavar="NAME,NAME",
        help="the panels, comma-separated: loss_total, fg_accuracy and the loss terms the "
        "runs logged (loss_cls, loss_mask, ...); default: all of them",
    )
    parser.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="X",
        help="exponential moving average of each curve, in [0, 1) as TensorBoard's slider "
        "(0: the logged window means as they are)",
    )
    parser.add_argument(
        "--log-y",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="loss axes on a (symmetric) log scale; fg_accuracy stays linear in [0, 1]",
    )
    parser.add_argument("--title", default="", help="the figure's title ('': training curves)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for a run that cannot be drawn)."""
    parser = build_parser()
    try:
        args = flags.parse_args(parser, argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    output = args.output or args.runs[0] / "curves.png"
    try:
        path = plot_runs(
            args.runs,
            output,
            metrics=args.metrics,
            smooth=args.smooth,
            log_y=args.log_y,
            title=args.title,
        )
    except PlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"curves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
