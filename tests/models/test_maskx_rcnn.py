"""MaskX R-CNN: the weight transfer function's shapes, the stop-gradient, masks supervised only
for set A, the MLP branch tiled over classes, the frozen parts of stage-wise training,
inference over a fixed class list, and overfitting one image whose second class has a box but
no mask."""

from __future__ import annotations

from collections.abc import Callable

import alp_curation.torchvision_fix  # noqa: F401  (before any torchvision import)

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from alp_curation.phrases import phrase_id
from models.heads.mask import Conv4MaskHead
from models.heads.weight_transfer import MaskXPredictor, WeightTransfer
from models.meta_arch.maskx_rcnn import MaskXRCNN

CLASSES = ("circle", "square", "triangle")
TEXT_DIM = 16
DETECTOR_PARTS = ("backbone.", "rpn.", "roi_heads.")
LOSS_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg", "loss_mask"}


def _tiny(**kwargs: object) -> MaskXRCNN:
    torch.manual_seed(0)
    options = {
        "backbone": "resnet_small",
        "fpn_channels": 32,
        "text_dim": TEXT_DIM,
        "mask_channels": 16,
        "box_head_dim": 32,
        "classes": CLASSES,
        "rpn_post_nms_topk_test": 100,
        **kwargs,
    }
    return MaskXRCNN(**options)


def _target(boxes: list[list[float]], names: list[str], masked: list[bool], size: int = 128):
    """A COCO target as the datasets give it: rectangle masks where ``masked``, box-only
    instances (``has_mask`` False, an all-False mask row) elsewhere."""
    box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(box_tensor.long().tolist()):
        if masked[i]:
            masks[i, y0:y1, x0:x1] = True
    return {
        "boxes_xyxy_px": box_tensor,
        "masks": masks,
        "has_mask": torch.tensor(masked, dtype=torch.bool),
        "phrase_ids": torch.tensor([phrase_id(c) for c in names], dtype=torch.int64),
        "text_embeddings": torch.zeros(n, TEXT_DIM),
    }


def _images(batch: int, size: int = 128) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def _grad(model: nn.Module, prefix: str) -> float:
    return sum(
        float(p.grad.abs().sum())
        for n, p in model.named_parameters()
        if n.startswith(prefix) and p.grad is not None
    )


TWO = [[16, 16, 80, 96], [64, 8, 120, 40]]


# ---------------------------------------------------------------------------------------------
# The weight transfer function and the mask predictor


@pytest.mark.parametrize(
    ("layers", "activation", "kinds"),
    [(1, "leaky-relu", ["Linear"]), (2, "leaky-relu", ["Linear", "LeakyReLU", "Linear"]),
     (3, "relu", ["Linear", "ReLU", "Linear", "ReLU", "Linear"])],
)  # fmt: skip
def test_transfer_function_shapes(layers: int, activation: str, kinds: list[str]) -> None:
    transfer = WeightTransfer(5120, 256, layers=layers, hidden=64, activation=activation)
    assert [type(m).__name__ for m in transfer.mlp] == kinds
    assert transfer(torch.randn(7, 5120)).shape == (7, 256)
    if layers > 1:
        assert transfer.mlp[0].out_features == 64
    leaky = [m for m in transfer.mlp if isinstance(m, nn.LeakyReLU)]
    assert all(m.negative_slope == 0.1 for m in leaky)
    assert all(not m.bias.any() for m in transfer.mlp if isinstance(m, nn.Linear))


@pytest.mark.parametrize(
    ("transfer_input", "width"), [("cls+box", 5 * 32), ("cls", 32), ("box", 4 * 32),
                                  ("randn", 5 * 32), ("text", TEXT_DIM)],
)  # fmt: skip
def test_each_transfer_input_feeds_t_one_row_per_class(transfer_input: str, width: int) -> None:
    model = _tiny(transfer_input=transfer_input)
    assert model.transfer is not None and model.transfer.mlp[0].in_features == width
    if transfer_input == "text":
        with pytest.raises(ValueError, match="never set"):
            model.mask_weights()
        model.set_class_embeddings(torch.randn(3, TEXT_DIM))
    w_seg = model.mask_weights()
    assert w_seg.shape == (3, 16)  # one 1x1 conv per class on the 16-channel mask features
    w_det = model.roi_heads.detection_weights("cls+box")
    assert w_det.shape == (3, 5 * 32)
    # Class c's w_box is its four regression rows, flattened.
    torch.testing.assert_close(w_det[1, 32:], model.roi_heads.bbox_pred.weight[4:8].flatten())
    if transfer_input == "randn":  # fixed vectors, the same in every model
        torch.testing.assert_close(model.class_codes, _tiny(transfer_input="randn").class_codes)


