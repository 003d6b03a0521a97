"""Mask R-CNN*: the training contracts of each supervision setting, hand-checked losses of the
second stage and the image labels, the RPN on unannotated images, inference, and overfitting."""

from __future__ import annotations

import math
from collections.abc import Callable

import alp_curation.torchvision_fix  # noqa: F401  (before any torchvision import)

import pytest
import torch
from torch import nn

from models.meta_arch.mask_rcnn_star import MaskRCNNStar
from models.targets import gather_targets

TEXT_DIM = 16
LOSS_KEYS = {
    "loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg", "loss_mask",
    "loss_image_labels",
}  # fmt: skip
OUTPUT_KEYS = {"boxes_xyxy_px", "scores", "labels", "masks"}


def _tiny(**kwargs: object) -> MaskRCNNStar:
    torch.manual_seed(0)
    options = {
        "backbone": "resnet_small",
        "fpn_channels": 32,
        "text_dim": TEXT_DIM,
        "mask_channels": 8,
        "box_head_dim": 64,
        **kwargs,
    }
    return MaskRCNNStar(**options)


def _target(
    boxes: list[list[float]],
    *,
    kind: str,
    size: int = 128,
    phrase_ids: list[int] | None = None,
) -> dict:
    """A target as the datasets give it: kind "coco" (rectangle masks), "alp" (boxes, no masks)
    or "labels" (ALPs whose phrases are image labels only)."""
    box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    masks = None
    if kind == "coco":
        masks = torch.zeros(n, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(box_tensor.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
    ids = phrase_ids if phrase_ids is not None else list(range(n))
    generator = torch.Generator().manual_seed(sum(ids) + n)
    return {
        "boxes_xyxy_px": box_tensor,
        "masks": masks,
        "has_mask": torch.full((n,), kind == "coco"),
        "is_alp": torch.full((n,), kind != "coco"),
        "phrase_ids": torch.tensor(ids, dtype=torch.int64),
        "text_embeddings": torch.randn(n, TEXT_DIM, generator=generator) if n else None,
        "image_labels_only": kind == "labels",
    }


def _images(batch: int, size: int = 128) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def _trained(model: nn.Module, prefix: str) -> bool:
    """Whether any parameter under ``prefix`` received a non-zero gradient."""
    return any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.named_parameters()
        if n.startswith(prefix)
    )


# ---------------------------------------------------------------------------------------------
# What each setting trains


def test_an_image_without_instances_trains_only_proposals_and_background(
    checked_step: Callable[..., dict],
) -> None:
    model = _tiny()
    losses = checked_step(model, _images(1), [_target([], kind="coco")], LOSS_KEYS)
    assert losses["loss_objectness"] > 0  # every anchor is a negative
    assert losses["loss_rpn_box_reg"] == 0 and losses["loss_box_reg"] == 0
    assert losses["loss_mask"] == 0 and losses["loss_image_labels"] == 0
    # Only the background candidate: a 1-way softmax, nothing to learn, yet still in the graph.
    assert losses["loss_cls"] == 0
    assert _trained(model, "rpn.") and not _trained(model, "mask_head.")


def test_coco_masks_train_every_part_but_the_image_labels(
    checked_step: Callable[..., dict],
) -> None:
    model = _tiny()
    coco = _target([[16, 16, 80, 96], [64, 8, 120, 40]], kind="coco", phrase_ids=[3, 4])
    losses = checked_step(model, _images(1), [coco], LOSS_KEYS)
    for name in ("loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg", "loss_mask"):
        assert losses[name] > 0, name
    assert losses["loss_image_labels"] == 0
    for part in ("backbone.", "rpn.", "roi_heads.box_features.", "roi_heads.box_deltas.",
                 "roi_heads.classifier.", "mask_head."):  # fmt: skip
        assert _trained(model, part), part


def test_alp_boxes_train_proposals_regression_and_classifier_but_no_mask(
    checked_step: Callable[..., dict],
) -> None:
    model = _tiny()
    targets = [
        _target([[10, 10, 70, 90]], kind="alp", phrase_ids=[11]),
        _target([[30, 20, 60, 50], [0, 64, 128, 128]], kind="alp", phrase_ids=[11, 12]),
    ]
    losses = checked_step(model, _images(2), targets, LOSS_KEYS)
    # Unlike FCOS-MO, ALP boxes train box regression (paper Sec. 4, "Mask R-CNN* with ALPs").
    assert losses["loss_box_reg"] > 0 and losses["loss_rpn_box_reg"] > 0
    assert losses["loss_cls"] > 0
    assert losses["loss_mask"] == 0 and losses["loss_image_labels"] == 0
    assert _trained(model, "roi_heads.box_deltas.") and not _trained(model, "mask_head.")


def test_image_labels_train_only_the_classifier_path(checked_step: Callable[..., dict]) -> None:
    model = _tiny()
    targets = [
        _target([[10, 10, 70, 90]], kind="labels", phrase_ids=[11]),
        _target([[30, 20, 60, 50], [0, 64, 128, 128]], kind="labels", phrase_ids=[11, 12]),
    ]
    losses = checked_step(model, _images(2), targets, LOSS_KEYS)
    assert losses["loss_image_labels"] > 0
    for name in ("loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg", "loss_mask"):
        assert losses[name] == 0, name  # no anchor, RoI or mask is supervised
    assert _trained(model, "roi_heads.classifier.") and _trained(model, "roi_heads.box_features.")
    assert _trained(model, "backbone.")
    for part in ("rpn.", "roi_heads.box_deltas.", "mask_head."):
        assert not _trained(model, part), part


def test_an_unannotated_image_beside_an_annotated_one_adds_no_negatives() -> None:
    # The RPN ignores the anchors of an image whose boxes are not annotated: its objectness
    # loss is the annotated image's alone (same anchors sampled, same seed).
    model = _tiny()
    model.train()
    coco = _target([[16, 16, 80, 96]], kind="coco", phrase_ids=[3])
    labels = _target([[10, 10, 70, 90]], kind="labels", phrase_ids=[11])
    images = _images(2)
    features = model.backbone(model.preprocess(images))
    gt = gather_targets([coco, labels], TEXT_DIM, (128, 128))
    assert gt.boxes_annotated == [True, False]
    torch.manual_seed(1)
    _, _, both = model.rpn(model.preprocess(images), (128, 128), features, [gt.boxes, None])
    torch.manual_seed(1)
    alone = model.rpn(
        model.preprocess(images[:1]), (128, 128), [f[:1] for f in features], [gt.boxes]
    )[2]
    torch.testing.assert_close(both["loss_objectness"], alone["loss_objectness"])
    torch.testing.assert_close(both["loss_rpn_box_reg"], alone["loss_rpn_box_reg"])


# ---------------------------------------------------------------------------------------------
# The second stage by hand


def test_roi_sampling_adds_the_ground_truth_and_keeps_the_positive_fraction() -> None:
    model = _tiny(roi_batch_size=64, roi_positive_fraction=0.25)
    coco = _target([[16, 16, 80, 96], [64, 8, 120, 40]], kind="coco", phrase_ids=[3, 4])
    gt = gather_targets([coco, _target([], kind="coco")], TEXT_DIM, (128, 128))
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 100), torch.zeros(0, 4)]
    torch.manual_seed(0)
    samples = model.roi_heads.sample(proposals, gt)
    first = samples.batch == 0
    # The 100 proposals miss both boxes: the positives are the two ground-truth boxes.
    assert sorted(samples.gt_index[first & (samples.gt_index >= 0)].tolist()) == [0, 1]
    # 2 positives (at most a quarter of 64 allowed), so 62 of the 100 background proposals.
    assert int(first.sum()) == 64
    many = [torch.tensor([[16.0, 16.0, 80.0, 96.0]] * 100), torch.zeros(0, 4)]
    crowded = model.roi_heads.sample(many, gt)
    assert int((crowded.gt_index >= 0).sum()) == 64 // 4  # the positive fraction caps them
    # An annotated image without boxes and without proposals samples nothing.
    assert int((samples.batch == 1).sum()) == 0


