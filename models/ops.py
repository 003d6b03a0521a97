"""Tensor operations the heads share: RoI Align in pure torch, the FPN level rule that picks
which feature map a box reads, and the zero-weighted term that keeps unused outputs in the graph.

Why not ``torchvision.ops.roi_align``: on machines where torchvision's compiled operators do not
load (see `alp_curation.torchvision_fix`), torchvision falls back to a ``torch.compile``'d
pure-Python kernel that takes tens of seconds to compile on its first call on a CPU. The version
here is a single ``F.grid_sample`` per image with the same numbers as torchvision's
``roi_align(..., aligned=True)`` for a fixed ``sampling_ratio`` (tested against it).

Naming convention: K = boxes, B = images, C = channels, S = output size, G = S * sampling_ratio
sample points per side of a box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "assign_fpn_levels",
    "concat_boxes",
    "multilevel_roi_align",
    "roi_align",
    "zero_weighted",
]


def concat_boxes(boxes_per_image: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image (K_i, 4) boxes -> all boxes (K, 4) and the (K,) int64 image of each, the
    (boxes, batch_index) pair RoI Align takes."""
    boxes = torch.cat(list(boxes_per_image))  # (K, 4)
    counts = torch.tensor([len(b) for b in boxes_per_image], device=boxes.device)
    batch = torch.repeat_interleave(torch.arange(len(counts), device=boxes.device), counts)
    return boxes, batch  # (K, 4), (K,)


def zero_weighted(*tensors: Tensor) -> Tensor:
    """``0 * sum(t.sum())``: a scalar 0 that depends on every tensor given.

    Added to a loss whose supervision is absent in a batch (no positive, no mask, no box), it
    keeps the outputs, and so the parameters behind them, in the autograd graph with a zero
    gradient: DistributedDataParallel then needs no ``find_unused_parameters``.
    """
    if not tensors:
        raise ValueError("zero_weighted: give at least one tensor")
    return sum((t.sum() for t in tensors), tensors[0].new_zeros(())) * 0.0


