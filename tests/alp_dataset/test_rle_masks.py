"""Tests for alp_dataset.rle_masks: lazy RLE masks against pycocotools' decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alp_dataset import rle_masks
from alp_dataset.coco_shards import RleError, decode_masks, encode_mask
from alp_dataset.rle_masks import RleMasks
from alp_dataset.transforms import (
    INSTANCES,
    Geometry,
    Instances,
    TrainTransform,
    apply_geometry,
)


def random_masks(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """bool (n, h, w): blobs of several sizes, one all-False, one all-True when n >= 3."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = y0 + rng.integers(1, h + 1), x0 + rng.integers(1, w + 1)
        masks[k, y0:y1, x0:x1] = rng.random((min(y1, h) - y0, min(x1, w) - x0)) < 0.8
    if n >= 3:
        masks[1] = False
        masks[2] = True
    return masks


def rles_of(masks: np.ndarray, missing: tuple[int, ...] = ()) -> list[dict[str, object] | None]:
    return [None if k in missing else encode_mask(m) for k, m in enumerate(masks)]


@pytest.mark.parametrize(("h", "w"), [(1, 1), (7, 5), (31, 44)])
def test_decode_matches_pycocotools(h: int, w: int) -> None:
    masks = random_masks(h * w, 6, h, w)
    rles = rles_of(masks, missing=(3,))
    lazy = RleMasks.from_rles(rles, h, w)
    assert lazy.shape == (6, h, w) and len(lazy) == 6
    expected = torch.from_numpy(np.ascontiguousarray(decode_masks(rles, h, w)))
    decoded = lazy.decode()
    assert decoded.dtype == torch.bool
    assert torch.equal(decoded, expected)
    assert not decoded[3].any()


def test_window_gathers_the_pixels_it_is_asked_for() -> None:
    h, w = 23, 37
    masks = random_masks(1, 5, h, w)
    lazy = RleMasks.from_rles(rles_of(masks), h, w)
    full = torch.from_numpy(masks)
    rng = np.random.default_rng(2)
    for _ in range(20):
        rows = torch.from_numpy(np.sort(rng.integers(3, 17, size=11)))
        cols = torch.from_numpy(rng.integers(5, 30, size=13))  # any order, repeats (flip, zoom)
        expected = full[:, rows][:, :, cols]  # (5, 11, 13)
        assert torch.equal(lazy.window(rows, cols), expected)
    with pytest.raises(ValueError, match="outside the 23 x 37 masks"):
        lazy.window(torch.tensor([0, 23]), torch.tensor([0]))


def test_select_decodes_nothing_and_keeps_the_chosen_masks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    masks = random_masks(3, 4, 9, 8)
    lazy = RleMasks.from_rles(rles_of(masks), 9, 8)
    calls: list[tuple[int, int]] = []
    real = rle_masks._decode_range

    def counting(ends: np.ndarray, start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return real(ends, start, stop)

    monkeypatch.setattr(rle_masks, "_decode_range", counting)
    kept = lazy.select(torch.tensor([True, False, False, True]))
    assert calls == [] and kept.shape == (2, 9, 8)
    assert torch.equal(kept.decode(), torch.from_numpy(masks[[0, 3]]))
    assert len(calls) == 2
    with pytest.raises(ValueError, match="3 entries for 4"):
        lazy.select(torch.tensor([True, False, True]))


def test_bad_rles_fail_as_decode_masks_fails() -> None:
    good = encode_mask(np.ones((4, 6), dtype=bool))
    short = {"size": [4, 6], "counts": encode_mask(np.ones((4, 4), dtype=bool))["counts"]}
    for rles, message in (
        ([good, {"size": [4, 5], "counts": good["counts"]}], r"instances\[1\].rle.size"),
        ([short], r"instances\[0\].rle.counts: runs do not cover the image"),
        ([{"size": [4, 6], "counts": b"2"}], r"instances\[0\].rle.counts: expected a string"),
    ):
        with pytest.raises(RleError, match=message):
            decode_masks(rles, 4, 6)
        with pytest.raises(RleError, match=message):
            RleMasks.from_rles(rles, 4, 6)


def test_apply_geometry_decodes_only_kept_instances_inside_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h, w = 40, 60
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, 2:12, 3:9] = True  # inside the window
    masks[1, 25:38, 40:58] = True  # far outside it: dropped by the crop
    boxes = torch.tensor([[3.0, 2.0, 9.0, 12.0], [40.0, 25.0, 58.0, 38.0]])
    # Scale 2, window 32 x 32 at the origin: input rows and columns 0..15.
    geometry = Geometry(input_hw=(h, w), resized_hw=(80, 120), crop_xy=(0, 0), output_hw=(32, 32))
    calls: list[tuple[int, int]] = []
    real = rle_masks._decode_range

    def counting(ends: np.ndarray, start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return real(ends, start, stop)

    monkeypatch.setattr(rle_masks, "_decode_range", counting)
    lazy = Instances(boxes, masks=RleMasks.from_rles(rles_of(masks), h, w))
    _, out = apply_geometry(torch.zeros(3, h, w), {INSTANCES: lazy}, geometry, min_box_side=1e-3)
    assert calls == [(0, 16 * h)]  # one mask, columns 0..15 only
    eager = Instances(boxes, masks=torch.from_numpy(masks))
    _, expected = apply_geometry(
        torch.zeros(3, h, w), {INSTANCES: eager}, geometry, min_box_side=1e-3
    )
    assert torch.equal(out[INSTANCES].masks, expected[INSTANCES].masks)
    assert out[INSTANCES].masks.shape == (1, 32, 32)


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_gives_the_same_sample_from_lazy_and_decoded_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(20, 70)), int(rng.integers(20, 70))
    masks = random_masks(seed, 5, h, w)
    ys, xs = rng.integers(0, h, (5, 2)), rng.integers(0, w, (5, 2))
    boxes = torch.tensor(
        np.stack([xs.min(1), ys.min(1), xs.max(1) + 1, ys.max(1) + 1], axis=1), dtype=torch.float32
    )  # (5, 4)
    image = torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1)
    transform = TrainTransform(size=32, scale_range=(0.3, 3.0))
    lazy = Instances(boxes, masks=RleMasks.from_rles(rles_of(masks, missing=(4,)), h, w))
    eager_masks = np.ascontiguousarray(decode_masks(rles_of(masks, missing=(4,)), h, w))
    eager = Instances(boxes, masks=torch.from_numpy(eager_masks))
    out_lazy = transform(image, {INSTANCES: lazy}, torch.Generator().manual_seed(seed))
    out_eager = transform(image, {INSTANCES: eager}, torch.Generator().manual_seed(seed))
    assert torch.equal(out_lazy[0], out_eager[0])
    a, b = out_lazy[1][INSTANCES], out_eager[1][INSTANCES]
    assert torch.equal(a.boxes_xyxy_px, b.boxes_xyxy_px)
    assert isinstance(a.masks, torch.Tensor) and a.masks.dtype == torch.bool
    assert torch.equal(a.masks, b.masks)
