from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alp_curation.boxes import quantization_cell_px
from alp_dataset.transforms import (
    GEOMETRY,
    INSTANCES,
    TRACES,
    EvalTransform,
    Geometry,
    Instances,
    TrainTransform,
    apply_geometry,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _column_image(h: int, w: int) -> torch.Tensor:
    """(3, h, w) float image whose value at (y, x) is x + 1000 * y (in every channel)."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (x + 1000 * y).float().expand(3, h, w).clone()


def _rect_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h, w) bool masks filling each integer box [x0, x1) x [y0, y1)."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    b = boxes.long()
    return (
        (x >= b[:, 0, None, None])
        & (x < b[:, 2, None, None])
        & (y >= b[:, 1, None, None])
        & (y < b[:, 3, None, None])
    )


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight (N, 4) xyxy boxes of non-empty masks, pixel edges included."""
    out = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def _instances(boxes: list[list[float]], h: int, w: int, *, alp: list[bool] | None = None):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = b.shape[0]
    return Instances(
        b,
        masks=_rect_masks(b, h, w),
        is_alp=torch.tensor(alp if alp is not None else [False] * n, dtype=torch.bool),
        fields={
            "labels": torch.arange(n),
            "names": [f"obj{i}" for i in range(n)],
            "embeddings": np.arange(n * 3, dtype=np.float32).reshape(n, 3),
            "ids": tuple(range(100, 100 + n)),
        },
    )


# ------------------------------------------------------------------------------------------------
# Hand-built cases with known answers.


def test_scale_one_with_known_crop_gives_exact_boxes() -> None:
    # A 100 x 200 image at scale 1.0, window of 100 x 100 starting at x = 30.
    image = _column_image(100, 200)
    inst = _instances([[40, 10, 80, 50], [10, 20, 50, 60], [150, 0, 200, 10]], 100, 200)
    geometry = Geometry((100, 200), (100, 200), crop_xy=(30, 0), output_hw=(100, 100))
    out_image, out = apply_geometry(image, {INSTANCES: inst}, geometry, min_box_side=1e-3)
    torch.testing.assert_close(out_image, image[:, :, 30:130])
    got = out[INSTANCES]
    # The third box lies right of the window: removed with its mask and every field.
    torch.testing.assert_close(
        got.boxes_xyxy_px, torch.tensor([[10.0, 10, 50, 50], [0, 20, 20, 60]])
    )
    assert got.masks is not None and got.masks.shape == (2, 100, 100)
    torch.testing.assert_close(_mask_boxes(got.masks), got.boxes_xyxy_px)
    assert got.fields["labels"].tolist() == [0, 1]
    assert got.fields["names"] == ["obj0", "obj1"]
    assert got.fields["ids"] == (100, 101)
    np.testing.assert_array_equal(got.fields["embeddings"], [[0, 1, 2], [3, 4, 5]])
    assert out[GEOMETRY] is geometry


def test_train_transform_at_scale_one_only_crops() -> None:
    # S = 100 and factor 2 make the longer side 200 = its own size: scale 1, random x offset.
    transform = TrainTransform(size=100, scale_range=(2.0, 2.0), flip_prob=0.0, quantize=())
    image = _column_image(100, 200)
    inst = _instances([[40, 10, 80, 50]], 100, 200)
    out_image, out = transform(image, {INSTANCES: inst}, _gen(0))
    g = out[GEOMETRY]
    assert g.resized_hw == (100, 200) and g.output_hw == (100, 100) and not g.flipped
    cx = g.crop_xy[0]
    assert 0 <= cx <= 100 and g.crop_xy[1] == 0
    torch.testing.assert_close(out_image, image[:, :, cx : cx + 100])
    expected = torch.tensor([[40.0 - cx, 10, 80 - cx, 50]])
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 100)
    if expected[0, 2] - expected[0, 0] > 0:
        torch.testing.assert_close(out[INSTANCES].boxes_xyxy_px, expected)


