"""The maths of FCOS as free functions: locations, matching, regression targets, decoding.

Everything here is pure tensor arithmetic, vectorised over all locations and ground-truth boxes
of an image (no Python loop over either), and tested by hand in tests/models/test_fcos_mo.py.

Naming convention: R = locations (all FPN levels of one image, P3 first, row-major within a
level), M = ground-truth boxes. Boxes are (x0, y0, x1, y1) in input-image pixels; (l, t, r, b)
are the distances from a location to the left, top, right and bottom edges.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "centerness_targets",
    "decode_boxes",
    "fcos_match",
    "flatten_levels",
    "level_ranges",
    "locations",
    "regression_targets",
]


def level_ranges(size_ranges: Sequence[float]) -> list[tuple[float, float]]:
    """Boundaries (64, 128, 256, 512) -> [(0, 64), (64, 128), ..., (512, inf)], one per level."""
    bounds = [0.0, *(float(s) for s in size_ranges), math.inf]
    if any(lo >= hi for lo, hi in itertools.pairwise(bounds)):
        raise ValueError(f"size_ranges: expected increasing positive values, got {size_ranges}")
    return list(itertools.pairwise(bounds))


def locations(
    sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    ranges: Sequence[tuple[float, float]],
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Every location of the levels of (h, w) ``sizes``: points (R, 2), strides (R,), ranges (R, 2).

    The location (row i, column j) of a level with stride s sits at image pixel
    (j * s + s // 2, i * s + s // 2) (FCOS / detectron2), listed row-major, level after level,
    the same order as the head outputs flattened by `models.meta_arch.fcos_mo`.
    """
    points, point_strides, point_ranges = [], [], []
    for (h, w), s, bounds in zip(sizes, strides, ranges, strict=True):
        ys = torch.arange(h, device=device, dtype=torch.float32) * s + s // 2
        xs = torch.arange(w, device=device, dtype=torch.float32) * s + s // 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))  # (hw, 2)
        point_strides.append(torch.full((h * w,), float(s), device=device))
        point_ranges.append(torch.tensor(bounds, device=device).expand(h * w, 2))
    return torch.cat(points), torch.cat(point_strides), torch.cat(point_ranges)


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """Per-level (B, X, h, w) head maps -> (B, R, X): levels concatenated, row-major within one,
    the order of `locations`."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # (B, R, X)


def regression_targets(points: Tensor, boxes: Tensor) -> Tensor:
    """(l, t, r, b) from each point to its box, in pixels: points (R, 2), boxes (R, 4) -> (R, 4)."""
    return torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], dim=1)


def fcos_match(
    points: Tensor, strides: Tensor, ranges: Tensor, gt_boxes: Tensor, radius: float = 1.5
) -> Tensor:
    """FCOS assignment of locations to ground-truth boxes: int64 (R,), GT index or -1.

    A location is positive for a box when (1) it lies strictly inside the box's centre region,
    the square of half-side ``radius * stride`` around the box centre clipped to the box, and (2)
    max(l, t, r, b) falls in its level's range (lo, hi]. When several boxes qualify the one of
    minimum area wins (the first of them on equal areas).

    Args:
        points: (R, 2) location coordinates (x, y) in pixels.
        strides: (R,) stride of each location's level.
        ranges: (R, 2) (lo, hi] of max(l, t, r, b) for each location's level.
        gt_boxes: (M, 4) boxes (x0, y0, x1, y1).
        radius: centre-sampling radius in strides.
    """
    num_points = points.shape[0]
    if gt_boxes.shape[0] == 0:
        return torch.full((num_points,), -1, dtype=torch.long, device=points.device)
    x, y = points[:, 0:1], points[:, 1:2]  # (R, 1)
    x0, y0, x1, y1 = gt_boxes.unbind(dim=1)  # (M,) each
    ltrb = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # (R, M, 4)
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2  # (M,)
    reach = radius * strides[:, None]  # (R, 1)
    region = torch.stack(
        [
            torch.maximum(centre_x - reach, x0),
            torch.maximum(centre_y - reach, y0),
            torch.minimum(centre_x + reach, x1),
            torch.minimum(centre_y + reach, y1),
        ],
        dim=2,
    )  # (R, M, 4): the clipped centre region of every box, seen from every level
    in_region = (
        (x > region[..., 0]) & (y > region[..., 1]) & (x < region[..., 2]) & (y < region[..., 3])
    )  # (R, M)
    max_side = ltrb.amax(dim=2)  # (R, M)
    in_range = (max_side > ranges[:, 0:1]) & (max_side <= ranges[:, 1:2])  # (R, M)
    areas = ((x1 - x0) * (y1 - y0))[None].expand(num_points, -1)  # (R, M)
    areas = torch.where(in_region & in_range, areas, torch.full_like(areas, math.inf))
    min_area, index = areas.min(dim=1)  # (R,): ties -> the first minimum
    return torch.where(torch.isfinite(min_area), index, torch.full_like(index, -1))


def centerness_targets(ltrb: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for (P, 4) distances -> (P,)."""
    left_right, top_bottom = ltrb[:, 0::2], ltrb[:, 1::2]  # (P, 2) each
    ratio = (left_right.amin(dim=1) / left_right.amax(dim=1).clamp(min=1e-12)) * (
        top_bottom.amin(dim=1) / top_bottom.amax(dim=1).clamp(min=1e-12)
    )
    return ratio.clamp(min=0).sqrt()


def decode_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    """Boxes (P, 4) from points (P, 2) and (l, t, r, b) distances (P, 4), both in pixels."""
    return torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], dim=1)
