"""Instance masks kept as COCO run lengths until a transform knows which pixels it needs.

A COCO shard stores each mask as a compressed RLE (`alp_dataset.coco_shards`). Decoding every
mask of a sample to a full (N, H, W) array and then letting large-scale jitter drop the
instances its window misses, and read only the window's pixels of the rest, decodes far more
than the training sample uses. `RleMasks` holds the runs (checked when the sample is decoded,
so a damaged mask is still a bad sample whether or not the crop keeps it) and decodes:

- ``select(keep)``: nothing; the instances the crop removed are simply never decoded;
- ``window(rows, cols)``: only the columns between the smallest and largest of ``cols`` (an RLE
  runs down the columns, so they are one stretch of its runs), then gathers the pixels
  ``(rows[i], cols[j])`` as `alp_dataset.transforms` gathers them from a decoded mask;
- ``decode()``: every pixel, for a caller that wants the full masks.

All three give exactly the values pycocotools' decoding gives (tests compare them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# The size check is coco_shards' own, so a bad mask reads the same by either decoding.
from alp_dataset.coco_shards import RleError, _check_size, rle_counts

__all__ = ["RleMasks"]


class RleMasks:
    """N masks of one H x W image as RLE run ends; None stands for an all-False mask.

    ``ends[k]``: int64 (R_k,) cumulative run lengths of mask k (runs alternate 0, 1, ... from a
    run of zeros, column-major pixel order, last end H * W), or None. Behaves as an (N, H, W)
    bool stack for `Instances`: ``len``, ``shape``, ``ndim``, ``dtype``.
    """

    ndim = 3
    dtype = torch.bool

    def __init__(self, ends: Sequence[np.ndarray | None], height: int, width: int) -> None:
        self.ends: tuple[np.ndarray | None, ...] = tuple(ends)
        self.height = int(height)
        self.width = int(width)

    @classmethod
    def from_rles(
        cls, rles: Sequence[Mapping[str, Any] | None], height: int, width: int
    ) -> RleMasks:
        """Check the RLEs as `alp_dataset.coco_shards.decode_masks` does (same errors), and keep
        their runs. Raises RleError for a size other than (height, width) or runs that do not
        cover the image exactly."""
        ends: list[np.ndarray | None] = []
        for i, rle in enumerate(rles):
            if rle is None:
                ends.append(None)
                continue
            _check_size(rle["size"], height, width, f"instances[{i}].rle.size")
            counts = rle["counts"]
            if not isinstance(counts, str):
                raise RleError(f"instances[{i}].rle.counts", "expected a string")
            run_ends = np.cumsum(rle_counts(counts))  # (R,)
            if (int(run_ends[-1]) if run_ends.size else 0) != height * width:
                raise RleError(f"instances[{i}].rle.counts", "runs do not cover the image")
            ends.append(run_ends)
        return cls(ends, height, width)

    def __len__(self) -> int:
        return len(self.ends)

    def __repr__(self) -> str:
        return f"RleMasks(n={len(self)}, height={self.height}, width={self.width})"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.height, self.width)

    def select(self, keep: torch.Tensor) -> RleMasks:
        """The masks where ``keep`` ((N,) bool) is True; nothing is decoded."""
        flags = keep.tolist()
        if len(flags) != len(self):
            raise ValueError(f"RleMasks.select: keep has {len(flags)} entries for {len(self)}")
        return RleMasks([e for e, k in zip(self.ends, flags, strict=True) if k], *self.shape[1:])

    def window(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """bool (N, len(rows), len(cols)): pixel (i, j) of mask n is mask n at (rows[i], cols[j]).

        Decodes columns min(cols)..max(cols) only, rows min(rows)..max(rows) of them.
        """
        # Naming convention: N = masks, h, w = len(rows), len(cols); h_src, w_src = the source
        # region's rows and columns.
        n, h, w = len(self), len(rows), len(cols)
        if n == 0 or h == 0 or w == 0:
            return torch.zeros((n, h, w), dtype=torch.bool)
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        if r0 < 0 or c0 < 0 or r1 > self.height or c1 > self.width:
            raise ValueError(
                f"RleMasks.window: rows {r0}..{r1 - 1}, cols {c0}..{c1 - 1} lie outside the "
                f"{self.height} x {self.width} masks"
            )
        by_col = np.zeros((n, c1 - c0, r1 - r0), dtype=np.uint8)  # (N, w_src, h_src)
        for k, ends in enumerate(self.ends):
            if ends is not None:
                flat = _decode_range(ends, c0 * self.height, c1 * self.height)  # (w_src * H,)
                by_col[k] = flat.reshape(c1 - c0, self.height)[:, r0:r1]
        source = torch.from_numpy(by_col).view(torch.bool)  # (N, w_src, h_src)
        # As alp_dataset.transforms gathers a decoded stack: along columns, then along rows.
        picked = source.index_select(1, cols - c0)  # (N, w, h_src)
        return picked.transpose(1, 2).index_select(1, rows - r0)  # (N, h, w)

    def decode(self) -> torch.Tensor:
        """bool (N, H, W): every mask, every pixel."""
        rows = torch.arange(self.height)
        cols = torch.arange(self.width)
        return self.window(rows, cols)


def _decode_range(ends: np.ndarray, start: int, stop: int) -> np.ndarray:
    """uint8 (stop - start,): pixels start..stop - 1 (column-major) of the mask with run ends
    ``ends``; run k holds value k % 2."""
    begins = np.concatenate(([0], ends[:-1]))  # (R,)
    lengths = np.minimum(ends, stop) - np.maximum(begins, start)  # (R,), <= 0 outside the range
    values = (np.arange(len(ends)) & 1).astype(np.uint8)  # (R,)
    return np.repeat(values, np.maximum(lengths, 0))