def test_flip_maps_x0_to_w_minus_x1() -> None:
    h, w = 40, 60
    image = _column_image(h, w)
    inst = _instances([[5, 6, 20, 30]], h, w)
    traces = torch.tensor([[5.0, 6.0], [20.0, 30.0], [-3.0, 1.0]])
    geometry = Geometry((h, w), (h, w), crop_xy=(0, 0), output_hw=(h, w), flipped=True)
    out_image, out = apply_geometry(image, {INSTANCES: inst, TRACES: traces}, geometry)
    torch.testing.assert_close(out_image, image.flip(-1))
    got = out[INSTANCES]
    torch.testing.assert_close(got.boxes_xyxy_px, torch.tensor([[w - 20.0, 6, w - 5, 30]]))
    assert got.masks is not None
    assert torch.equal(got.masks, inst.masks.flip(-1))
    # Trace points map like box corners, and are neither clipped nor dropped.
    torch.testing.assert_close(
        out[TRACES], torch.tensor([[w - 5.0, 6.0], [w - 20.0, 30.0], [w + 3.0, 1.0]])
    )


def test_lsj_shrinks_and_pads_bottom_right() -> None:
    transform = TrainTransform(size=512, scale_range=(0.5, 0.5), flip_prob=0.0, quantize=())
    image = torch.full((3, 100, 200), 7, dtype=torch.uint8)
    out_image, out = transform(image, {INSTANCES: Instances.empty()}, _gen(3))
    g = out[GEOMETRY]
    # Longer side 0.5 * 512 = 256, aspect kept; no crop needed.
    assert g.resized_hw == (128, 256) and g.crop_xy == (0, 0)
    assert g.content_hw == (128, 256) and g.content_xyxy == (0.0, 0.0, 256.0, 128.0)
    assert out_image.dtype == torch.uint8 and out_image.shape == (3, 512, 512)
    assert torch.all(out_image[:, :128, :256] == 7)
    assert torch.all(out_image[:, 128:] == 0) and torch.all(out_image[:, :, 256:] == 0)


def test_lsj_factor_spans_the_range() -> None:
    transform = TrainTransform(size=64)
    image = torch.zeros(3, 30, 40)
    longer = []
    for seed in range(200):
        _, out = transform(image, {INSTANCES: Instances.empty()}, _gen(seed))
        longer.append(max(out[GEOMETRY].resized_hw))
    assert min(longer) >= 32 and max(longer) <= 128
    assert min(longer) < 40 and max(longer) > 120
    flips = [
        transform(image, {INSTANCES: Instances.empty()}, _gen(s))[1][GEOMETRY].flipped
        for s in range(200)
    ]
    assert 60 < sum(flips) < 140


def test_masks_and_boxes_stay_consistent() -> None:
    h, w = 90, 120
    boxes = [[10, 10, 50, 40], [60, 5, 110, 85], [0, 0, 120, 90], [30, 50, 45, 70]]
    transform = TrainTransform(size=96, quantize=())
    for seed in range(30):
        _, out = transform(_column_image(h, w), {INSTANCES: _instances(boxes, h, w)}, _gen(seed))
        got = out[INSTANCES]
        assert got.masks is not None
        nonempty = got.masks.flatten(1).any(1)
        diff = (_mask_boxes(got.masks[nonempty]) - got.boxes_xyxy_px[nonempty]).abs()
        # Pixel-centre aligned nearest resampling keeps mask edges within half a pixel.
        assert diff.numel() == 0 or diff.max() <= 0.5 + 1e-4, (seed, diff)


def test_instance_filtering_keeps_fields_aligned() -> None:
    h, w = 100, 100
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 90, size=(40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 10, size=(40, 2))], axis=1).tolist()
    inst = _instances(boxes, h, w)
    transform = TrainTransform(size=40, scale_range=(1.5, 2.0), quantize=())
    dropped = 0
    for seed in range(10):
        _, out = transform(_column_image(h, w), {INSTANCES: inst, "image_id": 7}, _gen(seed))
        got, g = out[INSTANCES], out[GEOMETRY]
        assert out["image_id"] == 7
        labels = got.fields["labels"]
        dropped += len(inst) - len(got)
        assert got.fields["names"] == [f"obj{i}" for i in labels.tolist()]
        assert got.fields["ids"] == tuple(100 + i for i in labels.tolist())
        np.testing.assert_array_equal(
            got.fields["embeddings"], inst.fields["embeddings"][labels.numpy()]
        )
        expected = g.boxes_to_output(inst.boxes_xyxy_px[labels])
        expected = torch.minimum(expected.clamp(min=0), torch.tensor([40.0, 40, 40, 40]))
        torch.testing.assert_close(got.boxes_xyxy_px, expected)
        assert got.masks is not None and got.masks.shape == (len(got), 40, 40)
        assert got.is_alp is not None and got.is_alp.shape == (len(got),)
    assert dropped > 0


