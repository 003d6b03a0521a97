"""The class-specific second stage of Mask R-CNN over a fixed class list (MaskX R-CNN's box
head, Hu et al. Sec. 3.1): softmax classification weights w_cls and box-regression weights
w_box per class, whose rows are the classes' detection weights w_det.

    head = ClassRoIBoxHead(in_channels=256, num_classes=80, strides=(4, 8, 16, 32, 64))
    samples = head.sample(proposals, gt)
    losses = head.losses(features, samples, gt_boxes, gt_classes)  # loss_cls, loss_box_reg
    w_det = head.detection_weights("cls+box")                     # (K, 5 x hidden_dim)
    detections = head.predict(features, proposals, classes, image_size, ...)

RoI features, matching and sampling are `models.heads.roi_box.RoIHeadBase`'s (detectron2's
recipe). From the ``hidden_dim`` vector of a RoI: ``cls_score`` (K + 1 logits, column 0 the
background, the convention of the open-vocabulary classifier) and ``bbox_pred`` (4 deltas per
class, `BoxCoder` weights (10, 10, 5, 5)), as torchvision's `FastRCNNPredictor` without the
background's deltas. Class c's detection weights: ``cls_score.weight[1 + c]`` (hidden_dim) and
``bbox_pred.weight[4c : 4c + 4]`` (4 x hidden_dim), concatenated for "cls+box" (5120-d with
the paper's 1024-d box head).

Losses over the sampled RoIs of the batch: cross-entropy over the K + 1 classes and smooth L1
(beta 1/9) of the positives' deltas of their own class, both divided by the number of sampled
RoIs (torchvision's `fastrcnn_loss`). Inference: softmax scores, the class's own deltas,
candidates above the score threshold, class-wise NMS, the best ``detections_per_image``
(torchvision's `postprocess_detections`).

Naming convention: R = RoIs of the batch, K = classes of the model, C = classes asked for at
inference, P = proposals of one image, H = hidden_dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import alp_curation.torchvision_fix  # noqa: F401

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image

from models.heads.diagnostics import TrainingLosses, foreground_accuracy
from models.heads.roi_box import RoIHeadBase, Samples, best_detections
from models.ops import concat_boxes, zero_weighted

__all__ = ["DETECTION_WEIGHTS", "ClassRoIBoxHead"]

DETECTION_WEIGHTS = ("cls+box", "cls", "box")


class ClassRoIBoxHead(RoIHeadBase):
    """Class-specific RoI box head over ``num_classes`` classes (module doc)."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int],
        roi_size: int = 7,
        hidden_dim: int = 1024,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou: float = 0.5,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            strides=strides,
            roi_size=roi_size,
            hidden_dim=hidden_dim,
            batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction,
            fg_iou=fg_iou,
        )
        self.num_classes = num_classes
        self.cls_score = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(hidden_dim, 4 * num_classes)
        # detectron2's initialisation of the predictors.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(
        self, features: Sequence[Tensor], boxes_per_image: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Logits (R, K + 1) and per-class deltas (R, K, 4) of the boxes of every image."""
        return self._predict(self.hidden(features, *concat_boxes(boxes_per_image)))

    def _predict(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        deltas = self.bbox_pred(hidden).view(len(hidden), self.num_classes, 4)  # (R, K, 4)
        return self.cls_score(hidden), deltas

    def detection_weights(self, kind: str = "cls+box") -> Tensor:
        """Each class's detection weights w_det, (K, H), (K, 4H) or (K, 5H): the rows of the
        classification layer without the background's, the class's four regression rows
        flattened, or both concatenated (Hu et al. Sec. 3.1)."""
        w_cls = self.cls_score.weight[1:]  # (K, H)
        w_box = self.bbox_pred.weight.view(self.num_classes, 4 * self.hidden_dim)  # (K, 4H)
        if kind == "cls":
            return w_cls
        if kind == "box":
            return w_box
        if kind == "cls+box":
            return torch.cat([w_cls, w_box], dim=1)  # (K, 5H)
        raise ValueError(f"detection weights: expected one of {DETECTION_WEIGHTS}, got {kind!r}")

    # ------------------------------------------------------------------------------------------
    # Training

    def losses(
        self,
        features: Sequence[Tensor],
        samples: Samples,
        gt_boxes: Tensor,
        gt_classes: Tensor,
    ) -> TrainingLosses:
        """``loss_cls`` and ``loss_box_reg`` over the sampled RoIs; ``gt_boxes`` (M, 4) and
        ``gt_classes`` (M,) int64 (0..K-1) are the batch's box-supervised instances, which the
        samples' ``gt_index`` indexes. Diagnostics: the foreground accuracy of the positive
        RoIs (`models.heads.diagnostics`)."""
        hidden = self.hidden(features, samples.boxes, samples.batch)  # (R, H)
        logits, deltas = self._predict(hidden)  # (R, K + 1), (R, K, 4)
        keep = zero_weighted(logits, deltas)
        num_sampled = len(samples.boxes)
        if num_sampled == 0:
            return TrainingLosses({"loss_cls": keep, "loss_box_reg": keep})
        foreground = samples.gt_index >= 0  # (R,)
        labels = torch.zeros_like(samples.gt_index)
        labels[foreground] = gt_classes[samples.gt_index[foreground]] + 1
        loss_cls = F.cross_entropy(logits.float(), labels, reduction="sum") / num_sampled
        rows = torch.where(foreground)[0]
        own = deltas[rows, labels[rows] - 1]  # (R_fg, 4): each positive's class's deltas
        matched = gt_boxes[samples.gt_index[rows]]  # (R_fg, 4)
        targets = self.box_coder.encode_single(matched, samples.boxes[rows])
        loss_box = F.smooth_l1_loss(own.float(), targets, beta=1 / 9, reduction="sum") / num_sampled
        return TrainingLosses(
            {"loss_cls": loss_cls + keep, "loss_box_reg": loss_box + keep},
            foreground_accuracy(logits, labels),
        )

    # ------------------------------------------------------------------------------------------
    # Inference

    def predict(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        classes: Tensor,
        image_size: tuple[int, int],
        *,
        score_threshold: float,
        nms_threshold: float,
        detections_per_image: int,
    ) -> list[dict[str, Tensor]]:
        """Per image: the softmax probability of each class of ``classes`` (C,) int64 (indices
        of the model's classes), the proposal refined by that class's deltas, candidates above
        ``score_threshold``, class-wise NMS, the best ``detections_per_image``. ``labels`` are
        positions in ``classes``."""
        logits, deltas = self(features, proposals)  # (R, K + 1), (R, K, 4)
        probs = logits.float().softmax(dim=1)[:, 1:][:, classes]  # (R, C)
        deltas = deltas[:, classes].float()  # (R, C, 4)
        anchors = torch.cat(list(proposals))  # (R, 4)
        num_rois, num_classes = probs.shape
        refined = self.box_coder.decode_single(
            deltas.reshape(-1, 4), anchors[:, None].expand(-1, num_classes, 4).reshape(-1, 4)
        ).view(num_rois, num_classes, 4)  # (R, C, 4)
        counts = [len(p) for p in proposals]
        detections = []
        for boxes, scores in zip(refined.split(counts), probs.split(counts), strict=True):
            boxes = clip_boxes_to_image(boxes.reshape(-1, 4), image_size).view(-1, num_classes, 4)
            detections.append(
                best_detections(
                    boxes,
                    scores,
                    score_threshold=score_threshold,
                    nms_threshold=nms_threshold,
                    detections_per_image=detections_per_image,
                )
            )
        return detections
