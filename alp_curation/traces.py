"""Trace points -> ALP box (Sec. 3.1 of the ALP paper).

For a phrase spoken during (T1, T2), the ALP box bounds the mouse-trace points recorded with a
timestep strictly inside (T1 - t_p, T2 + t_p); the paper sets the temporal padding t_p = 0.5 s.
LocNar splits traces into segments that may come in any order, so the segments of a record are
merged once into one time-sorted point set (`merge_segments`) and every phrase then selects its
window with two binary searches (`trace_box`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alp_curation.locnar import TraceSegment

__all__ = ["TRACE_BOX_REASONS", "TraceBox", "TracePoints", "merge_segments", "trace_box"]

TRACE_BOX_REASONS: tuple[str, ...] = ("too_few_points", "zero_area")


def _readonly(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"TracePoints.{name} must be 1-D, got shape {arr.shape}")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class TracePoints:
    """All trace points of a record as read-only float64 arrays (N,), sorted by t (non-decreasing).

    x, y are normalised image coordinates (origin top-left, possibly slightly outside [0, 1]).
    """

    x: np.ndarray  # (N,)
    y: np.ndarray  # (N,)
    t: np.ndarray  # (N,) seconds

    def __post_init__(self) -> None:
        for name in ("x", "y", "t"):
            object.__setattr__(self, name, _readonly(getattr(self, name), name))
        if not len(self.x) == len(self.y) == len(self.t):
            raise ValueError(
                f"TracePoints arrays differ in length: x {len(self.x)}, y {len(self.y)}, "
                f"t {len(self.t)}"
            )
        # trace_box binary-searches t; a NaN fails this check too.
        if not np.all(np.diff(self.t) >= 0):
            raise ValueError("TracePoints.t must be finite and sorted (non-decreasing)")

    def __len__(self) -> int:
        return len(self.t)


@dataclass(frozen=True)
class TraceBox:
    """The box of one phrase window, or why there is none.

    `box_xyxy_norm` is (x0, y0, x1, y1) in normalised image coordinates clipped to [0, 1], None
    when `reason` is set ("too_few_points": fewer than 2 points in the window; "zero_area": the
    clipped extent has zero width or height). `n_points` counts the points in the window.
    """

    box_xyxy_norm: tuple[float, float, float, float] | None
    n_points: int
    reason: str | None


def merge_segments(segments: Sequence[TraceSegment]) -> TracePoints:
    """Concatenate all segments and sort the points by t; ties keep their input order."""
    if not segments:
        empty = np.empty(0, dtype=np.float64)
        return TracePoints(x=empty, y=empty, t=empty)
    x = np.concatenate([seg.x for seg in segments])
    y = np.concatenate([seg.y for seg in segments])
    t = np.concatenate([seg.t for seg in segments])
    # A stable sort keeps equal-time points in recording order, so the result does not depend on
    # the sort algorithm (determinism: same input -> same bytes downstream).
    order = np.argsort(t, kind="stable")
    return TracePoints(x=x[order], y=y[order], t=t[order])


def trace_box(
    points: TracePoints, t1: float, t2: float, *, temporal_padding: float = 0.5
) -> TraceBox:
    """Box of the points with t strictly inside (t1 - temporal_padding, t2 + temporal_padding).

    Args:
        points: the record's merged trace (`merge_segments`).
        t1, t2: the phrase's utterance interval in seconds, t1 <= t2.
        temporal_padding: t_p of Sec. 3.1, in seconds, >= 0.
    """
    if not (math.isfinite(t1) and math.isfinite(t2) and t1 <= t2):
        raise ValueError(f"expected finite t1 <= t2, got t1={t1!r}, t2={t2!r}")
    if not (math.isfinite(temporal_padding) and temporal_padding >= 0):
        raise ValueError(f"temporal_padding must be finite and >= 0, got {temporal_padding!r}")
    lo = t1 - temporal_padding
    hi = t2 + temporal_padding
    # Strict bounds: skip points equal to lo (side="right"), stop before points equal to hi.
    first = int(np.searchsorted(points.t, lo, side="right"))
    stop = int(np.searchsorted(points.t, hi, side="left"))
    n_points = max(stop - first, 0)
    if n_points < 2:
        return TraceBox(box_xyxy_norm=None, n_points=n_points, reason="too_few_points")
    x = np.clip(points.x[first:stop], 0.0, 1.0)  # (n_points,)
    y = np.clip(points.y[first:stop], 0.0, 1.0)  # (n_points,)
    box = (float(x.min()), float(y.min()), float(x.max()), float(y.max()))
    if box[2] <= box[0] or box[3] <= box[1]:
        return TraceBox(box_xyxy_norm=None, n_points=n_points, reason="zero_area")
    return TraceBox(box_xyxy_norm=box, n_points=n_points, reason=None)
