"""What a detector's training forward reports besides its losses: figures that watch training
and are no loss (detached, never part of the total).

    losses = detector(images, targets)          # a TrainingLosses: the losses are its items
    losses.diagnostics["fg_accuracy"]           # share of positives whose top class is theirs
    losses.diagnostics["fg_positives"]          # how many positives that share is of

The foreground classification accuracy is the figure that tells a classifier that learns its
background apart from one that learns the classes: a loss can fall while every positive is
still called background. Averages over steps or ranks weight it by ``fg_positives``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

__all__ = ["DIAGNOSTIC_KEYS", "TrainingLosses", "foreground_accuracy"]

DIAGNOSTIC_KEYS = ("fg_accuracy", "fg_positives")


class TrainingLosses(dict[str, Tensor]):
    """A detector's training output: a dict of scalar losses (total = the sum of its values,
    as torchvision's detectors return) with detached, non-loss figures in ``diagnostics``
    (`foreground_accuracy`'s keys; empty when a step computes none)."""

    def __init__(
        self,
        losses: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] = (),
        diagnostics: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__(losses)
        self.diagnostics: dict[str, Tensor] = dict(diagnostics or {})


def foreground_accuracy(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """``fg_accuracy`` and ``fg_positives`` (float scalars, detached) of (N, 1 + C) logits with
    the background in column 0 and int64 (N,) labels (0 background): among the rows whose label
    is a class (> 0), the share whose argmax over all columns, background included, is that
    label. With no positive row the accuracy is 0 over 0 positives."""
    with torch.no_grad():
        positive = labels > 0  # (N,)
        hits = ((logits.argmax(dim=1) == labels) & positive).sum().float()
        count = positive.sum().float()
        return {"fg_accuracy": hits / count.clamp(min=1.0), "fg_positives": count}
