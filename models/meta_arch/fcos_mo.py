"""FCOS-MO: FCOS with a mask head and an open-vocabulary classifier (ALP paper, Sec. 3.2-3.4).

    model = FCOSMO(backbone="resnet50", text_dim=512)
    losses = model(images, targets)                       # training: dict of 4 scalar losses
    model.eval()
    detections = model(images, class_embeddings=names_d)  # list of per-image dicts

Composed of shared parts: the backbone `models.backbone.ResNetFPN` (P3..P7), the dense head
`models.heads.fcos.FCOSHead` with the open-vocabulary classifier of
`models.heads.open_vocab`, the FCOS maths of `models.heads.fcos_targets`, and a mask head of
`models.heads.mask` trained on ground-truth boxes.

Naming convention: B = images, L = FPN levels (P3..P7), R = locations of one image over all
levels, N = B * R, M = ground-truth boxes of the batch, P = positive locations, U = unique
phrases of the batch, C = classes at inference, D = text_dim, K = detections / mask RoIs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import alp_curation.torchvision_fix  # noqa: F401

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, generalized_box_iou_loss

from models.backbone import ResNetFPN
from models.engine.distributed import mean_over_ranks
from models.heads.diagnostics import TrainingLosses, foreground_accuracy
from models.heads.fcos import FCOSHead
from models.heads.fcos_targets import (
    centerness_targets,
    decode_boxes,
    fcos_match,
    flatten_levels,
    level_ranges,
    locations,
    regression_targets,
)
from models.heads.mask import build_mask_head, mask_loss, predict_masks
from models.heads.open_vocab import OpenVocabClassifier, phrase_candidates
from models.meta_arch.base import Detector
from models.ops import zero_weighted
from models.targets import gather_targets

__all__ = ["FCOSMO"]

MASK_LEVELS = (3, 5)  # RoI features for the mask head come from P3..P5


class FCOSMO(Detector):
    """FCOS-MO instance segmentation with an open-vocabulary classifier.

    Input ``images``: uint8 or float (B, 3, H, W), RGB 0-255; normalised here with the ImageNet
    mean / std. H and W should be multiples of 128 (the P7 stride); other sizes are padded at the
    bottom / right with zeros after normalisation, and outputs still refer to the unpadded image.

    Training (``self.training``): ``targets`` is a list of B dicts (N instances each):
    ``boxes_xyxy_px`` float (N, 4) pixels; ``phrase_ids`` int64 (N,); ``text_embeddings`` float
    (N, text_dim) (may be None only when N == 0); ``is_alp`` bool (N,) (True: no box regression;
    all False when absent); ``masks`` bool (N, H, W) or None; ``has_mask`` bool (N,) (the mask
    row is real; all True when absent and ``masks`` is given). Returns scalar losses
    ``{"loss_cls", "loss_box", "loss_centerness", "loss_mask"}``, total = their sum, as a
    `TrainingLosses` whose ``diagnostics`` hold the foreground accuracy of this rank's positive
    locations (``fg_accuracy``, ``fg_positives``; no loss). Every
    trainable parameter takes part in every step (zero-weighted terms where nothing is
    supervised), so DDP needs no ``find_unused_parameters``.

    - loss_cls: contrastive softmax over [zero background] + the batch's unique phrases,
      logits cos / tau; background locations weighted by ``background_alpha``; summed over
      locations / max(1, positives) (positives averaged over ranks).
    - loss_box: GIoU on positives of non-ALP boxes, weighted by centerness targets / their sum.
    - loss_centerness: BCE-with-logits on all positives / positives (0 without the branch).
    - loss_mask: BCE-with-logits of the mask head on GT boxes with ``has_mask`` against the GT
      mask RoI-aligned to its 2S x 2S grid (thresholded at 0.5), mean over masked instances.

    Eval: ``class_embeddings`` (C, text_dim) required; returns a list of B dicts with K <=
    ``detections_per_image`` (100) detections each, by decreasing score:
    ``boxes_xyxy_px`` float32 (K, 4) clipped to the image, ``scores`` float32 (K,) =
    sqrt(p(class) * sigmoid(centerness)) (p alone with ``use_centerness=False``), ``labels``
    int64 (K,) rows of ``class_embeddings``, ``masks`` float32 (K, 1, H, W) probabilities pasted
    into the image. Inference runs without autograd.
    """

    size_divisibility = 128  # the stride of P7

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        backbone_norm: str = "BN",
        head_norm: str = "GN",
        fpn_channels: int = 256,
        head_convs: int = 4,
        text_dim: int = 512,
        mask_head: str = "hourglass20",
        mask_channels: int = 64,
        mask_roi_size: int = 16,
        tau: float = 0.01,
        background_alpha: float = 0.1,
        center_sampling_radius: float = 1.5,
        size_ranges: tuple[float, ...] = (64, 128, 256, 512),
        use_centerness: bool = True,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        pre_nms_topk: int = 1000,
        detections_per_image: int = 100,
    ) -> None:
        super().__init__(
            text_dim=text_dim,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
            detections_per_image=detections_per_image,
        )
        self.backbone = ResNetFPN(
            name=backbone,
            weights=backbone_weights,
            norm=backbone_norm,
            fpn_channels=fpn_channels,
            levels="p3-p7",
        )
        self.strides = tuple(self.backbone.strides)
        self.ranges = level_ranges(size_ranges)
        if len(self.ranges) != len(self.strides):
            raise ValueError(
                f"size_ranges: expected {len(self.strides) - 1} boundaries for the levels "
                f"P3..P7, got {tuple(size_ranges)}"
            )
        self.head = FCOSHead(
            channels=fpn_channels,
            num_convs=head_convs,
            text_dim=text_dim,
            norm=head_norm,
            num_levels=len(self.strides),
            use_centerness=use_centerness,
            tau=tau,
            background_alpha=background_alpha,
        )
        self.mask_head = build_mask_head(mask_head, fpn_channels, mask_channels)
        self.mask_roi_size = mask_roi_size
        self.center_sampling_radius = center_sampling_radius
        self.use_centerness = use_centerness
        self.pre_nms_topk = pre_nms_topk

    @property
    def classifier(self) -> OpenVocabClassifier:
        return self.head.classifier

    def level_locations(self, maps: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Points (R, 2), strides (R,) and size ranges (R, 2) of the locations of the head's
        per-level ``maps``, in the order `flatten_levels` lists them."""
        sizes = [(m.shape[-2], m.shape[-1]) for m in maps]
        return locations(sizes, self.strides, self.ranges, device=maps[0].device)

    # ------------------------------------------------------------------------------------------
    def losses(
        self, images: Tensor, targets: list[Mapping[str, Any]], image_size: tuple[int, int]
    ) -> TrainingLosses:
        gt = gather_targets(targets, self.text_dim, image_size)
        if not all(gt.boxes_annotated):
            raise ValueError(
                "targets: FCOS-MO learns from boxes; images of image-level labels only "
                "(image_labels_only) train the two-stage detectors (mask-rcnn-star)"
            )
        features = self.backbone(images)
        embeds, regs, centers = self.head(features)
        points, strides, ranges = self.level_locations(embeds)
        num_locations = points.shape[0]

        # Match each image's locations to its own boxes; indices become batch-global.
        matches = []
        for boxes, offset in zip(gt.boxes_per_image, gt.offsets, strict=True):
            match = fcos_match(points, strides, ranges, boxes, self.center_sampling_radius)
            matches.append(torch.where(match >= 0, match + offset, match))
        gt_index = torch.stack(matches).flatten()  # (N,)
        positive = (gt_index >= 0).nonzero().squeeze(1)  # (P,)
        matched = gt_index[positive]  # (P,)
        num_positive = mean_over_ranks(positive.new_tensor(positive.numel(), dtype=torch.float))
        normaliser = num_positive.clamp(min=1.0)

        # Classification (Sec. 3.2): candidates = [background] + unique phrases of the batch.
        embed_flat = flatten_levels(embeds).flatten(0, 1)  # (N, D)
        _, inverse, candidates = phrase_candidates(gt.phrase_ids, gt.text_embeddings)
        labels = torch.zeros_like(gt_index)
        labels[positive] = inverse[matched] + 1
        logits = self.classifier.logits(embed_flat, candidates)  # (N, 1 + U)
        loss_cls = self.classifier.loss(logits, labels).sum() / normaliser

        # Box regression (non-ALP positives) and centerness (all positives), in stride units.
        location = positive % num_locations  # (P,)
        ltrb_target = regression_targets(points[location], gt.boxes[matched])
        ltrb_target = ltrb_target / strides[location, None]  # (P, 4)
        center_target = centerness_targets(ltrb_target)  # (P,)
        reg_flat = flatten_levels(regs).flatten(0, 1)  # (N, 4)
        regress = ~gt.is_alp[matched]  # (P,)
        pred_ltrb = reg_flat[positive][regress].float()
        weights = center_target[regress]
        giou = generalized_box_iou_loss(
            decode_boxes(pred_ltrb.new_zeros(len(pred_ltrb), 2), pred_ltrb),
            decode_boxes(pred_ltrb.new_zeros(len(pred_ltrb), 2), ltrb_target[regress]),
            reduction="none",
        )  # (P',)
        weight_sum = mean_over_ranks(weights.sum().detach()).clamp(min=1e-6)
        loss_box = (giou * weights).sum() / weight_sum + zero_weighted(reg_flat)

        if self.use_centerness:
            center_flat = flatten_levels(centers).flatten()  # (N,)
            loss_centerness = F.binary_cross_entropy_with_logits(
                center_flat[positive].float(), center_target, reduction="sum"
            ) / normaliser + zero_weighted(center_flat)
        else:
            loss_centerness = loss_cls.new_zeros(())

        loss_mask = mask_loss(
            self.mask_head, features, self.strides, gt,
            roi_size=self.mask_roi_size, levels=MASK_LEVELS,
        )  # fmt: skip
        # Zero-weighted: keeps the classifier in the graph when the batch has no phrase.
        loss_cls = loss_cls + zero_weighted(embed_flat)
        losses = {
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "loss_centerness": loss_centerness,
            "loss_mask": loss_mask,
        }
        return TrainingLosses(losses, foreground_accuracy(logits, labels))

    # ------------------------------------------------------------------------------------------
    def inference(
        self, images: Tensor, class_embeddings: Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        features = self.backbone(images)
        embeds, regs, centers = self.head(features)
        points, strides, _ = self.level_locations(embeds)
        counts = [e.shape[-2] * e.shape[-1] for e in embeds]  # locations per level
        embed_flat, reg_flat = flatten_levels(embeds), flatten_levels(regs)  # (B, R, D), (B, R, 4)
        center_flat = flatten_levels(centers)[..., 0].sigmoid() if centers else None  # (B, R)
        num_classes = max(1, class_embeddings.shape[0])  # no classes: no candidates either
        height, width = image_size
        detections = []
        for b in range(embed_flat.shape[0]):
            logits = self.classifier.logits(embed_flat[b], class_embeddings)  # (R, 1 + C)
            probs = logits.softmax(dim=1)[:, 1:]  # (R, C)
            scores = probs if center_flat is None else (probs * center_flat[b, :, None]).sqrt()
            kept_scores, kept_locations, kept_labels = [], [], []
            first = 0
            for count in counts:  # per level (Sec. 3.3): threshold, then the top pre_nms_topk
                level_scores = scores[first : first + count].flatten()  # (hw * C,)
                candidates = (level_scores > self.score_threshold).nonzero().squeeze(1)
                top = level_scores[candidates].topk(min(self.pre_nms_topk, candidates.numel()))
                chosen = candidates[top.indices]  # index into (hw, C)
                kept_scores.append(top.values)
                kept_locations.append(first + torch.div(chosen, num_classes, rounding_mode="floor"))
                kept_labels.append(chosen % num_classes)
                first += count
            where = torch.cat(kept_locations)  # (K',)
            boxes = decode_boxes(points[where], reg_flat[b, where].float() * strides[where, None])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            box_scores, labels = torch.cat(kept_scores), torch.cat(kept_labels)
            keep = batched_nms(boxes, box_scores, labels, self.nms_threshold)
            keep = keep[: self.detections_per_image]
            detections.append(
                {
                    "boxes_xyxy_px": boxes[keep].float(),
                    "scores": box_scores[keep].float(),
                    "labels": labels[keep].long(),
                }
            )
        predict_masks(
            self.mask_head, features, self.strides, detections, image_size,
            roi_size=self.mask_roi_size, levels=MASK_LEVELS,
        )  # fmt: skip
        return detections
