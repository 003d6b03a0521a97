"""MaskX R-CNN (Hu et al., "Learning to Segment Every Thing", CVPR 2018): Mask R-CNN over a
fixed class list A ∪ B that has boxes for every class and masks for A only; each class's mask
weights are predicted from its box-head weights by a learnt, class-agnostic weight transfer
function T, so the classes of B are segmented too.

    model = MaskXRCNN(classes=("person", "dog", ...), backbone="resnet50")
    losses = model(images, targets)                         # training: dict of scalar losses
    model.eval()
    detections = model(images, class_embeddings=one_hot)    # (C, K) rows selecting classes

Parts, all shared with Mask R-CNN* (`models.meta_arch.mask_rcnn_star`): ResNet + FPN P2..P6,
torchvision's RPN (`models.heads.rpn`), RoI features 7 x 7 -> two 1024-d FC layers
(`models.heads.roi_box.RoIHeadBase`); then MaskX R-CNN's own:

- a class-specific box head (`models.heads.class_roi_box`): softmax over K + 1 and 4 deltas
  per class, trained with the standard losses on every class;
- the 4-conv FCN mask head on 14 x 14 RoIs -> 28 x 28 masks, trained as Mask R-CNN's on the
  positive RoIs of the box head's sampling (IoU >= 0.5), against their matched instance's
  mask, only for instances with a mask (set A); the RoIs of B instances give no mask loss;
- its class-specific 1x1 mask weights w_seg = T(w_det) (`models.heads.weight_transfer`), w_det
  the class's [w_cls, w_box] (``transfer_input``; or a fixed random vector, or the class name's
  text embedding, the paper's baselines), with the stop-gradient on w_det (Sec. 3.2); the
  class-agnostic baseline and the class-specific oracle as ``mask_predictor``; the fused MLP
  branch as ``mask_mlp``.

Training stages (``train_stage``, Sec. 3.2): ``joint`` trains everything end to end;
``detection`` is stage one of stage-wise training, a Faster R-CNN (no mask loss, the mask
branch frozen); ``masks`` is stage two: the backbone, RPN and box head are frozen (no gradient,
BatchNorm statistics fixed) and run without autograd, and only the mask branch and T learn.
`models.engine.resume.load_initial_weights` loads a stage-one checkpoint into any stage
(``init_from_required``: the detector must fit; the mask branch is taken where it fits).

Labels: the targets' ``phrase_ids`` are those of the class names (`alp_dataset.datasets`); each
must be a class of ``classes``. Inference scores are the softmax probabilities (Mask R-CNN's),
class-wise NMS, and each detection's mask is that of its class.

Naming convention: B = images, K = classes of the model, C = classes asked for at inference,
M = box-supervised instances of the batch, R = RoIs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alp_curation.phrases import phrase_id
from models.heads.class_roi_box import ClassRoIBoxHead
from models.heads.diagnostics import TrainingLosses
from models.heads.mask import build_mask_head, predict_masks
from models.heads.roi_box import BOX_LEVELS, Samples
from models.heads.weight_transfer import MaskXPredictor, WeightTransfer
from models.meta_arch.base import Detector
from models.meta_arch.two_stage import build_backbone_and_rpn, rpn_ground_truth
from models.ops import multilevel_roi_align, roi_align, zero_weighted
from models.targets import Targets, gather_targets

__all__ = ["MaskXRCNN"]

MASK_LEVELS = BOX_LEVELS  # mask RoI features from P2..P5 too, as Mask R-CNN's mask pooler
RANDN_SEED = 0  # the "randn" baseline's class vectors: fixed, the same in every run


class MaskXRCNN(Detector):
    """MaskX R-CNN (module doc): the input and output contract of `Detector`, over the fixed
    ``classes``.

    Training returns ``{"loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg",
    "loss_mask"}`` (stage ``detection``: without ``loss_mask``; stage ``masks``: only it).
    Every trainable parameter takes part in every step.

    Eval: ``class_embeddings`` is a (C, K) one-hot matrix whose rows pick classes of the model
    (`models.inference.class_queries` builds it from names); per image up to
    ``detections_per_image`` dicts of ``boxes_xyxy_px`` float32 (k, 4), ``scores`` float32
    (k,), ``labels`` int64 (k,) rows of that matrix, ``masks`` float32 (k, 1, H, W)
    probabilities pasted into the image.
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
        mask_head: str = "conv4",
        mask_channels: int = 256,
        mask_roi_size: int = 14,
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
        classes: tuple[str, ...] = (),
        mask_predictor: str = "transfer",
        transfer_input: str = "cls+box",
        transfer_layers: int = 2,
        transfer_hidden: int = 256,
        transfer_activation: str = "leaky-relu",
        stop_gradient: bool = True,
        mask_mlp: bool = False,
        train_stage: str = "joint",
    ) -> None:
        super().__init__(
            text_dim=text_dim,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
            detections_per_image=detections_per_image,
        )
        if not classes:
            raise ValueError("classes: MaskX R-CNN needs its class list (--classes A B ...)")
        self.class_names = tuple(classes)
        self.train_stage = train_stage
        self.transfer_input = transfer_input
        self.stop_gradient = stop_gradient
        num_classes = len(self.class_names)
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
        self.roi_heads = ClassRoIBoxHead(
            in_channels=fpn_channels,
            num_classes=num_classes,
            strides=self.strides,
            roi_size=box_roi_size,
            hidden_dim=box_head_dim,
            batch_size_per_image=roi_batch_size,
            positive_fraction=roi_positive_fraction,
            fg_iou=roi_fg_iou,
        )
        self.mask_predictor = MaskXPredictor(
            build_mask_head(mask_head, fpn_channels, mask_channels),
            kind=mask_predictor,
            num_classes=num_classes,
            roi_size=mask_roi_size,
            mlp=mask_mlp,
        )
        self.mask_roi_size = mask_roi_size
        self.transfer: WeightTransfer | None = None
        if mask_predictor == "transfer":
            in_dim = {
                "cls+box": 5 * box_head_dim,
                "cls": box_head_dim,
                "box": 4 * box_head_dim,
                "randn": 5 * box_head_dim,  # as wide as the default input
                "text": text_dim,
            }[transfer_input]
            self.transfer = WeightTransfer(
                in_dim,
                self.mask_predictor.feature_dim,
                layers=transfer_layers,
                hidden=transfer_hidden,
                activation=transfer_activation,
            )
            if transfer_input == "randn":
                codes = torch.randn(
                    num_classes, in_dim, generator=torch.Generator().manual_seed(RANDN_SEED)
                )
                self.register_buffer("class_codes", codes)  # (K, 5H), saved in checkpoints
            if transfer_input == "text":
                self.register_buffer("class_text", torch.zeros(num_classes, text_dim))
        ids = torch.tensor([phrase_id(c) for c in self.class_names], dtype=torch.int64)
        sorted_ids, order = ids.sort()
        self.register_buffer("_sorted_class_ids", sorted_ids, persistent=False)
        self.register_buffer("_class_order", order, persistent=False)
        self._frozen: list[nn.Module] = {
            "joint": [],
            "detection": [self.mask_predictor, *([self.transfer] if self.transfer else [])],
            "masks": [self.backbone, self.rpn, self.roi_heads],
        }[train_stage]
        for module in self._frozen:
            module.requires_grad_(False)

    # ------------------------------------------------------------------------------------------
    # The fixed classes

    @property
    def query_dim(self) -> int:
        return len(self.class_names)

    # `models.engine.resume.load_initial_weights`: these parts must come from --init-from; the
    # mask branch is loaded where the checkpoint's fits (stage one has another, or none used).
    init_from_required = ("backbone.", "rpn.", "roi_heads.")

    def set_class_embeddings(self, embeddings: Tensor) -> None:
        """The (K, text_dim) text embeddings of ``class_names``, in order: what T reads with
        ``transfer_input="text"`` (kept in checkpoints); other inputs ignore them."""
        if embeddings.shape != (len(self.class_names), self.text_dim):
            raise ValueError(
                f"class embeddings: expected ({len(self.class_names)}, {self.text_dim}), got "
                f"{tuple(embeddings.shape)}"
            )
        if self.transfer is not None and self.transfer_input == "text":
            self.class_text.copy_(embeddings.to(self.class_text))

    def classes_of(self, phrase_ids: Tensor) -> Tensor:
        """(M,) phrase ids of class names -> (M,) int64 class indices; ValueError naming the
        ids that are no class of the model."""
        sorted_ids = self._sorted_class_ids
        where = torch.searchsorted(sorted_ids, phrase_ids).clamp(max=len(sorted_ids) - 1)
        known = sorted_ids[where] == phrase_ids
        if not bool(known.all()):
            unknown = sorted(set(phrase_ids[~known].tolist()))
            raise ValueError(
                f"targets: phrase ids {unknown[:5]} name no class of the model "
                f"({len(self.class_names)} classes: {list(self.class_names)[:8]}...); train on "
                "shards of these classes"
            )
        return self._class_order[where]

    def train(self, mode: bool = True) -> MaskXRCNN:
        super().train(mode)
        for module in self._frozen:  # frozen parts keep their BatchNorm statistics
            module.eval()
        return self

    def mask_weights(self) -> Tensor | None:
        """w_seg (K, C) = T(w_det) for the transfer predictor, None for the others."""
        if self.transfer is None:
            return None
        if self.transfer_input == "randn":
            source = self.class_codes
        elif self.transfer_input == "text":
            if not bool(self.class_text.any()):
                raise ValueError(
                    "transfer_input text: the class-name embeddings were never set "
                    "(MaskXRCNN.set_class_embeddings; models.train sets them)"
                )
            source = self.class_text
        else:
            source = self.roi_heads.detection_weights(self.transfer_input)  # (K, E)
            if self.stop_gradient:
                source = source.detach()  # Sec. 3.2: the mask loss does not move w_det
        return self.transfer(source)

    # ------------------------------------------------------------------------------------------
    # Training

    def losses(
        self, images: Tensor, targets: list[Mapping[str, Any]], image_size: tuple[int, int]
    ) -> TrainingLosses:
        gt = gather_targets(targets, self.text_dim, image_size)
        gt_classes = self.classes_of(gt.phrase_ids)  # (M,)
        gt_boxes = rpn_ground_truth(gt)
        detector_frozen = self.train_stage == "masks"
        with torch.no_grad() if detector_frozen else contextlib.nullcontext():
            features = self.backbone(images)
            proposals, _, rpn_losses = self.rpn(images, image_size, features, gt_boxes)
            samples = self.roi_heads.sample(proposals, gt)
        losses = TrainingLosses()
        if not detector_frozen:
            box_losses = self.roi_heads.losses(features, samples, gt.boxes, gt_classes)
            losses.update(rpn_losses)
            losses.update(box_losses)
            losses.diagnostics.update(box_losses.diagnostics)
        if self.train_stage != "detection":
            losses["loss_mask"] = self._mask_loss(features, samples, gt, gt_classes)
        return losses

    def _mask_loss(
        self, features: Sequence[Tensor], samples: Samples, gt: Targets, gt_classes: Tensor
    ) -> Tensor:
        """Mean BCE of the 28 x 28 logits of each positive RoI whose matched instance has a
        mask, for that instance's class, against its mask RoI-aligned by the RoI's box (Mask
        R-CNN's target); a zero that keeps the branch in the graph when there is none."""
        mask_row = torch.full_like(gt_classes, -1)  # (M,): row in the batch's masks, or -1
        mask_row[gt.mask_instances] = torch.arange(len(gt.mask_instances), device=gt_classes.device)
        positive = torch.where(samples.gt_index >= 0)[0]
        instance = samples.gt_index[positive]
        with_mask = mask_row[instance] >= 0  # B instances and box-only ones: no mask loss
        rois_index = positive[with_mask]
        instance = instance[with_mask]
        boxes = samples.boxes[rois_index]  # (R, 4)
        rois = multilevel_roi_align(
            features, boxes, samples.batch[rois_index], self.mask_roi_size, self.strides,
            min_level=MASK_LEVELS[0], max_level=MASK_LEVELS[1],
        )  # fmt: skip  # (R, C, S, S)
        w_seg = self.mask_weights()
        logits = self.mask_predictor(rois, gt_classes[instance], w_seg)  # (R, 1, 2S, 2S)
        if len(boxes) == 0:
            return zero_weighted(logits, *([] if w_seg is None else [w_seg]))
        masks = torch.cat([m for m, _ in gt.masks])[:, None].float()  # (K_masks, 1, H, W)
        target = roi_align(masks, boxes, mask_row[instance], 2 * self.mask_roi_size, 1.0) >= 0.5
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())

    # ------------------------------------------------------------------------------------------
    # Inference

    def selected_classes(self, queries: Tensor) -> Tensor:
        """(C, K) one-hot rows -> (C,) class indices; ValueError when a row is not one-hot."""
        one_hot = ((queries == 0) | (queries == 1)).all(dim=1) & (queries.sum(dim=1) == 1)
        if not bool(one_hot.all()):
            bad = torch.where(~one_hot)[0].tolist()
            raise ValueError(
                f"class_embeddings rows {bad[:5]}: a MaskX R-CNN selects its classes with "
                "one-hot rows (models.inference.class_queries)"
            )
        return queries.argmax(dim=1)

    def inference(
        self, images: Tensor, class_embeddings: Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        classes = self.selected_classes(class_embeddings)  # (C,)
        features = self.backbone(images)
        proposals, _, _ = self.rpn(images, image_size, features)
        detections = self.roi_heads.predict(
            features,
            proposals,
            classes,
            image_size,
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
            detections_per_image=self.detections_per_image,
        )
        own = torch.cat([classes[d["labels"]] for d in detections])  # (k,) model classes
        w_seg = self.mask_weights()
        predict_masks(
            lambda rois: self.mask_predictor(rois, own, w_seg), features, self.strides,
            detections, image_size, roi_size=self.mask_roi_size, levels=MASK_LEVELS,
        )  # fmt: skip
        return detections
