"""What a training run tells about itself: the ``metrics.jsonl`` lines, TensorBoard scalars, the
banner at the start and the summary at the end (`models.train` calls these).

Every ``--log-every`` steps the leader writes one JSON line to ``RUN_DIR/metrics.jsonl``. The
losses are the means over the steps of the window (the steps since the previous line), kept
apart per source: with two sources that alternate, each line holds both, and a source without
masks leaves the other's ``loss_mask`` alone. Under torchrun the sums and the step counts of
every rank are added before dividing, so a source that had no step on a rank weighs nothing
there; a source's ``steps`` are its optimiser steps in the window (the most any rank had: the
ranks draw their sources in step). One line (format 2)::

    {
      "format": 2,
      "step": 40,                 # optimiser steps done
      "lr": 0.01,                 # learning rate of the window's last step
      "steps": 20,                # steps in the window (summed over sources, not ranks)
      "time_per_step": 0.42,      # seconds, wall clock over the window
      "samples_per_s": 76.2,      # --batch-size (all ranks) / time_per_step
      "loss_total": 1.93,         # mean over the window's steps of the sum of the losses
      "fg_accuracy": 0.31,        # over every source, weighted by fg_positives (null: none)
      "grad_norm": 3.1,           # mean gradient norm before clipping (with --grad-clip only)
      "sources": {                # the sources that had steps in the window
        "coco": {"steps": 10, "loss_cls": 0.8, "loss_mask": 0.4, ..., "loss_total": 2.1,
                 "fg_accuracy": 0.35, "fg_positives": 5120.0},
        "alp": {"steps": 10, ...}
      },
      "epochs": {"coco": 1, "alp": 0},                         # each source's epoch now
      "data_errors": {"coco": {"bad_shards": 0, "bad_samples": 0}, "alp": {...}}
    }

``fg_accuracy`` is the share of positive locations (FCOS-MO) or positive sampled RoIs (the
two-stage detectors) whose top class, background included, is their target
(`models.heads.diagnostics`), over the window's steps and every rank, weighted by
``fg_positives`` (how many positives it is of); null when there were none. ``data_errors`` are
the shards and samples skipped as unreadable since this process started, summed over the ranks
(`alp_dataset.datasets`). Lines written before format 2 (no ``format``) held one step's losses
at the top level and its ``source``; `read_metrics` turns them into the same shape, one step
each, so `models.plot` draws old runs too.

TensorBoard (``--tensorboard``, on by default; the ``tensorboard`` package is an optional
extra) gets the same scalars in event files beside ``metrics.jsonl``: ``SOURCE/LOSS``,
``SOURCE/fg_accuracy``, ``train/loss_total``, ``train/fg_accuracy``, ``train/lr``,
``train/time_per_step``, ``train/samples_per_s``, ``train/grad_norm`` and
``data_errors/SOURCE/bad_shards`` / ``bad_samples``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "METRICS",
    "METRICS_FORMAT",
    "MetricsError",
    "ScalarWriter",
    "Window",
    "banner",
    "open_tensorboard",
    "read_metrics",
    "scalars_of",
    "summary",
]

METRICS = "metrics.jsonl"
METRICS_FORMAT = 2
DIAGNOSTICS = ("fg_accuracy", "fg_positives")


class MetricsError(ValueError):
    """A metrics.jsonl that cannot be read; the message names the file and the line."""


# ---------------------------------------------------------------------------------------------
# The window of steps between two lines


class Window:
    """Sums of the losses, step counts and foreground hits per source since the last line.

    ``add`` keeps everything on the model's device (no synchronisation per step); ``record``
    adds the sums of every rank (one all-reduce) and turns them into a format-2 line (module
    doc), then starts the next window.
    """

    def __init__(self, sources: Sequence[str], device: torch.device) -> None:
        self.sources = list(sources)
        self.device = device
        self.loss_names: list[str] | None = None  # fixed by the first step
        self._reset()

    def _reset(self) -> None:
        width = len(self.loss_names or ())
        # Per source: the loss sums, then steps, fg hits (accuracy x positives), positives.
        self._sums = torch.zeros(len(self.sources), width + 3, device=self.device)
        self._grad_norms: list[float] = []
        self.steps = 0

    def add(
        self,
        source: str,
        losses: Mapping[str, Tensor],
        diagnostics: Mapping[str, Tensor] | None = None,
        grad_norm: float | None = None,
    ) -> None:
        """One step of ``source``: its losses and the detector's diagnostics
        (`models.heads.diagnostics`; none: no positive counted)."""
        names = sorted(losses)
        if self.loss_names is None:
            self.loss_names = names
            self._reset()
        elif names != self.loss_names:
            raise ValueError(
                f"losses: a step of {source!r} returned {names}, earlier steps "
                f"{self.loss_names}; a detector returns the same losses every step"
            )
        row = self.sources.index(source)
        values = torch.stack([losses[k].detach().float() for k in names])  # (L,)
        diagnostics = diagnostics or {}
        positives = diagnostics.get("fg_positives")
        if positives is None:
            hits = positives = values.new_zeros(())
        else:
            positives = positives.detach().float()
            hits = diagnostics["fg_accuracy"].detach().float() * positives
        one = values.new_ones(())
        self._sums[row] += torch.cat([values, torch.stack([one, hits, positives])])
        if grad_norm is not None:
            self._grad_norms.append(grad_norm)
        self.steps += 1

    def record(
        self,
        *,
        step: int,
        lr: float,
        seconds_per_step: float,
        batch_size: int,
        epochs: Mapping[str, int],
        data_errors: Mapping[str, Mapping[str, int]],
    ) -> dict[str, Any]:
        """The metrics.jsonl line of the window (module doc), over every rank; every rank must
        call it at the same step. Starts the next window."""
        names = self.loss_names or []
        steps_here = self._sums[:, len(names)].clone()  # (S,): this rank's steps per source
        sums = _sum_over_ranks(self._sums)
        most_steps = _max_over_ranks(steps_here).tolist()
        errors = _errors_over_ranks(self.sources, data_errors, self.device)
        sources: dict[str, dict[str, Any]] = {}
        total_steps = total_loss = all_hits = all_positives = 0.0
        for source, row, optimiser_steps in zip(self.sources, sums.tolist(), most_steps,
                                                strict=True):  # fmt: skip
            losses, (steps, hits, positives) = row[: len(names)], row[len(names) :]
            if steps == 0:
                continue
            means = {k: v / steps for k, v in zip(names, losses, strict=True)}
            sources[source] = {
                "steps": round(optimiser_steps),
                **means,
                "loss_total": sum(means.values()),
                "fg_accuracy": hits / positives if positives else None,
                "fg_positives": positives,
            }
            total_steps += steps
            total_loss += sum(losses)
            all_hits += hits
            all_positives += positives
        record: dict[str, Any] = {
            "format": METRICS_FORMAT,
            "step": step,
            "lr": lr,
            "steps": self.steps,
            "time_per_step": seconds_per_step,
            "samples_per_s": batch_size / seconds_per_step if seconds_per_step > 0 else None,
            "loss_total": total_loss / total_steps if total_steps else None,
            "fg_accuracy": all_hits / all_positives if all_positives else None,
            "sources": sources,
            "epochs": dict(epochs),
            "data_errors": errors,
        }
        if self._grad_norms:
            record["grad_norm"] = sum(self._grad_norms) / len(self._grad_norms)
        self._reset()
        return record


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum_over_ranks(value: Tensor) -> Tensor:
    if _distributed():
        value = value.clone()
        dist.all_reduce(value)
    return value


def _max_over_ranks(value: Tensor) -> Tensor:
    if _distributed():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def _errors_over_ranks(
    sources: Sequence[str], counts: Mapping[str, Mapping[str, int]], device: torch.device
) -> dict[str, dict[str, int]]:
    kinds = sorted({k for c in counts.values() for k in c}) or ["bad_samples", "bad_shards"]
    table = torch.tensor(
        [[float(counts.get(s, {}).get(k, 0)) for k in kinds] for s in sources], device=device
    )  # (S, kinds)
    table = _sum_over_ranks(table)
    return {
        s: {k: round(v) for k, v in zip(kinds, row, strict=True)}
        for s, row in zip(sources, table.tolist(), strict=True)
    }


# ---------------------------------------------------------------------------------------------
# Reading metrics.jsonl (models.plot, tests)


def _upgraded(line: dict[str, Any]) -> dict[str, Any]:
    """A line written before format 2 (one step's losses at the top level, its ``source``) in
    the shape of format 2."""
    if "sources" in line:
        return line
    losses = {k: v for k, v in line.items() if k.startswith("loss_")}
    source = str(line.get("source", "train"))
    return {
        **line,
        "format": 1,
        "steps": 1,
        "fg_accuracy": None,
        "sources": {source: {"steps": 1, **losses, "fg_accuracy": None, "fg_positives": 0.0}},
    }


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl, each in the shape of format 2 (module doc); MetricsError
    naming the file and line when one is no JSON object with a ``step``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MetricsError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetricsError(
                f"{path}, line {number}: not JSON ({exc.msg}); the file is damaged: remove the "
                "line, or resume the run from a checkpoint (it rewrites the lines after it)"
            ) from exc
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise MetricsError(
                f"{path}, line {number}: expected a JSON object with an integer 'step' "
                "(a metrics.jsonl of python -m models.train)"
            )
        records.append(_upgraded(record))
    return records


# ---------------------------------------------------------------------------------------------
# TensorBoard


class ScalarWriter(Protocol):
    """What the loop needs of torch's ``SummaryWriter``."""

    log_dir: str

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def scalars_of(record: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard tags and values of a metrics.jsonl line (module doc); nulls left out."""
    out: dict[str, float] = {}
    for key in ("loss_total", "fg_accuracy", "lr", "time_per_step", "samples_per_s", "grad_norm"):
        if record.get(key) is not None:
            out[f"train/{key}"] = float(record[key])
    for source, values in record.get("sources", {}).items():
        for key, value in values.items():
            if value is not None and (key.startswith("loss_") or key == "fg_accuracy"):
                out[f"{source}/{key}"] = float(value)
    for source, counts in record.get("data_errors", {}).items():
        for kind, count in counts.items():
            out[f"data_errors/{source}/{kind}"] = float(count)
    return out


def open_tensorboard(
    run_dir: Path, *, purge_step: int | None = None, stream: TextIO | None = None
) -> ScalarWriter | None:
    """A ``SummaryWriter`` writing event files into ``run_dir``; None, after one note on
    ``stream`` (stderr), when the ``tensorboard`` package is not installed. ``purge_step``
    (a resumed run's step) hides the events an earlier process logged after it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        print(
            f"note: TensorBoard event files are not written ({exc}); install the 'tensorboard' "
            f"extra for them, or pass --no-tensorboard. {METRICS} is written all the same",
            file=sys.stderr if stream is None else stream,
        )
        return None
    return SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)


def write_scalars(writer: ScalarWriter, record: Mapping[str, Any]) -> None:
    for tag, value in scalars_of(record).items():
        writer.add_scalar(tag, value, int(record["step"]))
    writer.flush()


# ---------------------------------------------------------------------------------------------
# The banner and the summary


@dataclass(frozen=True)
class SourceLine:
    """What the banner says of one source."""

    name: str
    kind: str
    spec: str
    shards: int
    samples: int | None


def banner(
    *,
    arch: str,
    device: torch.device,
    world_size: int,
    batch_size: int,
    sources: Iterable[SourceLine],
    text_encoder: str,
    start: str,
    first_step: int,
    last_step: int,
    run_dir: Path,
) -> str:
    """The lines printed when a run starts (by the leader, on stderr)."""
    per_rank = batch_size // max(1, world_size)
    lines = [
        f"models.train: --arch {arch} on {device}, world size {world_size} "
        f"(batch {batch_size}: {per_rank} per rank)",
    ]
    for s in sources:
        samples = "unknown" if s.samples is None else f"{s.samples:,}"
        lines.append(
            f"  source {s.name}: {s.kind.upper()} shards {s.spec}: {s.shards} shard(s), "
            f"{samples} samples"
        )
    lines += [
        f"  text encoder: {text_encoder}",
        f"  start: {start}",
        f"  steps: {first_step} -> {last_step}",
        f"  run dir: {run_dir}",
    ]
    return "\n".join(lines)


def _losses_text(values: Mapping[str, Any]) -> str:
    parts = [f"{k} {v:.4f}" for k, v in values.items() if k.startswith("loss_")]
    if values.get("fg_accuracy") is not None:
        parts.append(f"fg_accuracy {values['fg_accuracy']:.3f}")
    return " ".join(parts)


def summary(
    *,
    step: int,
    steps_done: int,
    seconds: float,
    last_by_source: Mapping[str, Mapping[str, Any]],
    written: Mapping[str, str],
) -> str:
    """The lines printed when a run ends: the last window's losses of each source, the time
    per step of this process's steps, and what was written where."""
    per_step = f"{seconds / steps_done:.3f} s/step" if steps_done else "no step run"
    lines = [f"models.train: done at step {step} ({steps_done} steps here, {per_step})"]
    for name, values in last_by_source.items():
        steps = values["steps"]
        lines.append(
            f"  {name} (last window: {steps} step{'' if steps == 1 else 's'} to step "
            f"{values['step']}): {_losses_text(values)}"
        )
    for what, where in written.items():
        lines.append(f"  {what}: {where}")
    return "\n".join(lines)