def test_loss_cls_is_the_mean_over_sampled_rois_with_background_scaled() -> None:
    # tau = 1 and a zero projection: every logit is 0, so each RoI's -log p is log(1 + U);
    # positives weigh 1, background alpha, divided by the number of sampled RoIs.
    model = _tiny(tau=1.0)
    nn.init.zeros_(model.roi_heads.classifier.projection.weight)
    nn.init.zeros_(model.roi_heads.classifier.projection.bias)
    coco = _target([[16, 16, 80, 96], [64, 8, 120, 40]], kind="coco", phrase_ids=[3, 4])
    gt = gather_targets([coco], TEXT_DIM, (128, 128))
    features = model.backbone(model.preprocess(_images(1)))
    proposals = [torch.tensor([[16.0, 16.0, 80.0, 90.0], [0.0, 0.0, 8.0, 8.0]])]
    torch.manual_seed(0)
    samples = model.roi_heads.sample(proposals, gt)
    torch.manual_seed(0)
    losses = model.roi_heads.losses(features, proposals, gt)
    positives = int((samples.gt_index >= 0).sum())
    background = len(samples.gt_index) - positives
    assert positives == 3  # the close proposal and the two ground-truth boxes
    expected = math.log(1 + 2) * (positives + 0.1 * background) / (positives + background)
    torch.testing.assert_close(losses["loss_cls"].item(), expected, rtol=1e-5, atol=1e-5)