def test_the_mlp_branch_is_one_map_tiled_over_the_classes() -> None:
    torch.manual_seed(0)
    predictor = MaskXPredictor(
        Conv4MaskHead(8, 8), kind="transfer", num_classes=4, roi_size=6, mlp=True
    )
    nn.init.normal_(predictor.mlp.weight, std=0.05)
    rois, w_seg = torch.randn(5, 8, 6, 6), torch.randn(4, 8)
    fused = predictor(rois, None, w_seg)  # (R, K, 12, 12)
    mlp, predictor.mlp = predictor.mlp, None
    fcn = predictor(rois, None, w_seg)
    difference = fused - fcn  # (R, K, 12, 12)
    assert difference.shape == (5, 4, 12, 12)
    for k in range(1, 4):
        torch.testing.assert_close(difference[:, k], difference[:, 0])
    expected = mlp(predictor.head.trunk(rois).flatten(1)).view(5, 12, 12)
    torch.testing.assert_close(difference[:, 0], expected)
    predictor.mlp = mlp
    # Per-RoI classes pick their own class's channel of the full output.
    classes = torch.tensor([0, 3, 1, 1, 2])
    torch.testing.assert_close(
        predictor(rois, classes, w_seg)[:, 0], fused[torch.arange(5), classes]
    )


def test_class_agnostic_and_class_specific_predictors() -> None:
    rois = torch.randn(3, 8, 6, 6)
    agnostic = MaskXPredictor(Conv4MaskHead(8, 8), kind="class-agnostic", num_classes=4,
                              roi_size=6)  # fmt: skip
    out = agnostic(rois)  # (R, K, 12, 12): the same map for every class
    for k in range(4):
        torch.testing.assert_close(out[:, k], out[:, 0])
    torch.testing.assert_close(agnostic(rois, torch.tensor([2, 0, 1]))[:, 0], out[:, 0])
    specific = MaskXPredictor(Conv4MaskHead(8, 8), kind="class-specific", num_classes=4,
                              roi_size=6)  # fmt: skip
    assert specific.class_weights.shape == (4, 8) and not hasattr(specific.head.predictor, "logits")
    with pytest.raises(ValueError, match="w_seg"):
        MaskXPredictor(Conv4MaskHead(8, 8), kind="transfer", num_classes=4, roi_size=6)(rois)


# ---------------------------------------------------------------------------------------------
# Training


def test_every_part_trains_end_to_end(checked_step: Callable[..., dict]) -> None:
    model = _tiny(mask_mlp=True)
    target = _target(TWO, ["circle", "square"], [True, False])
    losses = checked_step(model, _images(1), [target], LOSS_KEYS)
    assert all(v.item() > 0 for v in losses.values()), losses
    for part in (*DETECTOR_PARTS, "mask_predictor.", "transfer."):
        assert _grad(model, part) > 0, part


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_the_stop_gradient_keeps_the_mask_loss_off_the_detection_weights(
    stop_gradient: bool,
) -> None:
    model = _tiny(stop_gradient=stop_gradient)
    model.train()
    losses = model(_images(1), [_target(TWO, ["circle", "square"], [True, True])])
    losses["loss_mask"].backward()
    assert _grad(model, "transfer.") > 0
    reached = [_grad(model, f"roi_heads.{p}.weight") for p in ("cls_score", "bbox_pred")]
    if stop_gradient:
        assert reached == [0.0, 0.0]
    else:
        assert all(g > 0 for g in reached), reached


def test_masks_are_supervised_only_for_instances_that_have_them() -> None:
    model = _tiny()
    model.train()
    # A box-only instance of B: no mask loss, and nothing reaches the mask branch.
    losses = model(_images(1), [_target(TWO[:1], ["square"], [False])])
    assert losses["loss_mask"] == 0 and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    assert _grad(model, "mask_predictor.") == 0 and _grad(model, "transfer.") == 0


def test_detection_stage_is_a_faster_rcnn_and_freezes_the_mask_branch(
    checked_step: Callable[..., dict],
) -> None:
    model = _tiny(train_stage="detection")
    losses = checked_step(
        model, _images(1), [_target(TWO, ["circle", "square"], [True, False])],
        LOSS_KEYS - {"loss_mask"},
    )  # fmt: skip
    assert "loss_mask" not in losses
    assert not any(p.requires_grad for p in model.mask_predictor.parameters())
    assert not any(p.requires_grad for p in model.transfer.parameters())


