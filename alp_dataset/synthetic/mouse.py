"""Mouse traces of synthetic Localized Narratives.

The pointer is sampled every ~0.04-0.1 s over the whole recording. While an object is named it
scribbles over part of the object (loops around it, sweeps side to side or wanders over its mask,
with jitter), shifted in time by the annotator's lag behind the speech; between objects it moves
over, drifts while filler is spoken and now and then leaves the image. Coordinates are normalised
with the origin top-left; points outside the band [-0.1, 1.1] are not recorded and the trace is
split into segments there, as in LocNar files.

Naming convention: (C = control points, P = samples of the pointer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alp_dataset.synthetic.narration import AnnotatorStyle
from alp_dataset.synthetic.records import SyntheticObject

BAND = 0.1  # LocNar keeps points up to about 10 % outside the image
NO_TRACE_P = 0.01  # some LocNar records come with no traces at all
MISS_P = 0.02  # the pointer is somewhere else while an object is named


@dataclass(frozen=True)
class Hover:
    """An object being named, from the first to the last word of its phrase (seconds)."""

    obj: SyntheticObject
    t_start: float
    t_end: float


class _Path:
    """Control points (t, x, y) that the pointer passes through, linearly in between."""

    def __init__(self, x: float, y: float) -> None:
        self.t, self.x, self.y = [0.0], [x], [y]

    def add(self, t: float, x: float, y: float) -> None:
        self.t.append(t)
        self.x.append(x)
        self.y.append(y)

    def extend(self, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        self.t.extend(t.tolist())
        self.x.extend(x.tolist())
        self.y.extend(y.tolist())

    @property
    def last(self) -> tuple[float, float]:
        return self.x[-1], self.y[-1]


def _windows(
    rng: np.random.Generator, style: AnnotatorStyle, hovers: list[Hover]
) -> tuple[list[float], list[tuple[float, float]]]:
    """Per hover: the pointer lag and the window (a, b) in which the pointer is over the object."""
    lags = [style.pointer_lag + rng.uniform(-0.03, 0.03) for _ in hovers]
    cores = [(h.t_start + lag, h.t_end + lag) for h, lag in zip(hovers, lags, strict=True)]
    windows = [(max(0.0, a - rng.uniform(0.05, 0.4)), b + rng.uniform(0.1, 0.6)) for a, b in cores]
    # Keep consecutive windows apart: the pointer needs a moment to travel between objects.
    for k in range(len(windows) - 1):
        gap = cores[k + 1][0] - cores[k][1]
        mid, half = cores[k][1] + gap / 2, min(0.08, max(gap, 0.0) / 4)
        windows[k] = (windows[k][0], min(windows[k][1], mid - half))
        windows[k + 1] = (max(windows[k + 1][0], mid + half), windows[k + 1][1])
    return lags, windows


def _scribble(
    rng: np.random.Generator,
    style: AnnotatorStyle,
    path: _Path,
    obj: SyntheticObject,
    window: tuple[float, float],
) -> None:
    """Control points over part of the object during the window: loops, sweeps or wandering."""
    a, b = window
    w, h = obj.image_width, obj.image_height
    mask = obj.mask_crop
    mh, mw = mask.shape
    # A stroke between turning points spans a few samples, else the samples cut its corners.
    n = max(3, int((b - a) / (style.sample_dt * rng.uniform(1.5, 3.0))) + 1)
    # Real scribbles rarely cover the whole object: they cover a random part of its extent.
    part = np.clip(style.coverage * rng.uniform(0.75, 1.25, 2), 0.3, 1.0) * (mw, mh)  # (w, h)
    lo = rng.random(2) * ((mw, mh) - part)
    mode = rng.random()
    if mode < style.circling_p:  # loops around the part, 5-9 turning points per loop
        turn = 2.0 * np.pi / rng.uniform(5.0, 9.0) * (1.0 if rng.random() < 0.5 else -1.0)
        angle = rng.uniform(0.0, 2.0 * np.pi) + turn * np.arange(n)  # (C,)
        radius = rng.uniform(0.75, 1.0, n)[:, None] * part / 2  # (C, 2)
        cand = lo + part / 2 + radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    elif mode < (1.0 + style.circling_p) / 2:  # zig-zag: sweeps side to side, drifting across
        sweep = np.arange(n) % 2 + rng.uniform(-0.1, 0.1, n)
        drift = np.abs((np.arange(n) / rng.uniform(3.0, 6.0) + rng.random()) % 2.0 - 1.0)
        uv = np.clip(np.stack([sweep, drift], axis=1), 0.0, 1.0)  # (C, 2) in the part
        cand = lo + (uv if rng.random() < 0.5 else uv[:, ::-1]) * part
    else:  # wandering over the mask itself (rejection sampling: no pass over the mask)
        cand = lo + rng.random((8 * n, 2)) * part  # (8n, 2) as (x, y) in crop pixels
        cand = cand[mask[cand[:, 1].astype(np.int64), cand[:, 0].astype(np.int64)]][:n]
        if len(cand) < n:  # the part missed most of a thin or holed mask: top up from all of it
            ys, xs = np.nonzero(mask)
            pick = rng.integers(len(xs), size=n - len(cand))
            extra = np.stack([xs[pick], ys[pick]], axis=1) + rng.random((len(pick), 2))
            cand = np.concatenate([cand, extra])
    px = (cand[:, 0] + obj.mask_origin_px[0]) / w  # (C,)
    py = (cand[:, 1] + obj.mask_origin_px[1]) / h
    size = max(mw, mh)
    # Most scribbles stay on the object; sloppy ones spill around it, and a few miss it entirely
    # (the annotator points elsewhere while naming it), as in real narratives.
    sloppy = rng.random() < style.sloppy_p
    jitter = (0.2 if sloppy else 0.04) * size / max(w, h)
    px = px + rng.normal(0.0, jitter, n)
    py = py + rng.normal(0.0, jitter, n)
    if rng.random() < MISS_P:
        px = np.clip(px + rng.uniform(-0.4, 0.4), 0.02, 0.98)
        py = np.clip(py + rng.uniform(-0.4, 0.4), 0.02, 0.98)
    path.extend(np.linspace(a, b, n), px, py)


def _idle(
    rng: np.random.Generator, style: AnnotatorStyle, path: _Path, t0: float, t1: float
) -> None:
    """Filler time between t0 and t1: drift near the last point or an excursion off the image."""
    span = t1 - t0
    if span <= 0.0:
        return
    x, y = path.last
    if span > 0.8 and rng.random() < style.excursion_p:
        # Off an edge: into the recorded band, or far enough out to split the trace.
        depth = rng.uniform(0.01, 0.09) if rng.random() < 0.5 else rng.uniform(0.15, 0.4)
        edge = int(rng.integers(4))
        ex, ey = x, y
        if edge == 0:
            ex = -depth
        elif edge == 1:
            ex = 1.0 + depth
        elif edge == 2:
            ey = -depth
        else:
            ey = 1.0 + depth
        out, back = t0 + span * rng.uniform(0.15, 0.4), t0 + span * rng.uniform(0.6, 0.85)
        path.add(out, ex, ey)
        path.add(back, ex + rng.normal(0.0, 0.02), ey + rng.normal(0.0, 0.02))
    else:
        steps = int(span / 0.5)
        if steps:
            drift = np.cumsum(rng.normal(0.0, 0.04, (steps, 2)), axis=0)  # (steps, 2) random walk
            walk = np.clip(np.array([x, y]) + drift, 0.03, 0.97)
            path.extend(t0 + span * np.arange(1, steps + 1) / (steps + 1), walk[:, 0], walk[:, 1])
    # Rest there; the move to the next object starts from here.
    path.add(t1, *path.last)


def make_traces(
    rng: np.random.Generator,
    style: AnnotatorStyle,
    hovers: list[Hover],
    speech_end: float,
) -> tuple[list[list[dict[str, float]]], list[float]]:
    """LocNar trace segments [[{x, y, t}, ...], ...] and the pointer lag of each hover."""
    lags, windows = _windows(rng, style, hovers)
    if rng.random() < NO_TRACE_P:
        return [], lags
    end = max(speech_end + rng.uniform(0.3, 1.2), max((b for _, b in windows), default=0.0) + 0.1)
    path = _Path(*rng.uniform(0.2, 0.8, 2).tolist())
    done = 0.0
    for hover, (a, b) in zip(hovers, windows, strict=True):
        travel = min(0.4, (a - done) / 2)
        _idle(rng, style, path, done, a - travel)
        _scribble(rng, style, path, hover.obj, (a, b))
        done = b
    _idle(rng, style, path, done, end)

    order = np.argsort(np.asarray(path.t), kind="stable")
    ct = np.asarray(path.t)[order]  # (C,)
    cx, cy = np.asarray(path.x)[order], np.asarray(path.y)[order]
    n = int((end - 0.0) / style.sample_dt) + 2
    t = rng.uniform(0.0, 0.2) + np.cumsum(style.sample_dt * rng.uniform(0.8, 1.2, n))  # (P,)
    t = t[t <= end]
    x = np.interp(t, ct, cx) + rng.normal(0.0, 0.003, len(t))
    y = np.interp(t, ct, cy) + rng.normal(0.0, 0.003, len(t))
    # LocNar's precision; adding 0.0 turns -0.0 into 0.0 so that files never hold "-0.0".
    x, y, t = np.round(x, 4) + 0.0, np.round(y, 4) + 0.0, np.round(t, 3)
    inside = (x >= -BAND) & (x <= 1.0 + BAND) & (y >= -BAND) & (y <= 1.0 + BAND)
    segments: list[list[dict[str, float]]] = []
    # Runs of consecutive recorded points: each run is one segment.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], inside.astype(np.int8), [0]])))
    for s, e in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
        segments.append(
            [
                {"x": px, "y": py, "t": pt}
                for px, py, pt in zip(
                    x[s:e].tolist(), y[s:e].tolist(), t[s:e].tolist(), strict=True
                )
            ]
        )
    return segments, lags