def test_deterministic_under_a_seed() -> None:
    h, w = 50, 70
    inst = _instances([[5, 5, 30, 40], [20, 10, 60, 45]], h, w, alp=[True, False])
    target = {INSTANCES: inst, TRACES: torch.tensor([[3.0, 4.0], [60.0, 40.0]])}
    transform = TrainTransform(size=64)
    image = torch.rand(3, h, w, generator=_gen(99))
    runs = [transform(image, target, _gen(seed)) for seed in (5, 5, 6)]
    (img_a, out_a), (img_b, out_b), (_, out_c) = runs
    assert torch.equal(img_a, img_b)
    assert out_a[GEOMETRY] == out_b[GEOMETRY]
    assert torch.equal(out_a[INSTANCES].boxes_xyxy_px, out_b[INSTANCES].boxes_xyxy_px)
    assert torch.equal(out_a[INSTANCES].masks, out_b[INSTANCES].masks)
    assert torch.equal(out_a[TRACES], out_b[TRACES])
    assert out_a[GEOMETRY] != out_c[GEOMETRY]
    # DataLoader workers pickle what they return.
    again = pickle.loads(pickle.dumps(out_a))
    assert again[GEOMETRY] == out_a[GEOMETRY]
    assert again[INSTANCES].fields["names"] == out_a[INSTANCES].fields["names"]
    assert torch.equal(again[INSTANCES].masks, out_a[INSTANCES].masks)
    assert pickle.loads(pickle.dumps(transform)) == transform
    # The input target is left as it was.
    assert target[INSTANCES] is inst and GEOMETRY not in target


@pytest.mark.parametrize("q", [8, 16, 32])
def test_quantization_only_on_alps(q: int) -> None:
    h, w = 100, 150
    boxes = [[12.3, 17.1, 40.7, 63.2], [50.5, 20.2, 90.9, 80.8], [3.3, 4.4, 140.1, 95.5]]
    inst = _instances(boxes, h, w, alp=[True, False, True])
    size = 128
    cell = quantization_cell_px(image_width=size, image_height=size, q=q)
    plain = TrainTransform(size=size, quantize=())
    quantized = TrainTransform(size=size, quantize=(q,))
    for seed in range(20):
        _, before = plain(_column_image(h, w), {INSTANCES: inst}, _gen(seed))
        _, after = quantized(_column_image(h, w), {INSTANCES: inst}, _gen(seed))
        # Quantization draws after the geometry: the same seed gives the same geometry.
        assert before[GEOMETRY] == after[GEOMETRY]
        b0, b1 = before[INSTANCES], after[INSTANCES]
        assert b0.fields["labels"].tolist() == b1.fields["labels"].tolist()
        alp = b1.alp()
        # Non-ALP boxes untouched; ALP boxes contain their pre-quantization box ...
        assert torch.equal(b0.boxes_xyxy_px[~alp], b1.boxes_xyxy_px[~alp])
        pre, post = b0.boxes_xyxy_px[alp], b1.boxes_xyxy_px[alp]
        assert torch.all(post[:, :2] <= pre[:, :2]) and torch.all(post[:, 2:] >= pre[:, 2:])
        # ... lie inside the image pixels of the output ...
        ch, cw = before[GEOMETRY].content_hw
        assert torch.all(post >= 0)
        assert torch.all(post[:, 0::2] <= cw) and torch.all(post[:, 1::2] <= ch)
        # ... and every edge is on the grid or on the border of the image pixels.
        for edge, border in ((post[:, :2], 0.0), (post[:, 2], cw), (post[:, 3], ch)):
            on_grid = torch.isclose(edge / cell, torch.round(edge / cell), atol=1e-4)
            assert torch.all(on_grid | (edge == border)), (seed, edge)


