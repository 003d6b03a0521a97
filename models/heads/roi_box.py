"""The second stage of Mask R-CNN*: RoI box head with a class-agnostic regressor and the
open-vocabulary classifier (ALP paper Sec. 4, changes (1) and (3)).

    head = RoIBoxHead(in_channels=256, text_dim=512, strides=(4, 8, 16, 32, 64))
    losses = head.losses(features, proposals, gt)                 # loss_cls, loss_box_reg
    loss = head.image_label_loss(features, proposals, gt)          # ALPs without boxes
    detections = head.predict(features, proposals, objectness, class_embeddings, image_size, ...)

RoI features: 7 x 7 RoI Align (`models.ops.roi_align`, aligned as detectron2's, two samples per
bin and side as torchvision's) on the level of P2..P5 each box's size picks, then torchvision's
`TwoMLPHead` (two fully connected layers of ``hidden_dim``, ReLU). From that vector: one box
delta (4 numbers, class-agnostic, `BoxCoder` weights (10, 10, 5, 5)) and the phrase embedding
of the classifier. Why the project's RoI Align and not torchvision's `MultiScaleRoIAlign`: the
latter calls ``roi_align(..., aligned=False)`` (half-pixel offset; detectron2's R-CNN uses the
aligned version), and where torchvision's compiled ops are missing its pure-Python kernel
compiles for tens of seconds on a CPU.

Training (detectron2's / torchvision's recipe): the ground-truth boxes are added to each image's
proposals; torchvision's `Matcher` marks proposals with IoU >= ``fg_iou`` as positives of their
best box and the rest as background, and its `BalancedPositiveNegativeSampler` samples
``batch_size_per_image`` RoIs, at most ``positive_fraction`` positive. Losses over the sampled
RoIs of the batch: the classifier's cross-entropy over [background] + the batch's phrases (the
background's scaled by alpha) and smooth L1 (beta 1/9) on the positives' deltas, both divided
by the number of sampled RoIs. Images whose boxes are not annotated sample nothing.

Naming convention: B = images, P = proposals of one image, G = its ground-truth boxes, R = RoIs
of the batch, U = unique phrases of the batch, C = classes at inference, I = images with image
labels, D = text_dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import alp_curation.torchvision_fix  # noqa: F401

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import (
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
)
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from models.heads.diagnostics import TrainingLosses, foreground_accuracy
from models.heads.open_vocab import OpenVocabClassifier, phrase_candidates
from models.ops import concat_boxes, multilevel_roi_align, zero_weighted
from models.targets import Targets

__all__ = [
    "BOX_LEVELS",
    "MIN_BOX_SIDE",
    "RoIBoxHead",
    "RoIHeadBase",
    "Samples",
    "best_detections",
]

BOX_LEVELS = (2, 5)  # RoI features from P2..P5 (P6 feeds the RPN only)
MIN_BOX_SIDE = 1e-2  # inference drops boxes narrower than this, as torchvision's R-CNN


@dataclass(frozen=True)
class Samples:
    """The RoIs sampled for the second-stage losses (R of them over the batch)."""

    boxes: Tensor  # (R, 4)
    batch: Tensor  # (R,) int64: image of each RoI
    gt_index: Tensor  # (R,) int64: matched box among the batch's boxed instances, -1 background


class RoIHeadBase(nn.Module):
    """What the second stages of the two-stage detectors share: the RoI features (7 x 7 RoI
    Align on P2..P5, then torchvision's `TwoMLPHead`), the box coder, and the matching and
    sampling of the RoIs their losses are computed on (module doc). Subclasses add predictors
    on the ``hidden_dim`` vector."""

    def __init__(
        self,
        *,
        in_channels: int,
        strides: Sequence[int],
        roi_size: int = 7,
        hidden_dim: int = 1024,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou: float = 0.5,
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.roi_size = roi_size
        self.hidden_dim = hidden_dim
        self.box_features = TwoMLPHead(in_channels * roi_size * roi_size, hidden_dim)
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        # Equal thresholds: no proposal is left between foreground and background.
        self.matcher = Matcher(fg_iou, fg_iou, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)

    def hidden(self, features: Sequence[Tensor], boxes: Tensor, batch: Tensor) -> Tensor:
        """The (R, hidden_dim) box-head vector of R boxes (``batch``: the image of each)."""
        rois = multilevel_roi_align(
            features, boxes, batch, self.roi_size, self.strides,
            min_level=BOX_LEVELS[0], max_level=BOX_LEVELS[1],
        )  # fmt: skip  # (R, C, S, S)
        return self.box_features(rois)

    def sample(self, proposals: Sequence[Tensor], gt: Targets) -> Samples:
        """The RoIs of the second-stage losses: per annotated image, its proposals plus its
        ground-truth boxes, matched and sampled (module doc)."""
        boxes, batch, gt_index = [], [], []
        for i, (props, gt_boxes) in enumerate(zip(proposals, gt.boxes_per_image, strict=True)):
            if not gt.boxes_annotated[i]:
                continue
            candidates = torch.cat([props.detach(), gt_boxes])  # (P + G, 4)
            if len(gt_boxes):
                matched = self.matcher(box_iou(gt_boxes, candidates))  # (P + G,): index or < 0
            else:
                matched = torch.full(
                    (len(candidates),), -1, dtype=torch.long, device=candidates.device
                )
            labels = (matched >= 0).to(torch.int64)  # 1 foreground, 0 background
            positive, negative = self.sampler([labels])
            chosen = torch.where(positive[0] | negative[0])[0]
            boxes.append(candidates[chosen])
            batch.append(torch.full((len(chosen),), i, dtype=torch.long, device=chosen.device))
            index = matched[chosen]
            gt_index.append(torch.where(index >= 0, index + gt.offsets[i], -1))
        device = gt.boxes.device
        if not boxes:
            return Samples(
                torch.zeros(0, 4, device=device),
                torch.zeros(0, dtype=torch.long, device=device),
                torch.zeros(0, dtype=torch.long, device=device),
            )
        return Samples(torch.cat(boxes), torch.cat(batch), torch.cat(gt_index))


class RoIBoxHead(RoIHeadBase):
    """RoI box head of Mask R-CNN* (module doc). ``forward(features, boxes_per_image)`` gives
    the projected phrase features (R, D) and class-agnostic box deltas (R, 4) of the RoIs."""

    def __init__(
        self,
        *,
        in_channels: int,
        text_dim: int,
        strides: Sequence[int],
        roi_size: int = 7,
        hidden_dim: int = 1024,
        tau: float = 0.01,
        background_alpha: float = 0.1,
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
        self.box_deltas = nn.Linear(hidden_dim, 4)
        self.classifier = OpenVocabClassifier(
            hidden_dim, text_dim, tau=tau, background_alpha=background_alpha, dense=False
        )
        # detectron2's initialisation of the predictors (small deltas at the start).
        nn.init.normal_(self.box_deltas.weight, std=0.001)
        nn.init.zeros_(self.box_deltas.bias)

    def forward(
        self, features: Sequence[Tensor], boxes_per_image: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        return self._embed(features, *concat_boxes(boxes_per_image))

    def _embed(
        self, features: Sequence[Tensor], boxes: Tensor, batch: Tensor
    ) -> tuple[Tensor, Tensor]:
        hidden = self.hidden(features, boxes, batch)  # (R, hidden)
        return self.classifier(hidden), self.box_deltas(hidden)  # (R, D), (R, 4)

    # ------------------------------------------------------------------------------------------
    # Training

    def losses(
        self, features: Sequence[Tensor], proposals: Sequence[Tensor], gt: Targets
    ) -> TrainingLosses:
        """``loss_cls`` and ``loss_box_reg`` over the sampled RoIs (module doc), with the
        foreground accuracy of the positive RoIs as diagnostics (`models.heads.diagnostics`)."""
        samples = self.sample(proposals, gt)
        embedded, deltas = self._embed(features, samples.boxes, samples.batch)  # (R, D), (R, 4)
        keep = zero_weighted(embedded, deltas)
        num_sampled = len(samples.boxes)
        if num_sampled == 0:
            return TrainingLosses({"loss_cls": keep, "loss_box_reg": keep})
        _, inverse, candidates = phrase_candidates(*gt.all_phrases())  # (M + L,), (U, D)
        foreground = samples.gt_index >= 0  # (R,)
        labels = torch.zeros_like(samples.gt_index)
        # The boxed instances come first in all_phrases(): gt_index indexes inverse directly.
        labels[foreground] = inverse[samples.gt_index[foreground]] + 1
        logits = self.classifier.logits(embedded, candidates)  # (R, 1 + U)
        loss_cls = self.classifier.loss(logits, labels).sum() / num_sampled
        matched = gt.boxes[samples.gt_index[foreground]]  # (R_fg, 4)
        targets = self.box_coder.encode_single(matched, samples.boxes[foreground])
        loss_box = (
            F.smooth_l1_loss(deltas[foreground].float(), targets, beta=1 / 9, reduction="sum")
            / num_sampled
        )
        return TrainingLosses(
            {"loss_cls": loss_cls + keep, "loss_box_reg": loss_box + keep},
            foreground_accuracy(logits, labels),
        )

    def image_label_loss(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt: Targets,
        image_size: tuple[int, int],
    ) -> Tensor:
        """Mean over the images of image labels of the soft-target loss of their largest-area
        proposal against every phrase of the batch (Detic's image-label loss as the ALP paper
        adapts it, Sec. 4); a zero-weighted term when the batch has none. The caller scales it
        by lambda. An image without proposals falls back to the whole-image box."""
        images = [
            i for i, ids in enumerate(gt.label_ids_per_image)
            if not gt.boxes_annotated[i] and len(ids)
        ]  # fmt: skip
        device = gt.boxes.device
        if not images:
            embedded, _ = self._embed(
                features,
                torch.zeros(0, 4, device=device),
                torch.zeros(0, dtype=torch.long, device=device),
            )
            return zero_weighted(embedded)
        height, width = image_size
        boxes = []
        for i in images:
            props = proposals[i].detach()
            if len(props):
                area = (props[:, 2] - props[:, 0]) * (props[:, 3] - props[:, 1])
                boxes.append(props[area.argmax()])
            else:
                boxes.append(torch.tensor([0.0, 0.0, width, height], device=device))
        batch = torch.tensor(images, dtype=torch.long, device=device)
        embedded, deltas = self._embed(features, torch.stack(boxes), batch)  # (I, D), (I, 4)
        unique_ids, _, candidates = phrase_candidates(*gt.all_phrases())  # (U,), (U, D)
        targets = embedded.new_zeros(len(images), len(unique_ids))  # (I, U)
        for row, i in enumerate(images):
            present = torch.unique(gt.label_ids_per_image[i])
            targets[row, torch.searchsorted(unique_ids, present)] = 1.0 / len(present)
        loss = self.classifier.image_label_loss(embedded, candidates, targets).mean()
        return loss + zero_weighted(deltas)

    # ------------------------------------------------------------------------------------------
    # Inference

    def predict(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        objectness: Sequence[Tensor],
        class_embeddings: Tensor,
        image_size: tuple[int, int],
        *,
        score_threshold: float,
        nms_threshold: float,
        detections_per_image: int,
    ) -> list[dict[str, Tensor]]:
        """Per image: score = sqrt(p(class) * objectness) with p from the (C + 1)-way softmax
        over the classes and the background (ALP paper Sec. 4, after ViLD and Detic); the
        proposal refined by the class-agnostic delta, shared by every class; candidates above
        ``score_threshold``, class-wise NMS, the best ``detections_per_image``."""
        embedded, deltas = self(features, proposals)  # (R, D), (R, 4)
        refined = self.box_coder.decode_single(deltas.float(), torch.cat(list(proposals)))
        probs = self.classifier.logits(embedded, class_embeddings).softmax(dim=1)[:, 1:]  # (R, C)
        counts = [len(p) for p in proposals]
        detections = []
        for boxes, p, obj in zip(refined.split(counts), probs.split(counts), objectness,
                                 strict=True):  # fmt: skip
            boxes = clip_boxes_to_image(boxes, image_size)  # (P, 4)
            scores = (p * obj[:, None].float()).sqrt()  # (P, C)
            detections.append(
                best_detections(
                    boxes[:, None].expand(-1, scores.shape[1], 4),
                    scores,
                    score_threshold=score_threshold,
                    nms_threshold=nms_threshold,
                    detections_per_image=detections_per_image,
                )
            )
        return detections


def best_detections(
    boxes: Tensor,
    scores: Tensor,
    *,
    score_threshold: float,
    nms_threshold: float,
    detections_per_image: int,
) -> dict[str, Tensor]:
    """One image's detections from (P, C, 4) boxes and (P, C) scores of P RoIs for C classes:
    the (RoI, class) pairs above ``score_threshold`` whose box is not degenerate, class-wise
    NMS, the best ``detections_per_image`` (torchvision's `postprocess_detections`)."""
    candidates = (scores > score_threshold).nonzero()  # (K', 2): proposal, class
    rows, labels = candidates[:, 0], candidates[:, 1]
    kept_boxes, kept_scores = boxes[rows, labels], scores[rows, labels]
    large = remove_small_boxes(kept_boxes, MIN_BOX_SIDE)
    kept_boxes, kept_scores, labels = kept_boxes[large], kept_scores[large], labels[large]
    keep = batched_nms(kept_boxes, kept_scores, labels, nms_threshold)[:detections_per_image]
    return {
        "boxes_xyxy_px": kept_boxes[keep].float(),
        "scores": kept_scores[keep].float(),
        "labels": labels[keep],
    }
