from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alp_curation.locnar import TraceSegment
from alp_curation.traces import TraceBox, TracePoints, merge_segments, trace_box


def points(xs: list[float], ys: list[float], ts: list[float]) -> TracePoints:
    return merge_segments([TraceSegment(x=xs, y=ys, t=ts)])


def test_merge_sorts_segments_stably() -> None:
    late = TraceSegment(x=[0.7, 0.8], y=[0.1, 0.2], t=[5.0, 6.0])
    early = TraceSegment(x=[0.1, 0.2, 0.3], y=[0.5, 0.5, 0.5], t=[1.0, 5.0, 7.0])
    merged = merge_segments([late, early])
    np.testing.assert_array_equal(merged.t, [1.0, 5.0, 5.0, 6.0, 7.0])
    # The two points at t = 5 keep input order: the late segment's first.
    np.testing.assert_array_equal(merged.x, [0.1, 0.7, 0.2, 0.8, 0.3])
    assert len(merged) == 5 and not merged.t.flags.writeable


def test_merge_empty() -> None:
    merged = merge_segments([])
    assert len(merged) == 0 and merged.t.dtype == np.float64


def test_trace_points_must_be_sorted() -> None:
    with pytest.raises(ValueError, match="sorted"):
        TracePoints(x=[0.0, 0.0], y=[0.0, 0.0], t=[2.0, 1.0])
    with pytest.raises(ValueError, match="length"):
        TracePoints(x=[0.0], y=[0.0, 0.0], t=[1.0, 2.0])


def test_trace_box_known_answer() -> None:
    pts = points(
        xs=[0.9, 0.2, 0.4, 0.3, 0.9],
        ys=[0.9, 0.1, 0.6, 0.2, 0.9],
        ts=[0.5, 1.0, 1.5, 2.0, 3.5],
    )
    # Window (1.0 - 0.5, 2.5 + 0.5) = (0.5, 3.0): the points at t = 1.0, 1.5, 2.0.
    assert trace_box(pts, 1.0, 2.5) == TraceBox((0.2, 0.1, 0.4, 0.6), 3, None)
    # The bounds are strict: t = 0.5 and t = 3.5 sit exactly on them and stay out.
    assert trace_box(pts, 1.0, 3.0).n_points == 3
    assert trace_box(pts, 1.0, 3.0, temporal_padding=0.0).box_xyxy_norm == (0.3, 0.2, 0.4, 0.6)


def test_trace_box_clips_to_image() -> None:
    pts = points(xs=[-0.08, 0.5, 1.07], ys=[0.3, -0.01, 1.02], ts=[1.0, 1.1, 1.2])
    assert trace_box(pts, 1.0, 1.2).box_xyxy_norm == (0.0, 0.0, 1.0, 1.0)


def test_trace_box_reasons() -> None:
    pts = points(xs=[0.1, 0.5, 0.5, 0.5], ys=[0.1, 0.2, 0.3, 0.4], ts=[0.0, 5.0, 5.1, 5.2])
    assert trace_box(pts, 10.0, 11.0) == TraceBox(None, 0, "too_few_points")
    assert trace_box(pts, 0.0, 0.0) == TraceBox(None, 1, "too_few_points")
    assert trace_box(pts, 5.0, 5.2) == TraceBox(None, 3, "zero_area")  # a vertical line
    # Both points left of the image clip to the same x = 0.
    off = points(xs=[-0.05, -0.02], ys=[0.2, 0.4], ts=[1.0, 1.1])
    assert trace_box(off, 1.0, 1.1) == TraceBox(None, 2, "zero_area")
    assert trace_box(merge_segments([]), 0.0, 1.0) == TraceBox(None, 0, "too_few_points")


def test_trace_box_rejects_bad_window() -> None:
    pts = points(xs=[0.1, 0.2], ys=[0.1, 0.2], ts=[0.0, 1.0])
    for t1, t2, pad in ((2.0, 1.0, 0.5), (float("nan"), 1.0, 0.5), (0.0, 1.0, -0.1)):
        with pytest.raises(ValueError):
            trace_box(pts, t1, t2, temporal_padding=pad)


_coord = st.floats(min_value=-0.1, max_value=1.1, allow_nan=False)
# Times on a coarse grid so that points often sit exactly on the window bounds.
_time = st.integers(0, 40).map(lambda k: k * 0.25)


@st.composite
def segments(draw: st.DrawFn) -> list[TraceSegment]:
    result = []
    for _ in range(draw(st.integers(0, 4))):
        n = draw(st.integers(1, 12))
        ts = sorted(draw(st.lists(_time, min_size=n, max_size=n)))
        xs = draw(st.lists(_coord, min_size=n, max_size=n))
        ys = draw(st.lists(_coord, min_size=n, max_size=n))
        result.append(TraceSegment(x=xs, y=ys, t=ts))
    return result


@settings(max_examples=100, deadline=None)
@given(
    segments(), _time, st.integers(0, 12).map(lambda k: k * 0.25), st.sampled_from([0.0, 0.5, 1.0])
)
def test_trace_box_matches_brute_force(
    segs: list[TraceSegment], t1: float, length: float, pad: float
) -> None:
    t2 = t1 + length
    lo, hi = t1 - pad, t2 + pad
    selected = [
        (min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0))
        for seg in segs
        for x, y, t in zip(seg.x.tolist(), seg.y.tolist(), seg.t.tolist(), strict=True)
        if lo < t < hi
    ]
    result = trace_box(merge_segments(segs), t1, t2, temporal_padding=pad)
    assert result.n_points == len(selected)
    if len(selected) < 2:
        assert result == TraceBox(None, len(selected), "too_few_points")
        return
    xs = [p[0] for p in selected]
    ys = [p[1] for p in selected]
    expected = (min(xs), min(ys), max(xs), max(ys))
    if expected[2] <= expected[0] or expected[3] <= expected[1]:
        assert result == TraceBox(None, len(selected), "zero_area")
        return
    assert result == TraceBox(expected, len(selected), None)
    # The box is the tight extent: it holds every selected point and each edge touches one.
    x0, y0, x1, y1 = result.box_xyxy_norm
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in selected)
    assert {x0, x1} <= set(xs) and {y0, y1} <= set(ys)