def test_quantization_reads_source_when_is_alp_is_absent() -> None:
    boxes = torch.tensor([[10.3, 10.3, 20.7, 20.7], [10.3, 10.3, 20.7, 20.7]])
    inst = Instances(boxes, fields={"source": ["coco", "alp"]})
    transform = TrainTransform(size=64, scale_range=(1.0, 1.0), flip_prob=0.0, quantize=(32,))
    # A 64 x 64 image at factor 1 keeps its pixels: cell = 32 * 64 / 256 = 8.
    _, out = transform(torch.zeros(3, 64, 64), {INSTANCES: inst}, _gen(0))
    torch.testing.assert_close(
        out[INSTANCES].boxes_xyxy_px, torch.tensor([[10.3, 10.3, 20.7, 20.7], [8, 8, 24, 24]])
    )


def test_traces_transform_like_boxes() -> None:
    h, w = 60, 80
    inst = _instances([[10, 12, 50, 40]], h, w)
    traces = torch.tensor([[10.0, 12.0], [50.0, 40.0], [30.0, 25.0], [-5.0, 65.0]])
    transform = TrainTransform(size=64, quantize=())
    for seed in range(10):
        _, out = transform(_column_image(h, w), {INSTANCES: inst, TRACES: traces}, _gen(seed))
        g = out[GEOMETRY]
        torch.testing.assert_close(out[TRACES], g.points_to_output(traces))
        corners = g.boxes_to_output(inst.boxes_xyxy_px)[0]
        xs, ys = out[TRACES][:2, 0], out[TRACES][:2, 1]
        torch.testing.assert_close(torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]), corners)


@pytest.mark.parametrize("with_masks", [True, False])
def test_images_without_instances_pass_through(with_masks: bool) -> None:
    empty = Instances.empty(image_hw=(30, 40) if with_masks else None)
    transform = TrainTransform(size=32)
    image, out = transform(torch.rand(3, 30, 40), {INSTANCES: empty}, _gen(1))
    assert image.shape == (3, 32, 32)
    got = out[INSTANCES]
    assert len(got) == 0 and got.boxes_xyxy_px.shape == (0, 4)
    if with_masks:
        assert got.masks is not None and got.masks.shape == (0, 32, 32)
    else:
        assert got.masks is None


def test_eval_transform_records_the_scale() -> None:
    image = _column_image(100, 200)
    inst = _instances([[20, 10, 60, 90]], 100, 200)
    image_out, out = EvalTransform(size=400)(image, {INSTANCES: inst})
    g = out[GEOMETRY]
    assert image_out.shape == (3, 400, 400)
    assert g.resized_hw == (200, 400) and g.scale_xy == (2.0, 2.0)
    assert torch.all(image_out[:, 200:] == 0)
    torch.testing.assert_close(out[INSTANCES].boxes_xyxy_px, torch.tensor([[40.0, 20, 120, 180]]))
    # Predictions in the output map back onto the original image.
    torch.testing.assert_close(g.boxes_to_input(out[INSTANCES].boxes_xyxy_px), inst.boxes_xyxy_px)
    torch.testing.assert_close(
        g.boxes_to_input(torch.tensor([[-5.0, 150, 420, 390]])), torch.tensor([[0.0, 75, 200, 100]])
    )
    assert torch.equal(g.masks_to_input(out[INSTANCES].masks), inst.masks)
    probs = g.masks_to_input(out[INSTANCES].masks.float())
    assert probs.shape == (1, 100, 200)
    # Bilinear (antialiased) shrinking blurs the edges; thresholding gives the mask back.
    assert torch.equal(probs > 0.5, inst.masks)
    # Without a target the image is still transformed.
    image_only, only = EvalTransform(size=50)(image)
    assert image_only.shape == (3, 50, 50) and only[GEOMETRY].resized_hw == (25, 50)