def roi_align(
    features: Tensor,
    boxes: Tensor,
    batch_index: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> Tensor:
    """Average-pooled bilinear samples of ``features`` inside each box: (K, C, S, S), float32
    (float64 for float64 features).

    Args:
        features: (B, C, H, W) feature maps.
        boxes: (K, 4) float boxes (x0, y0, x1, y1) in input-image pixels.
        batch_index: (K,) int64, the image of ``features`` each box belongs to.
        output_size: S, bins per side.
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: sample points per bin and side (> 0; torchvision's adaptive ``<= 0``
            mode is not supported, it would give every box its own grid size).

    Semantics are torchvision's ``aligned=True``: a box edge ``x`` lies at ``x * spatial_scale -
    0.5`` in feature pixels (pixel centres at integers); each of the S x S bins averages the
    ``sampling_ratio``² points at ``start + (i + 0.5) * bin / sampling_ratio``; a point more than
    one pixel outside the map counts as 0, one within a pixel of the border reads the border.
    """
    if features.dim() != 4:
        raise ValueError(f"roi_align: features must be (B, C, H, W), got {tuple(features.shape)}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"roi_align: boxes must be (K, 4), got {tuple(boxes.shape)}")
    if batch_index.shape != boxes.shape[:1]:
        raise ValueError(
            f"roi_align: batch_index must be ({boxes.shape[0]},), got {tuple(batch_index.shape)}"
        )
    if sampling_ratio <= 0:
        raise ValueError(f"roi_align: sampling_ratio must be > 0, got {sampling_ratio}")
    # Sample coordinates in at least float32 (under mixed precision, float16 has only half-pixel
    # resolution at 1024 px); the output has that dtype too.
    dtype = torch.promote_types(features.dtype, torch.float32)
    features = features.to(dtype)
    num_boxes, channels = boxes.shape[0], features.shape[1]
    if num_boxes == 0:
        return features.new_zeros(0, channels, output_size, output_size)
    height, width = features.shape[-2:]
    grid, valid = _sample_grid(
        boxes.to(dtype), height, width, output_size, spatial_scale, sampling_ratio
    )
    side = output_size * sampling_ratio
    batch_index = batch_index.long()
    # Points more than a pixel outside the map read 0; when none is (the usual case), the mask
    # would multiply every sample by 1.
    all_valid = bool(valid.all())
    valid = valid.to(features.dtype)
    if num_boxes == features.shape[0] and torch.equal(
        batch_index, torch.arange(num_boxes, device=batch_index.device)
    ):
        # One box per map (e.g. each GT mask cropped by its own box): a single call.
        samples = F.grid_sample(
            features, grid, mode="bilinear", padding_mode="border", align_corners=True
        )  # (K, C, G, G)
        if not all_valid:
            samples = samples * valid[:, None]
        return _pool(samples, sampling_ratio)  # (K, C, S, S)
    pooled = features.new_empty(num_boxes, channels, output_size, output_size)
    for image in torch.unique(batch_index).tolist():
        rows = (batch_index == image).nonzero().squeeze(1)
        k = rows.numel()
        # All boxes of one image stacked as one tall grid: (1, k * G, G, 2).
        samples = F.grid_sample(
            features[image : image + 1],
            grid[rows].reshape(1, k * side, side, 2),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )  # (1, C, k * G, G)
        if not all_valid:
            samples = samples * valid[rows].reshape(1, 1, k * side, side)
        out = _pool(samples, sampling_ratio)  # (1, C, k * S, S)
        out = out.reshape(channels, k, output_size, output_size).transpose(0, 1)  # (k, C, S, S)
        pooled.index_copy_(0, rows, out)
    return pooled


def _pool(samples: Tensor, ratio: int) -> Tensor:
    """Mean of each ratio x ratio block of sample points (a bin); points far outside the map were
    zeroed and still count, as in torchvision."""
    return F.avg_pool2d(samples, ratio) if ratio > 1 else samples


def _sample_grid(
    boxes: Tensor, height: int, width: int, output_size: int, scale: float, ratio: int
) -> tuple[Tensor, Tensor]:
    """grid_sample coordinates (K, G, G, 2) of every sample point, and (K, G, G) validity."""
    start = boxes[:, :2] * scale - 0.5  # (K, 2): x, y
    size = boxes[:, 2:] * scale - 0.5 - start  # (K, 2)
    side = output_size * ratio
    # Sample j of a side sits (j + 0.5) / ratio bins from the start (bins of size / S).
    offsets = (torch.arange(side, device=boxes.device, dtype=boxes.dtype) + 0.5) / ratio
    points = start[:, None, :] + offsets[None, :, None] * (size[:, None, :] / output_size)
    xs, ys = points[..., 0], points[..., 1]  # (K, G) each
    valid = ((ys >= -1.0) & (ys <= height))[:, :, None] & ((xs >= -1.0) & (xs <= width))[:, None]
    grid = torch.stack(
        [
            _normalise(xs, width)[:, None, :].expand(-1, side, -1),
            _normalise(ys, height)[:, :, None].expand(-1, -1, side),
        ],
        dim=-1,
    )  # (K, G, G, 2): grid_sample wants (x, y), rows indexed by y
    return grid, valid


def _normalise(coords: Tensor, size: int) -> Tensor:
    """Pixel coordinates -> [-1, 1] for ``align_corners=True`` (pixel 0 -> -1, size-1 -> 1)."""
    if size == 1:
        return torch.zeros_like(coords)  # the only pixel; border padding reads it everywhere
    return coords * (2.0 / (size - 1)) - 1.0


def assign_fpn_levels(
    boxes: Tensor,
    min_level: int = 3,
    max_level: int = 5,
    canonical_size: int = 224,
    canonical_level: int = 4,
) -> Tensor:
    """FPN level of each (K, 4) box: clamp(floor(4 + log2(sqrt(area) / 224)), 3, 5), int64 (K,).

    The canonical rule of the FPN paper, as detectron2 writes it (a 224-pixel box reads P4).
    """
    sizes = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_size + 1e-8))
    return levels.clamp(min=min_level, max=max_level).long()


def multilevel_roi_align(
    features: Sequence[Tensor],
    boxes: Tensor,
    batch_index: Tensor,
    output_size: int,
    strides: Sequence[int],
    sampling_ratio: int = 2,
    min_level: int = 3,
    max_level: int = 5,
) -> Tensor:
    """RoI Align each box on the one FPN level `assign_fpn_levels` picks: (K, C, S, S).

    ``features`` are the FPN maps in order (P3, P4, ...) and ``strides`` their strides; a map's
    level is log2 of its stride, so the list may hold more levels (P6, P7) than are read.
    """
    if len(features) != len(strides):
        raise ValueError(
            f"multilevel_roi_align: {len(features)} feature maps but {len(strides)} strides"
        )
    by_level = {round(math.log2(s)): (f, s) for f, s in zip(features, strides, strict=True)}
    missing = [lvl for lvl in range(min_level, max_level + 1) if lvl not in by_level]
    if missing:
        raise ValueError(
            f"multilevel_roi_align: no feature map for levels {missing} (strides {list(strides)})"
        )
    first = features[0]
    out = first.new_zeros(
        boxes.shape[0],
        first.shape[1],
        output_size,
        output_size,
        dtype=torch.promote_types(first.dtype, torch.float32),  # as roi_align's output
    )
    if boxes.shape[0] == 0:
        return out
    levels = assign_fpn_levels(boxes, min_level, max_level)
    for level in range(min_level, max_level + 1):
        rows = (levels == level).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        feature, stride = by_level[level]
        pooled = roi_align(
            feature, boxes[rows], batch_index[rows], output_size, 1.0 / stride, sampling_ratio
        )
        out.index_copy_(0, rows, pooled)
    return out
