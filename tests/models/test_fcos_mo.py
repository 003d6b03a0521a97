"""FCOS-MO: hand-checked matching, targets and classifier loss; training and inference contracts."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from models.heads.fcos_targets import (
    centerness_targets,
    decode_boxes,
    fcos_match,
    level_ranges,
    locations,
    regression_targets,
)
from models.heads.open_vocab import contrastive_logits, contrastive_loss
from models.meta_arch.fcos_mo import FCOSMO

TEXT_DIM = 16
STEPS = 80  # overfitting test
LOSS_KEYS = {"loss_cls", "loss_box", "loss_centerness", "loss_mask"}
OUTPUT_KEYS = {"boxes_xyxy_px", "scores", "labels", "masks"}


def _tiny(**kwargs: object) -> FCOSMO:
    torch.manual_seed(0)
    options = {
        "backbone": "resnet_small",
        "fpn_channels": 32,
        "text_dim": TEXT_DIM,
        "mask_channels": 8,
        **kwargs,
    }
    return FCOSMO(**options)


def _target(
    boxes: list[list[float]], *, alp: bool, size: int = 128, phrase_ids: list[int] | None = None
) -> dict:
    """A target dict as the datasets give it: ALPs have masks None, COCO rectangle masks."""
    box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    masks = None
    if not alp:
        masks = torch.zeros(n, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(box_tensor.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
    ids = phrase_ids if phrase_ids is not None else list(range(n))
    generator = torch.Generator().manual_seed(sum(ids) + n)
    return {
        "boxes_xyxy_px": box_tensor,
        "masks": masks,
        "has_mask": torch.full((n,), not alp),
        "is_alp": torch.full((n,), alp),
        "phrase_ids": torch.tensor(ids, dtype=torch.int64),
        "text_embeddings": torch.randn(n, TEXT_DIM, generator=generator) if n else None,
    }


def _images(batch: int, size: int = 128) -> torch.Tensor:
    return torch.randint(
        0,
        256,
        (batch, 3, size, size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(batch),
    )


# ---------------------------------------------------------------------------------------------
# Locations and matching, by hand


def _grid(
    strides: tuple[int, ...], sizes: list[tuple[int, int]], ranges: list[tuple[float, float]]
) -> tuple[torch.Tensor, ...]:
    return locations(sizes, strides, ranges)


def test_locations_are_cell_centres_row_major() -> None:
    points, strides, ranges = locations([(2, 2), (1, 1)], (8, 16), [(0, 64), (64, math.inf)])
    assert points.tolist() == [[4, 4], [12, 4], [4, 12], [12, 12], [8, 8]]
    assert strides.tolist() == [8, 8, 8, 8, 16]
    assert ranges[-1].tolist() == [64, math.inf]


def test_level_ranges_from_boundaries() -> None:
    assert level_ranges((64, 128, 256, 512)) == [
        (0, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, math.inf),
    ]
    with pytest.raises(ValueError, match="size_ranges"):
        level_ranges((64, 32))


def test_match_centre_region_on_a_4x4_grid() -> None:
    # Stride 8, 4x4 locations at 4, 12, 20, 28. Box (0, 0, 32, 32): centre 16, radius 1.5 * 8 =
    # 12 -> region (4, 28), strict: only the 2x2 centre locations (12 and 20) are inside.
    points, strides, ranges = _grid((8,), [(4, 4)], [(0, 64)])
    match = fcos_match(points, strides, ranges, torch.tensor([[0.0, 0.0, 32.0, 32.0]]), 1.5)
    assert match.view(4, 4).tolist() == [
        [-1, -1, -1, -1],
        [-1, 0, 0, -1],
        [-1, 0, 0, -1],
        [-1, -1, -1, -1],
    ]
    # Radius 0.5: region (12, 20), strict, so no location at all; 0.6 takes the centre four.
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    assert (fcos_match(points, strides, ranges, box, 0.5) == -1).all()
    assert (fcos_match(points, strides, ranges, box, 0.6) == 0).sum() == 4
    # The centre region is clipped to the box: a thin box only reaches the locations inside it.
    thin = torch.tensor([[10.0, 0.0, 14.0, 32.0]])
    assert (fcos_match(points, strides, ranges, thin, 1.5).view(4, 4) == 0).nonzero().tolist() == [
        [1, 1],
        [2, 1],
    ]


def test_match_ties_go_to_the_smaller_box() -> None:
    points, strides, ranges = _grid((8,), [(4, 4)], [(0, 64)])
    big, small = [0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 24.0, 24.0]
    match = fcos_match(points, strides, ranges, torch.tensor([big, small]), 1.5).view(4, 4)
    assert match[1:3, 1:3].tolist() == [[1, 1], [1, 1]]
    match = fcos_match(points, strides, ranges, torch.tensor([small, big]), 1.5).view(4, 4)
    assert match[1:3, 1:3].tolist() == [[0, 0], [0, 0]]
    # Equal areas: the first box.
    match = fcos_match(points, strides, ranges, torch.tensor([big, big]), 1.5)
    assert set(match.tolist()) == {-1, 0}


def test_match_respects_level_ranges() -> None:
    # Two levels: stride 8 (4x4) for max(l, t, r, b) in (0, 16], stride 16 (2x2) above 16.
    points, strides, ranges = _grid((8, 16), [(4, 4), (2, 2)], [(0, 16), (16, math.inf)])
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    match = fcos_match(points, strides, ranges, box, 1.5)
    # P3 centre locations see max side 20 > 16: out of range; all 4 P4 locations (8, 24) are
    # inside the region (radius 24, clipped to the box) with max side 24.
    assert match[:16].tolist() == [-1] * 16
    assert match[16:].tolist() == [0, 0, 0, 0]
    # A 16-px box fits (0, 16] on P3 (max side 8 at the centre) and nothing on P4.
    small = torch.tensor([[8.0, 8.0, 24.0, 24.0]])
    match = fcos_match(points, strides, ranges, small, 1.5)
    assert (match[:16] == 0).sum() == 4 and (match[16:] == -1).all()


def test_match_without_boxes() -> None:
    points, strides, ranges = _grid((8,), [(4, 4)], [(0, 64)])
    assert fcos_match(points, strides, ranges, torch.zeros(0, 4)).tolist() == [-1] * 16


def test_regression_and_centerness_targets() -> None:
    ltrb = regression_targets(torch.tensor([[12.0, 12.0]]), torch.tensor([[0.0, 4.0, 32.0, 32.0]]))
    assert ltrb.tolist() == [[12.0, 8.0, 20.0, 20.0]]
    targets = centerness_targets(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]]))
    # sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)): 1 and sqrt(1/3 * 2/4).
    torch.testing.assert_close(targets, torch.tensor([1.0, math.sqrt(1 / 6)]))
    boxes = decode_boxes(torch.tensor([[12.0, 12.0]]), ltrb)
    assert boxes.tolist() == [[0.0, 4.0, 32.0, 32.0]]


def test_contrastive_loss_by_hand() -> None:
    # Candidates a = (1, 0), b = (0, 1); tau = 0.5. Location 1 = (3, 0): cos (1, 0) -> logits
    # (0, 2, 0), target a. Location 2 = (1, 1): cos (0.707, 0.707) -> logits (0, 1.414, 1.414),
    # background, weighted by alpha = 0.1.
    features = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    phrases = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    logits = contrastive_logits(features, phrases, tau=0.5)
    root2 = math.sqrt(2.0)
    torch.testing.assert_close(logits, torch.tensor([[0.0, 2.0, 0.0], [0.0, root2, root2]]))
    loss = contrastive_loss(logits, torch.tensor([1, 0]), background_alpha=0.1)
    expected = [math.log(2 + math.e**2) - 2, 0.1 * math.log(1 + 2 * math.exp(root2))]
    torch.testing.assert_close(loss, torch.tensor(expected))


# ---------------------------------------------------------------------------------------------
# Training


def test_training_without_instances(checked_step: Callable[..., dict]) -> None:
    model = _tiny()
    losses = checked_step(
        model, _images(2), [_target([], alp=False), _target([], alp=True)], LOSS_KEYS
    )
    assert losses["loss_box"] == 0 and losses["loss_mask"] == 0 and losses["loss_centerness"] == 0
    # Only the background candidate: a 1-way softmax, nothing to learn, yet still in the graph.
    assert losses["loss_cls"] == 0


def test_training_with_only_alps(checked_step: Callable[..., dict]) -> None:
    model = _tiny()
    targets = [
        _target([[10, 10, 70, 90]], alp=True, phrase_ids=[11]),
        _target([[30, 20, 60, 50], [0, 64, 128, 128]], alp=True, phrase_ids=[11, 12]),
    ]
    losses = checked_step(model, _images(2), targets, LOSS_KEYS)
    assert losses["loss_box"] == 0  # no box regression for ALPs (paper Sec. 3.3)
    assert losses["loss_mask"] == 0  # no masks
    assert losses["loss_centerness"] > 0


def test_training_with_coco_masks_and_mixed_batch(checked_step: Callable[..., dict]) -> None:
    model = _tiny()
    coco = _target([[16, 16, 80, 96], [64, 8, 120, 40]], alp=False, phrase_ids=[3, 4])
    losses = checked_step(model, _images(1), [coco], LOSS_KEYS)
    assert losses["loss_box"] > 0 and losses["loss_mask"] > 0
    # masks None for one image and a tensor for another, in one batch.
    alp = _target([[20, 20, 100, 100]], alp=True, phrase_ids=[3])
    box_only = _target([[40, 40, 90, 90]], alp=False, phrase_ids=[9])
    box_only["has_mask"][:] = False
    losses = checked_step(model, _images(3), [alp, coco, box_only], LOSS_KEYS)
    assert losses["loss_mask"] > 0


def test_loss_cls_counts_positives_and_background() -> None:
    # tau = 1 with a zero-initialised projection: every logit is 0, so each location's
    # -log p is log(1 + U); positives weigh 1, background alpha, divided by the positive count.
    model = _tiny(tau=1.0)
    nn.init.zeros_(model.head.classifier.projection.weight)
    nn.init.zeros_(model.head.classifier.projection.bias)
    target = _target([[16, 16, 80, 96]], alp=False, phrase_ids=[7])
    model.train()
    losses = model(_images(1), [target])
    points, strides, ranges = locations(
        [(128 // s, 128 // s) for s in model.strides], model.strides, model.ranges
    )
    positives = int((fcos_match(points, strides, ranges, target["boxes_xyxy_px"]) >= 0).sum())
    background = points.shape[0] - positives
    expected = math.log(2) * (positives + 0.1 * background) / positives
    torch.testing.assert_close(losses["loss_cls"].item(), expected, rtol=1e-5, atol=1e-5)


def test_head_norm_bn_keeps_batch_norms_per_level(checked_step: Callable[..., dict]) -> None:
    model = _tiny(head_norm="BN")
    per_level = model.head.cls_norms
    assert len(per_level) == 5 and all(isinstance(n, nn.BatchNorm2d) for n in per_level[0])
    assert per_level[0][0] is not per_level[1][0]
    checked_step(
        model, _images(2), [_target([[8, 8, 60, 60]], alp=False), _target([], alp=True)], LOSS_KEYS
    )
    _eval_and_check(model, _images(2))


def test_head_norm_none_and_conv4_mask_head(checked_step: Callable[..., dict]) -> None:
    model = _tiny(head_norm="none", mask_head="conv4")
    checked_step(model, _images(1), [_target([[8, 8, 60, 60]], alp=False)], LOSS_KEYS)
    _eval_and_check(model, _images(1))


def test_without_centerness(checked_step: Callable[..., dict]) -> None:
    model = _tiny(use_centerness=False)
    assert model.head.centerness is None
    losses = checked_step(model, _images(1), [_target([[8, 8, 60, 60]], alp=False)], LOSS_KEYS)
    assert losses["loss_centerness"] == 0
    outputs = _eval_and_check(model, _images(1))
    assert (outputs[0]["scores"] <= 1).all()


def test_target_errors_name_the_image_and_field() -> None:
    model = _tiny().train()
    bad = _target([[8, 8, 60, 60]], alp=True)
    bad["text_embeddings"] = None
    with pytest.raises(ValueError, match=r"targets\[1\]\['text_embeddings'\]"):
        model(_images(2), [_target([], alp=True), bad])
    wrong_dim = _target([[8, 8, 60, 60]], alp=True)
    wrong_dim["text_embeddings"] = torch.zeros(1, TEXT_DIM + 1)
    with pytest.raises(ValueError, match="text_dim"):
        model(_images(1), [wrong_dim])
    with pytest.raises(ValueError, match="targets"):
        model(_images(1))


# ---------------------------------------------------------------------------------------------
# Inference


def _eval_and_check(model: FCOSMO, images: torch.Tensor, classes: int = 3) -> list[dict]:
    model.eval()
    outputs = model(images, class_embeddings=torch.randn(classes, TEXT_DIM))
    height, width = images.shape[-2:]
    assert isinstance(outputs, list) and len(outputs) == images.shape[0]
    for out in outputs:
        assert set(out) == OUTPUT_KEYS
        k = out["scores"].shape[0]
        assert k <= model.detections_per_image
        assert out["boxes_xyxy_px"].shape == (k, 4) and out["boxes_xyxy_px"].dtype == torch.float32
        assert out["scores"].dtype == torch.float32
        assert out["labels"].shape == (k,) and out["labels"].dtype == torch.int64
        assert out["masks"].shape == (k, 1, height, width)
        assert out["masks"].dtype == torch.float32
        if k:
            assert out["labels"].min() >= 0 and out["labels"].max() < classes
            assert (out["scores"][:-1] >= out["scores"][1:]).all()
            assert (out["scores"] > model.score_threshold).all()
            assert out["boxes_xyxy_px"][:, 0::2].max() <= width
            assert out["boxes_xyxy_px"][:, 1::2].max() <= height
            assert out["masks"].min() >= 0 and out["masks"].max() <= 1
    return outputs


def test_eval_outputs() -> None:
    model = _tiny(detections_per_image=20)
    outputs = _eval_and_check(model, _images(2))
    assert all(len(o["scores"]) == 20 for o in outputs)  # random weights: plenty above 0.05


def test_eval_with_no_detections() -> None:
    model = _tiny(score_threshold=1.0)
    outputs = _eval_and_check(model, _images(2))
    assert all(o["scores"].numel() == 0 for o in outputs)
    assert outputs[0]["masks"].shape == (0, 1, 128, 128)
    no_classes = _tiny().eval()(_images(1), class_embeddings=torch.zeros(0, TEXT_DIM))[0]
    assert no_classes["boxes_xyxy_px"].shape == (0, 4) and no_classes["labels"].dtype == torch.int64


def test_eval_pads_odd_sizes_and_reports_the_input_size() -> None:
    model = _tiny(detections_per_image=5)
    outputs = _eval_and_check(model, _images(1, size=96))
    assert outputs[0]["masks"].shape[-2:] == (96, 96)


def test_eval_needs_class_embeddings() -> None:
    model = _tiny().eval()
    with pytest.raises(ValueError, match="class_embeddings"):
        model(_images(1))
    with pytest.raises(ValueError, match="class_embeddings"):
        model(_images(1), class_embeddings=torch.zeros(2, TEXT_DIM + 1))


# ---------------------------------------------------------------------------------------------
# Learning


@pytest.mark.slow
def test_overfits_one_image(overfit_one_image: Callable[..., None]) -> None:
    def target(boxes: list[list[float]], phrase_ids: list[int]) -> dict:
        return _target(boxes, alp=False, phrase_ids=phrase_ids)

    overfit_one_image(_tiny(), target, STEPS)


# ---------------------------------------------------------------------------------------------
# The foreground accuracy (a diagnostic, no loss)


def test_foreground_accuracy_by_hand() -> None:
    from models.heads.diagnostics import foreground_accuracy

    logits = torch.tensor(
        [[5.0, 0.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 3.0], [4.0, 1.0, 0.0], [0.0, 2.0, 1.0]],
        requires_grad=True,
    )  # (N = 5, 1 + C): background first
    labels = torch.tensor([0, 1, 1, 2, 1])  # rows 1 and 4 right, row 2 wrong, row 3 background
    out = foreground_accuracy(logits, labels)
    assert out["fg_positives"].item() == 4
    assert out["fg_accuracy"].item() == pytest.approx(2 / 4)
    assert not out["fg_accuracy"].requires_grad
    none = foreground_accuracy(logits, torch.zeros(5, dtype=torch.long))
    assert (none["fg_accuracy"].item(), none["fg_positives"].item()) == (0.0, 0.0)


def test_training_reports_the_foreground_accuracy_of_the_positive_locations() -> None:
    model = _tiny()
    model.train()
    coco = _target([[16, 16, 80, 96], [64, 8, 120, 40]], alp=False, phrase_ids=[3, 4])
    losses = model(_images(1), [coco])
    assert set(losses) == LOSS_KEYS  # the diagnostics are no loss: not among the items
    points, strides, ranges = locations(
        [(128 // s, 128 // s) for s in model.strides], model.strides, model.ranges
    )
    positives = int((fcos_match(points, strides, ranges, coco["boxes_xyxy_px"]) >= 0).sum())
    assert losses.diagnostics["fg_positives"].item() == positives > 0
    assert 0.0 <= losses.diagnostics["fg_accuracy"].item() <= 1.0
    # A projection of zeros: every logit is 0 and argmax picks the background, never a class.
    nn.init.zeros_(model.head.classifier.projection.weight)
    nn.init.zeros_(model.head.classifier.projection.bias)
    assert model(_images(1), [coco]).diagnostics["fg_accuracy"].item() == 0.0