def test_boxes_to_input_inverts_a_flipped_crop() -> None:
    g = Geometry((50, 80), (75, 120), crop_xy=(17, 9), output_hw=(64, 64), flipped=True)
    boxes = torch.tensor([[10.0, 5.0, 30.0, 20.0], [40.0, 30.0, 60.0, 45.0]])
    torch.testing.assert_close(g.boxes_to_input(g.boxes_to_output(boxes)), boxes)
    with pytest.raises(ValueError, match="whole resized image"):
        g.masks_to_input(torch.zeros(1, 64, 64, dtype=torch.bool))


def test_errors_name_what_is_wrong() -> None:
    boxes = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"fields\['labels'\] must be .* length 2"):
        Instances(boxes, fields={"labels": torch.arange(3)})
    with pytest.raises(ValueError, match="floating point"):
        Instances(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"masks must be a \(2, H, W\)"):
        Instances(boxes, masks=torch.zeros(3, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_alp"):
        Instances(boxes, is_alp=torch.ones(2))
    with pytest.raises(ValueError, match="quantize"):
        TrainTransform(quantize=(None, 4))
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform(scale_range=(0.0, 2.0))
    transform = TrainTransform(size=16)
    with pytest.raises(ValueError, match="'instances'"):
        transform(torch.zeros(3, 8, 8), {}, _gen(0))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        transform(torch.zeros(8, 8), {INSTANCES: Instances.empty()}, _gen(0))
    inst = Instances(boxes, masks=torch.zeros(2, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks are"):
        transform(torch.zeros(3, 8, 8), {INSTANCES: inst}, _gen(0))
    _, out = transform(torch.zeros(3, 8, 8), {INSTANCES: Instances.empty()}, _gen(0))
    with pytest.raises(ValueError, match="already has 'geometry'"):
        transform(torch.zeros(3, 16, 16), out, _gen(0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        transform.size = 8  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# Properties.


@st.composite
def _samples(draw: st.DrawFn) -> tuple[torch.Tensor, Instances, int, int]:
    h = draw(st.integers(1, 60))
    w = draw(st.integers(1, 60))
    n = draw(st.integers(0, 6))
    boxes = []
    for _ in range(n):
        x0, x1 = sorted(draw(st.integers(0, w)) for _ in range(2))
        y0, y1 = sorted(draw(st.integers(0, h)) for _ in range(2))
        boxes.append([x0, y0, x1, y1])
    alp = [draw(st.booleans()) for _ in range(n)]
    inst = _instances(boxes, h, w, alp=alp)
    size = draw(st.integers(4, 48))
    seed = draw(st.integers(0, 2**31 - 1))
    return torch.rand(3, h, w), inst, size, seed


@settings(max_examples=150, deadline=None)
@given(_samples(), st.sampled_from([(0.5, 2.0), (0.1, 0.3), (1.0, 4.0)]))
def test_geometry_stays_inside_the_output(sample, scale_range) -> None:
    image, inst, size, seed = sample
    transform = TrainTransform(size=size, scale_range=scale_range)
    out_image, out = transform(image, {INSTANCES: inst}, _gen(seed))
    got, g = out[INSTANCES], out[GEOMETRY]
    assert out_image.shape == (3, size, size)
    b = got.boxes_xyxy_px
    assert b.shape == (len(got), 4)
    assert torch.all(b >= 0) and torch.all(b <= size)
    assert torch.all(b[:, 2] - b[:, 0] > 0) and torch.all(b[:, 3] - b[:, 1] > 0)
    ch, cw = g.content_hw
    assert torch.all(b[:, 0::2] <= cw) and torch.all(b[:, 1::2] <= ch)
    assert got.masks is not None and got.masks.shape == (len(got), size, size)
    # Masks live in the image pixels of the output, never in the padding ...
    assert not got.masks[:, ch:].any() and not got.masks[:, :, cw:].any()
    # ... and agree with their (unquantized) boxes.
    check = got.masks.flatten(1).any(1) & ~got.is_alp
    if check.any():
        assert (_mask_boxes(got.masks[check]) - b[check]).abs().max() <= 0.5 + 1e-4
    labels = got.fields["labels"].tolist()
    assert labels == sorted(labels)
    assert got.fields["names"] == [f"obj{i}" for i in labels]
    assert got.is_alp is not None
    assert got.is_alp.tolist() == [bool(inst.is_alp[i]) for i in labels]


@settings(max_examples=100, deadline=None)
@given(_samples())
def test_eval_transform_round_trips_boxes(sample) -> None:
    image, inst, size, _ = sample
    out_image, out = EvalTransform(size=size)(image, {INSTANCES: inst})
    g = out[GEOMETRY]
    assert out_image.shape == (3, size, size) and max(g.resized_hw) == size
    got = out[INSTANCES]
    assert len(got) == len(inst)
    assert torch.all(got.boxes_xyxy_px >= 0) and torch.all(got.boxes_xyxy_px <= size)
    torch.testing.assert_close(
        g.boxes_to_input(got.boxes_xyxy_px), inst.boxes_xyxy_px, atol=1e-3, rtol=1e-5
    )


def _resize_then_cut(image: torch.Tensor, g: Geometry) -> torch.Tensor:
    """Reference: resize the whole (flipped) image, then cut the window (whole-pixel crops)."""
    flipped = image.flip(-1) if g.flipped else image
    shrink = g.resized_hw[0] < g.input_hw[0]
    full = torch.nn.functional.interpolate(
        flipped[None].float(), size=g.resized_hw, mode="bilinear", align_corners=False,
        antialias=shrink,
    )[0]
    cx, cy = (int(c) for c in g.crop_xy)
    h, w = g.content_hw
    return full[:, cy : cy + h, cx : cx + w]


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize(
    ("resized_hw", "crop_xy", "border"),
    [((80, 120), (10, 6), 1), ((40, 80), (8, 4), 3)],  # 2x (input offsets 5, 3); 0.8x (10, 5)
)
def test_window_resampling_matches_resizing_the_whole_image(
    flipped: bool, resized_hw: tuple[int, int], crop_xy: tuple[int, int], border: int
) -> None:
    # Crops on whole input pixels take the window-only path; away from the window's first rows
    # and columns (which clamp to the source region) it equals resize-then-cut.
    image = torch.rand(3, 50, 100, generator=torch.Generator().manual_seed(0)) * 255
    g = Geometry((50, 100), resized_hw, crop_xy=crop_xy, output_hw=(32, 32), flipped=flipped)
    out_image, _ = apply_geometry(image, None, g)
    expected = _resize_then_cut(image, g)
    torch.testing.assert_close(
        out_image[:, border:, border:], expected[:, border:, border:], atol=1e-3, rtol=0
    )


def test_lsj_window_starts_on_an_input_pixel_and_stays_aligned() -> None:
    # A fractional crop (input offset * scale): the image, the masks and the boxes still agree.
    transform = TrainTransform(size=64, scale_range=(1.7, 1.7), flip_prob=0.5, quantize=())
    image = torch.zeros(3, 90, 120, dtype=torch.uint8)
    image[:, 30:60, 40:80] = 255
    inst = _instances([[40, 30, 80, 60]], 90, 120)
    for seed in range(6):
        out_image, out = transform(image, {INSTANCES: inst}, _gen(seed))
        g = out[GEOMETRY]
        sx, sy = g.scale_xy
        assert g.content_hw == (64, 64)
        assert abs(g.crop_xy[0] / sx - round(g.crop_xy[0] / sx)) < 1e-6
        assert abs(g.crop_xy[1] / sy - round(g.crop_xy[1] / sy)) < 1e-6
        got = out[INSTANCES]
        if len(got) == 0:
            continue
        x0, y0, x1, y1 = got.boxes_xyxy_px[0].tolist()
        ys, xs = torch.nonzero(got.masks[0], as_tuple=True)
        assert abs(xs.min().item() - x0) <= 1 and abs(xs.max().item() + 1 - x1) <= 1
        assert abs(ys.min().item() - y0) <= 1 and abs(ys.max().item() + 1 - y1) <= 1
        bright = out_image[0] > 127
        assert (bright ^ got.masks[0]).float().mean() < 0.02


def test_geometry_with_a_crop_off_both_pixel_grids_is_refused() -> None:
    g = Geometry((50, 100), (75, 150), crop_xy=(10.25, 0), output_hw=(32, 32))
    with pytest.raises(ValueError, match="crop_xy"):
        apply_geometry(torch.zeros(3, 50, 100), None, g)
