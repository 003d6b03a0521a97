from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alp_curation.boxes import (
    box_iou_xyxy,
    boxes_norm_to_px,
    boxes_px_to_norm,
    quantization_cell_px,
    quantize_box_xyxy_px,
    quantize_boxes_xyxy_px,
)


def test_norm_px_conversion() -> None:
    boxes_xyxy_norm = np.array([[0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.5, 0.75]])
    boxes_xyxy_px = boxes_norm_to_px(boxes_xyxy_norm, image_width=640, image_height=480)
    np.testing.assert_array_equal(boxes_xyxy_px, [[0, 0, 640, 480], [160, 240, 320, 360]])
    back = boxes_px_to_norm(boxes_xyxy_px, image_width=640, image_height=480)
    np.testing.assert_allclose(back, boxes_xyxy_norm)
    with pytest.raises(ValueError, match="image_width"):
        boxes_norm_to_px(boxes_xyxy_norm, image_width=0, image_height=480)
    with pytest.raises(ValueError, match="shape"):
        boxes_px_to_norm(np.zeros((2, 3)), image_width=640, image_height=480)


def test_iou_known_values() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], dtype=float)
    b = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6], [1, 1, 1, 1]], dtype=float)
    iou = box_iou_xyxy(a, b)
    assert iou.shape == (2, 4)
    np.testing.assert_allclose(iou[0], [1.0, 2 / 6, 0.0, 0.0])
    np.testing.assert_allclose(iou[1], [0.25, 0.0, 0.0, 0.0])
    # A zero-area box against itself: empty union, IoU 0 rather than NaN.
    assert box_iou_xyxy(b[3:], b[3:])[0, 0] == 0.0
    assert box_iou_xyxy(np.zeros((0, 4)), b).shape == (0, 4)


def test_quantize_known_answer() -> None:
    # L = 256, Q = 8 -> cells of 8 px.
    assert quantization_cell_px(image_width=512, image_height=256, q=8) == 8.0
    box = quantize_box_xyxy_px((10, 10, 20, 20), image_width=512, image_height=256, q=8)
    assert box == (8.0, 8.0, 24.0, 24.0)
    # Edges on the grid stay where they are.
    assert quantize_box_xyxy_px((16, 8, 24, 40), image_width=512, image_height=256, q=8) == (
        16.0,
        8.0,
        24.0,
        40.0,
    )
    # Q = 32 on a 640 x 480 image: cells of 60 px; x1 = 610 -> 660, clipped to 640.
    assert quantize_box_xyxy_px((100, 130, 610, 470), image_width=640, image_height=480, q=32) == (
        60.0,
        120.0,
        640.0,
        480.0,
    )


def test_quantize_edge_off_grid_by_float_error_stays() -> None:
    cell = quantization_cell_px(image_width=333, image_height=333, q=16)  # 20.8125
    on_grid = 7 * cell
    below = np.nextafter(on_grid, 0.0)
    above = np.nextafter(on_grid, math.inf)
    # The naive floor / ceil would move these edges by a whole cell.
    assert math.floor(below / cell) == 6 and math.ceil(above / cell) == 8
    x0, _, x1, _ = quantize_box_xyxy_px(
        (below, 0.0, above, 10.0), image_width=333, image_height=333, q=16
    )
    assert x0 == pytest.approx(on_grid, abs=1e-9) and x0 <= below
    assert x1 == pytest.approx(on_grid, abs=1e-9) and x1 >= above


@pytest.mark.parametrize("q", [4, 0, 64, None, 8.0, True, "16"])
def test_quantize_rejects_q(q: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(q))):
        quantize_box_xyxy_px((0, 0, 1, 1), image_width=10, image_height=10, q=q)


def test_quantize_accepts_numpy_q_and_rejects_bad_boxes() -> None:
    q = np.random.default_rng(0).choice([8, 16, 32])  # np.int64, as a sampler would give
    quantize_box_xyxy_px((1, 1, 2, 2), image_width=256, image_height=256, q=q)
    with pytest.raises(ValueError, match="x0 <= x1"):
        quantize_box_xyxy_px((5, 1, 2, 2), image_width=256, image_height=256, q=8)
    with pytest.raises(ValueError, match="finite"):
        quantize_box_xyxy_px((0, 0, math.nan, 2), image_width=256, image_height=256, q=8)


def test_vectorised_matches_single() -> None:
    rng = np.random.default_rng(1)
    xy = np.sort(rng.uniform(0, 300, size=(20, 2, 2)), axis=1)  # (N, corner, xy)
    boxes = np.stack([xy[:, 0, 0], xy[:, 0, 1], xy[:, 1, 0], xy[:, 1, 1]], axis=1)  # (N, 4)
    out = quantize_boxes_xyxy_px(boxes, image_width=300, image_height=200, q=16)
    assert out.shape == (20, 4)
    for box, expected in zip(boxes, out, strict=True):
        single = quantize_box_xyxy_px(box, image_width=300, image_height=200, q=16)
        assert single == tuple(expected.tolist())


@st.composite
def image_and_box(draw: st.DrawFn) -> tuple[int, int, tuple[float, float, float, float]]:
    width = draw(st.integers(1, 4000))
    height = draw(st.integers(1, 4000))
    fractions = st.floats(min_value=0.0, max_value=1.0)
    x0, x1 = sorted((draw(fractions) * width, draw(fractions) * width))
    y0, y1 = sorted((draw(fractions) * height, draw(fractions) * height))
    return width, height, (x0, y0, x1, y1)


@settings(max_examples=200, deadline=None)
@given(image_and_box(), st.sampled_from([8, 16, 32]))
def test_quantized_box_contains_original_and_stays_inside(
    sample: tuple[int, int, tuple[float, float, float, float]], q: int
) -> None:
    width, height, box = sample
    qx0, qy0, qx1, qy1 = quantize_box_xyxy_px(box, image_width=width, image_height=height, q=q)
    x0, y0, x1, y1 = box
    assert 0 <= qx0 <= x0 and 0 <= qy0 <= y0
    assert x1 <= qx1 <= width and y1 <= qy1 <= height
    # Each edge moves by less than a cell (plus float noise), unless clipping pulled it in.
    cell = q * min(width, height) / 256
    slack = cell * (1 + 1e-9)
    assert x0 - qx0 < slack and y0 - qy0 < slack and qx1 - x1 < slack and qy1 - y1 < slack


@settings(max_examples=100, deadline=None)
@given(image_and_box(), st.sampled_from([8, 16, 32]))
def test_quantization_is_idempotent(
    sample: tuple[int, int, tuple[float, float, float, float]], q: int
) -> None:
    width, height, box = sample
    once = quantize_box_xyxy_px(box, image_width=width, image_height=height, q=q)
    assert quantize_box_xyxy_px(once, image_width=width, image_height=height, q=q) == once
