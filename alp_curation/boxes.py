"""Box formats: the one place for conversions, IoU and ALP box quantization.

Boxes are (x0, y0, x1, y1) ("xyxy") with the origin at the top-left image corner, either
normalised to the image ("_norm", as ALPs are stored) or in pixels ("_px", once an image size is
known). Names say which (DESIGN.md, "Coordinates").

Box quantization (Sec. 3.2 of the ALP paper, "Box quantization"): ALP boxes drawn from mouse
scribbles often miss part of the object, so during training their edges are stretched outwards to
an imaginary grid of square cells of Q * L / 256 pixels, L being the shorter image edge. The paper
samples Q from {none, 8, 16, 32} per instance; "none" means the box is left as is, so these
functions take only Q in {8, 16, 32} and the caller skips them for "none".
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

__all__ = [
    "QUANTIZATION_Q",
    "box_iou_xyxy",
    "boxes_norm_to_px",
    "boxes_px_to_norm",
    "quantization_cell_px",
    "quantize_box_xyxy_px",
    "quantize_boxes_xyxy_px",
]

QUANTIZATION_Q: tuple[int, ...] = (8, 16, 32)

# x / cell for an edge that lies on the grid can come out as k - 1e-16 instead of k; floor() would
# then move the edge a whole cell. Ratios this close (relatively) to an integer count as on-grid.
_ON_GRID_RTOL = 1e-9


def _check_image_size(image_width: float, image_height: float) -> None:
    for name, value in (("image_width", image_width), ("image_height", image_height)):
        if not (isinstance(value, Real) and not isinstance(value, bool)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def _as_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {arr.shape}")
    return arr


def _scale(image_width: float, image_height: float) -> np.ndarray:
    return np.array([image_width, image_height, image_width, image_height], dtype=np.float64)


def boxes_norm_to_px(
    boxes_xyxy_norm: np.ndarray, *, image_width: float, image_height: float
) -> np.ndarray:
    """Normalised xyxy boxes (..., 4) -> pixel xyxy boxes (..., 4), float64."""
    _check_image_size(image_width, image_height)
    return _as_boxes(boxes_xyxy_norm, "boxes_xyxy_norm") * _scale(image_width, image_height)


def boxes_px_to_norm(
    boxes_xyxy_px: np.ndarray, *, image_width: float, image_height: float
) -> np.ndarray:
    """Pixel xyxy boxes (..., 4) -> normalised xyxy boxes (..., 4), float64."""
    _check_image_size(image_width, image_height)
    return _as_boxes(boxes_xyxy_px, "boxes_xyxy_px") / _scale(image_width, image_height)


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes a (N, 4) and b (M, 4) -> (N, M) float64.

    Either format works as long as both arguments share it. Boxes with x1 < x0 or y1 < y0 count as
    empty; a pair whose union is empty has IoU 0.
    """
    # Naming convention: N = boxes in a, M = boxes in b.
    a = _as_boxes(a, "a").reshape(-1, 4)  # (N, 4)
    b = _as_boxes(b, "b").reshape(-1, 4)  # (M, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)  # (N,)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # (M,)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    wh = np.clip(bottom_right - top_left, 0, None)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter  # (N, M)
    iou = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def _check_q(q: int) -> None:
    if isinstance(q, bool) or not isinstance(q, Integral) or int(q) not in QUANTIZATION_Q:
        raise ValueError(f"q must be one of {QUANTIZATION_Q}, got {q!r}")


def quantization_cell_px(*, image_width: float, image_height: float, q: int) -> float:
    """Side of a grid cell in pixels: q * L / 256 with L the shorter image edge."""
    _check_q(q)
    _check_image_size(image_width, image_height)
    return int(q) * min(image_width, image_height) / 256


def _grid_index(ratio: np.ndarray, rounding: np.ufunc) -> np.ndarray:
    nearest = np.rint(ratio)
    on_grid = np.abs(ratio - nearest) <= _ON_GRID_RTOL * np.maximum(1.0, np.abs(nearest))
    return np.where(on_grid, nearest, rounding(ratio))


def quantize_boxes_xyxy_px(
    boxes_xyxy_px: np.ndarray, *, image_width: float, image_height: float, q: int
) -> np.ndarray:
    """Stretch each box outwards to the quantization grid, then clip to [0, W] x [0, H].

    x0, y0 go down and x1, y1 go up to the nearest multiple of the cell (`quantization_cell_px`);
    an edge already on the grid stays. The result contains the part of each input box that lies
    inside the image.

    Args:
        boxes_xyxy_px: (N, 4) (or (..., 4)) pixel boxes with x0 <= x1, y0 <= y1, finite.
        image_width, image_height: image size in pixels.
        q: the grid parameter Q, one of 8, 16, 32.

    Returns:
        float64 array of the input's shape.
    """
    cell = quantization_cell_px(image_width=image_width, image_height=image_height, q=q)
    boxes = _as_boxes(boxes_xyxy_px, "boxes_xyxy_px")
    if not np.all(np.isfinite(boxes)):
        raise ValueError("boxes_xyxy_px must be finite")
    if np.any(boxes[..., 2] < boxes[..., 0]) or np.any(boxes[..., 3] < boxes[..., 1]):
        raise ValueError("boxes_xyxy_px must have x0 <= x1 and y0 <= y1")
    low = boxes[..., :2]  # (..., 2) x0, y0
    high = boxes[..., 2:]  # (..., 2) x1, y1
    # min/max with the input absorbs rounding in index * cell, so containment holds exactly.
    low_q = np.minimum(_grid_index(low / cell, np.floor) * cell, low)
    high_q = np.maximum(_grid_index(high / cell, np.ceil) * cell, high)
    out = np.concatenate([low_q, high_q], axis=-1)  # (..., 4)
    return np.clip(out, 0.0, _scale(image_width, image_height))


def quantize_box_xyxy_px(
    box: tuple[float, float, float, float] | np.ndarray,
    *,
    image_width: float,
    image_height: float,
    q: int,
) -> tuple[float, float, float, float]:
    """One-box form of `quantize_boxes_xyxy_px`: (x0, y0, x1, y1) pixels in, the same out."""
    arr = _as_boxes(box, "box")
    if arr.shape != (4,):
        raise ValueError(f"box must have shape (4,), got {arr.shape}")
    out = quantize_boxes_xyxy_px(arr, image_width=image_width, image_height=image_height, q=q)
    x0, y0, x1, y1 = (float(v) for v in out)
    return (x0, y0, x1, y1)