def test_image_label_loss_by_hand() -> None:
    # tau = 1, zero projection: all U phrase logits are 0, so the soft-target loss of any
    # target distribution is log U; scaled by lambda.
    model = _tiny(tau=1.0, image_label_weight=0.1)
    nn.init.zeros_(model.roi_heads.classifier.projection.weight)
    nn.init.zeros_(model.roi_heads.classifier.projection.bias)
    targets = [
        _target([[10, 10, 70, 90]], kind="labels", phrase_ids=[11]),
        _target([[0, 0, 5, 5], [1, 1, 9, 9], [2, 2, 4, 4]], kind="labels", phrase_ids=[11, 12, 13]),
    ]
    model.train()
    losses = model(_images(2), targets)
    torch.testing.assert_close(losses["loss_image_labels"].item(), 0.1 * math.log(3))


def test_image_label_loss_uses_the_largest_proposal_and_a_k_hot_target() -> None:
    model = _tiny()
    head = model.roi_heads
    targets = [_target([[0, 0, 5, 5], [1, 1, 9, 9]], kind="labels", phrase_ids=[7, 9])]
    gt = gather_targets(targets, TEXT_DIM, (128, 128))
    features = model.backbone(model.preprocess(_images(1)))
    small, large = [4.0, 4.0, 20.0, 20.0], [0.0, 0.0, 100.0, 90.0]
    proposals = [torch.tensor([small, large, small])]
    loss = head.image_label_loss(features, proposals, gt, (128, 128))
    embedded, _ = head(features, [torch.tensor([large])])  # (1, D)
    logits = head.classifier.logits(embedded, gt.label_embeddings_per_image[0])[:, 1:]  # (1, 2)
    expected = -(0.5 * logits.log_softmax(dim=1)).sum()
    torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------------------------------------
# Inference


def test_inference_returns_torchvision_style_detections() -> None:
    model = _tiny(rpn_post_nms_topk_test=50, detections_per_image=20)
    model.eval()
    classes = torch.nn.functional.normalize(torch.randn(5, TEXT_DIM), dim=1)
    out = model(_images(2), class_embeddings=classes)
    assert len(out) == 2
    for det in out:
        assert set(det) == OUTPUT_KEYS
        k = len(det["scores"])
        assert 0 < k <= 20
        assert det["boxes_xyxy_px"].shape == (k, 4) and det["masks"].shape == (k, 1, 128, 128)
        assert det["labels"].dtype == torch.int64 and int(det["labels"].max()) < 5
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert ((det["scores"] > 0.05) & (det["scores"] <= 1)).all()
        boxes = det["boxes_xyxy_px"]
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 128).all()
    assert model.roi_heads.box_deltas.out_features == 4  # one delta for every class
    none = model(_images(1), class_embeddings=torch.zeros(0, TEXT_DIM))[0]
    assert len(none["scores"]) == 0 and none["masks"].shape == (0, 1, 128, 128)
    with pytest.raises(ValueError, match="class_embeddings"):
        model(_images(1))


def test_scores_are_the_geometric_mean_with_objectness() -> None:
    model = _tiny(score_threshold=0.0, nms_threshold=1.0, detections_per_image=1000)
    model.eval()
    classes = torch.nn.functional.normalize(torch.randn(3, TEXT_DIM), dim=1)
    images = model.preprocess(_images(1))
    with torch.no_grad():
        features = model.backbone(images)
        proposals, objectness, _ = model.rpn(images, (128, 128), features)
        embedded, _ = model.roi_heads(features, proposals)
        probs = model.roi_heads.classifier.logits(embedded, classes).softmax(dim=1)[:, 1:]
        out = model(_images(1), class_embeddings=classes)[0]
    expected = (probs * objectness[0][:, None]).sqrt().flatten().sort(descending=True).values
    got = out["scores"].sort(descending=True).values
    torch.testing.assert_close(got, expected[: len(got)], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Learning


@pytest.mark.slow
def test_overfits_one_image(overfit_one_image: Callable[..., None]) -> None:
    def target(boxes: list[list[float]], phrase_ids: list[int]) -> dict:
        return _target(boxes, kind="coco", phrase_ids=phrase_ids)

    overfit_one_image(_tiny(), target, 80)


def test_training_reports_the_foreground_accuracy_of_the_positive_rois() -> None:
    model = _tiny()
    model.train()
    coco = _target([[16, 16, 80, 96], [64, 8, 120, 40]], kind="coco", phrase_ids=[3, 4])
    losses = model(_images(1), [coco])
    assert set(losses) == LOSS_KEYS  # the diagnostics are no loss
    diagnostics = losses.diagnostics
    assert diagnostics["fg_positives"].item() >= 2  # the ground-truth boxes are RoIs too
    assert 0.0 <= diagnostics["fg_accuracy"].item() <= 1.0
    assert not diagnostics["fg_accuracy"].requires_grad
