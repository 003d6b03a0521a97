"""What the two-stage detectors (Mask R-CNN*, MaskX R-CNN) build and feed alike: the ResNet-FPN
backbone on P2..P6 with torchvision's RPN over it, and the RPN's per-image ground truth."""

from __future__ import annotations

from torch import Tensor

from models.backbone import ResNetFPN
from models.heads.rpn import ProposalNetwork, build_rpn
from models.targets import Targets

__all__ = ["build_backbone_and_rpn", "rpn_ground_truth"]


def build_backbone_and_rpn(
    *,
    backbone: str,
    backbone_weights: str | None,
    backbone_norm: str,
    fpn_channels: int,
    anchor_sizes: tuple[float, ...],
    aspect_ratios: tuple[float, ...],
    rpn_fg_iou: float,
    rpn_bg_iou: float,
    rpn_batch_size: int,
    rpn_positive_fraction: float,
    rpn_pre_nms_topk_train: int,
    rpn_pre_nms_topk_test: int,
    rpn_post_nms_topk_train: int,
    rpn_post_nms_topk_test: int,
    rpn_nms_threshold: float,
) -> tuple[ResNetFPN, ProposalNetwork]:
    """ResNet + FPN P2..P6 and an RPN with one anchor size per level (the detectors' flags)."""
    trunk = ResNetFPN(
        name=backbone,
        weights=backbone_weights,
        norm=backbone_norm,
        fpn_channels=fpn_channels,
        levels="p2-p6",
    )
    if len(anchor_sizes) != len(trunk.strides):
        raise ValueError(
            f"anchor_sizes: expected one per level P2..P6 ({len(trunk.strides)}), got "
            f"{tuple(anchor_sizes)}"
        )
    rpn = build_rpn(
        in_channels=fpn_channels,
        anchor_sizes=anchor_sizes,
        aspect_ratios=aspect_ratios,
        fg_iou=rpn_fg_iou,
        bg_iou=rpn_bg_iou,
        batch_size=rpn_batch_size,
        positive_fraction=rpn_positive_fraction,
        pre_nms_topk=(rpn_pre_nms_topk_train, rpn_pre_nms_topk_test),
        post_nms_topk=(rpn_post_nms_topk_train, rpn_post_nms_topk_test),
        nms_threshold=rpn_nms_threshold,
    )
    return trunk, rpn


def rpn_ground_truth(gt: Targets) -> list[Tensor | None]:
    """Each image's boxes for the RPN; None for an image whose boxes are not annotated (image
    labels only), whose anchors the RPN then ignores."""
    return [
        boxes if annotated else None
        for boxes, annotated in zip(gt.boxes_per_image, gt.boxes_annotated, strict=True)
    ]