def test_stage_two_leaves_the_frozen_detector_bit_identical() -> None:
    model = _tiny(train_stage="masks", backbone_norm="BN")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    model.train()
    for _ in range(3):
        losses = model(_images(2), [_target(TWO, ["circle", "square"], [True, False]),
                                    _target(TWO[:1], ["triangle"], [True])])  # fmt: skip
        assert set(losses) == {"loss_mask"}
        optimizer.zero_grad()
        losses["loss_mask"].backward()
        optimizer.step()
    after = model.state_dict()
    for name, value in before.items():
        if name.startswith(DETECTOR_PARTS):  # weights and BatchNorm statistics alike
            assert torch.equal(value, after[name]), name
    changed = [n for n in before if n.startswith("mask_predictor.")
               and not torch.equal(before[n], after[n])]  # fmt: skip
    assert changed
    assert not model.backbone.training and model.mask_predictor.training


def test_labels_outside_the_class_list_are_named() -> None:
    model = _tiny()
    model.train()
    target = _target(TWO[:1], ["circle"], [True])
    target["phrase_ids"] = torch.tensor([phrase_id("zebra")])
    with pytest.raises(ValueError, match="name no class of the model"):
        model(_images(1), [target])


# ---------------------------------------------------------------------------------------------
# Inference


def test_inference_over_the_fixed_classes() -> None:
    model = _tiny(detections_per_image=20, mask_mlp=True)
    model.eval()
    queries = torch.eye(3)[[2, 0]]  # ask for triangle and circle, in that order
    out = model(_images(2), class_embeddings=queries)
    for det in out:
        k = len(det["scores"])
        assert 0 < k <= 20
        assert det["masks"].shape == (k, 1, 128, 128)
        assert set(det["labels"].tolist()) <= {0, 1}
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
    with pytest.raises(ValueError, match="one-hot"):
        model(_images(1), class_embeddings=torch.full((1, 3), 0.5))
    with pytest.raises(ValueError, match=r"expected \(C, 3\)"):
        model(_images(1), class_embeddings=torch.zeros(1, TEXT_DIM))


# ---------------------------------------------------------------------------------------------
# Learning


@pytest.mark.slow
def test_segments_a_class_it_saw_only_boxes_of() -> None:
    # One image: a white square of "circle" with its mask, a red one of "square" with a box
    # only. After training, the "square" detection's mask (through T) covers the red square.
    model = _tiny(mask_mlp=False)
    image = torch.full((1, 3, 128, 128), 30, dtype=torch.uint8)
    image[:, :, 40:88, 24:72] = 220
    image[:, 0, 8:40, 88:120] = 220
    boxes = [[24, 40, 72, 88], [88, 8, 120, 40]]
    target = _target(boxes, ["circle", "square"], [True, False])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    first = None
    for _ in range(80):
        losses = model(image, [target])
        total = sum(losses.values())
        first = first if first is not None else float(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert float(total) < 0.5 * first
    model.eval()
    out = model(image, class_embeddings=torch.eye(3)[:2])[0]
    truth = torch.zeros(128, 128, dtype=torch.bool)
    truth[8:40, 88:120] = True
    iou = box_iou(out["boxes_xyxy_px"], torch.tensor(boxes, dtype=torch.float32))
    hits = ((iou[:, 1] > 0.5) & (out["labels"] == 1)).nonzero().squeeze(1)
    assert hits.numel() > 0, "the box-only class is not detected"
    mask = out["masks"][hits[out["scores"][hits].argmax()], 0] > 0.5
    assert (mask & truth).sum() / (mask | truth).sum() > 0.5


def test_training_reports_the_foreground_accuracy_of_the_positive_rois() -> None:
    model = _tiny()
    model.train()
    target = _target(TWO, ["circle", "square"], [True, False])
    losses = model(_images(1), [target])
    assert set(losses) == LOSS_KEYS  # the diagnostics are no loss
    assert losses.diagnostics["fg_positives"].item() >= 2  # the ground-truth boxes are RoIs
    assert 0.0 <= losses.diagnostics["fg_accuracy"].item() <= 1.0
    # Stage two runs the frozen box head without its losses: no accuracy either.
    stage_two = _tiny(train_stage="masks")
    stage_two.train()
    assert stage_two(_images(1), [target]).diagnostics == {}
