"""Mask R-CNN*: the two-stage baseline of the ALP paper (Sec. 4, "Baseline: Mask R-CNN*").

    model = MaskRCNNStar(backbone="resnet50", text_dim=512)
    losses = model(images, targets)                       # training: dict of scalar losses
    model.eval()
    detections = model(images, class_embeddings=names_d)  # list of per-image dicts

A standard Mask R-CNN R-50-FPN as detectron2 configures it: ResNet + FPN P2..P6
(`models.backbone.ResNetFPN`), an RPN on all five levels with anchors 32..512 and aspect
ratios 0.5 / 1 / 2 (`models.heads.rpn`, torchvision's parts), and a second stage of 7 x 7 RoI
features into two 1024-d FC layers (`models.heads.roi_box`), with the paper's three changes:

1. a class-agnostic box regressor (one delta per RoI, for any class, novel ones included);
2. the Hourglass-20 mask head trained on ground-truth boxes, as FCOS-MO (`models.heads.mask`;
   the 4-conv head as an option);
3. the open-vocabulary classifier of FCOS-MO in place of the softmax classifier
   (`models.heads.open_vocab`: tau 0.01, the batch's phrases as negatives, a zero background,
   alpha 0.1).

Supervision (all from the same shards as FCOS-MO, `models.targets`): COCO masks train
everything; ALP boxes train the RPN, the box regression and the classifier (``is_alp`` changes
nothing here); images of image labels only (``image_labels_only``, the paper's "ALPs without
boxes") train only the classifier, through the largest RPN proposal, scaled by
``image_label_weight`` (lambda = 0.1, after Detic).

Naming convention: B = images, C = classes at inference, D = text_dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from models.heads.diagnostics import TrainingLosses
from models.heads.mask import build_mask_head, mask_loss, predict_masks
from models.heads.roi_box import RoIBoxHead
from models.meta_arch.base import Detector
from models.meta_arch.two_stage import build_backbone_and_rpn, rpn_ground_truth
from models.targets import gather_targets

__all__ = ["MaskRCNNStar"]

MASK_LEVELS = (2, 5)  # mask RoI features from P2..P5, as detectron2's mask pooler


class MaskRCNNStar(Detector):
    """Mask R-CNN* (module doc): the input and output contract of `Detector`.

    Training returns ``{"loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg",
    "loss_mask", "loss_image_labels"}`` (total = their sum; ``loss_image_labels`` already
    scaled by ``image_label_weight``) as a `TrainingLosses` whose ``diagnostics`` hold the
    foreground accuracy of the positive sampled RoIs (``fg_accuracy``, ``fg_positives``; no
    loss). Every trainable parameter takes part in every step
    (zero-weighted terms where nothing is supervised), so DDP needs no
    ``find_unused_parameters``.

    - loss_objectness, loss_rpn_box_reg: torchvision's RPN losses over 256 sampled anchors per
      annotated image (images of image labels only sample none).
    - loss_cls: the open-vocabulary cross-entropy over 512 sampled RoIs per annotated image
      (25 % positive at IoU >= 0.5), the background's scaled by ``background_alpha``.
    - loss_box_reg: smooth L1 of the class-agnostic deltas of the positive RoIs.
    - loss_mask: BCE of the mask head on ground-truth boxes with masks.
    - loss_image_labels: lambda x the soft-target loss of the largest proposal of each image of
      image labels against all phrases of the batch.

    Eval: ``class_embeddings`` (C, text_dim); per image up to ``detections_per_image`` dicts of
    ``boxes_xyxy_px`` float32 (K, 4), ``scores`` float32 (K,) = sqrt(p(class) * objectness),
    ``labels`` int64 (K,) rows of ``class_embeddings``, ``masks`` float32 (K, 1, H, W)
    probabilities pasted into the image, by decreasing score.
    """

    size_divisibility = 32  # the stride of P5; P6 max-pools P5 with ceil

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        backbone_norm: str = "BN",
        fpn_channels: int = 256,
        text_dim: int = 512,
        mask_head: str = "hourglass20",
        mask_channels: int = 64,
        mask_roi_size: int = 16,
        tau: float = 0.01,
        background_alpha: float = 0.1,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
        anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512),
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        rpn_fg_iou: float = 0.7,
        rpn_bg_iou: float = 0.3,
        rpn_batch_size: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_pre_nms_topk_train: int = 2000,
        rpn_pre_nms_topk_test: int = 1000,
        rpn_post_nms_topk_train: int = 2000,
        rpn_post_nms_topk_test: int = 1000,
        rpn_nms_threshold: float = 0.7,
        roi_batch_size: int = 512,
        roi_positive_fraction: float = 0.25,
        roi_fg_iou: float = 0.5,
        box_roi_size: int = 7,
        box_head_dim: int = 1024,
        image_label_weight: float = 0.1,
    ) -> None:
        super().__init__(
            text_dim=text_dim,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
            detections_per_image=detections_per_image,
        )
        self.backbone, self.rpn = build_backbone_and_rpn(
            backbone=backbone,
            backbone_weights=backbone_weights,
            backbone_norm=backbone_norm,
            fpn_channels=fpn_channels,
            anchor_sizes=anchor_sizes,
            aspect_ratios=aspect_ratios,
            rpn_fg_iou=rpn_fg_iou,
            rpn_bg_iou=rpn_bg_iou,
            rpn_batch_size=rpn_batch_size,
            rpn_positive_fraction=rpn_positive_fraction,
            rpn_pre_nms_topk_train=rpn_pre_nms_topk_train,
            rpn_pre_nms_topk_test=rpn_pre_nms_topk_test,
            rpn_post_nms_topk_train=rpn_post_nms_topk_train,
            rpn_post_nms_topk_test=rpn_post_nms_topk_test,
            rpn_nms_threshold=rpn_nms_threshold,
        )
        self.strides = tuple(self.backbone.strides)
        self.roi_heads = RoIBoxHead(
            in_channels=fpn_channels,
            text_dim=text_dim,
            strides=self.strides,
            roi_size=box_roi_size,
            hidden_dim=box_head_dim,
            tau=tau,
            background_alpha=background_alpha,
            batch_size_per_image=roi_batch_size,
            positive_fraction=roi_positive_fraction,
            fg_iou=roi_fg_iou,
        )
        self.mask_head = build_mask_head(mask_head, fpn_channels, mask_channels)
        self.mask_roi_size = mask_roi_size
        self.image_label_weight = image_label_weight

    def losses(
        self, images: Tensor, targets: list[Mapping[str, Any]], image_size: tuple[int, int]
    ) -> TrainingLosses:
        gt = gather_targets(targets, self.text_dim, image_size)
        features = self.backbone(images)
        gt_boxes = rpn_ground_truth(gt)
        proposals, _, rpn_losses = self.rpn(images, image_size, features, gt_boxes)
        box_losses = self.roi_heads.losses(features, proposals, gt)
        image_labels = self.roi_heads.image_label_loss(features, proposals, gt, image_size)
        loss_mask = mask_loss(
            self.mask_head, features, self.strides, gt,
            roi_size=self.mask_roi_size, levels=MASK_LEVELS,
        )  # fmt: skip
        losses = {
            **rpn_losses,
            **box_losses,
            "loss_mask": loss_mask,
            "loss_image_labels": self.image_label_weight * image_labels,
        }
        return TrainingLosses(losses, box_losses.diagnostics)

    def inference(
        self, images: Tensor, class_embeddings: Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        features = self.backbone(images)
        proposals, objectness, _ = self.rpn(images, image_size, features)
        detections = self.roi_heads.predict(
            features,
            proposals,
            objectness,
            class_embeddings,
            image_size,
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
            detections_per_image=self.detections_per_image,
        )
        predict_masks(
            self.mask_head, features, self.strides, detections, image_size,
            roi_size=self.mask_roi_size, levels=MASK_LEVELS,
        )  # fmt: skip
        return detections
