"""The region proposal network of Mask R-CNN*: torchvision's, with two additions.

    rpn = build_rpn(in_channels=256, anchor_sizes=(32, 64, 128, 256, 512), ...)
    proposals, objectness, losses = rpn(images, image_size, features, gt_boxes)

Everything that decides the numbers is torchvision's: `AnchorGenerator` (one size per level,
every aspect ratio at each), `RPNHead` (conv3x3 + ReLU, then objectness and box deltas per
anchor), the `Matcher` (IoU >= fg positive, < bg negative, each GT box's best anchors positive
too), the balanced sampler, `BoxCoder`, per-level top-k, per-level NMS and the losses
(binary cross-entropy and smooth L1 with beta 1/9 over the sampled anchors).

What `ProposalNetwork` adds, and why torchvision's ``forward`` cannot be used as it is:

1. it returns the objectness probability of every proposal (torchvision drops it), which
   Mask R-CNN* multiplies into its scores at inference (ALP paper Sec. 4, after ViLD / Detic);
2. images whose boxes are not annotated (image labels only, ``None`` in ``gt_boxes``) train
   nothing: their anchors are ignored instead of all becoming negatives, and a batch of only
   such images gives zero-weighted losses that keep the head in the graph (torchvision would
   divide by zero sampled anchors).

Naming convention: B = images, A = anchors of one image over all levels, G = ground-truth boxes
of one image, P = proposals kept of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import alp_curation.torchvision_fix  # noqa: F401

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)

from models.ops import zero_weighted

__all__ = ["ProposalNetwork", "anchor_generator", "build_rpn"]


class ProposalNetwork(RegionProposalNetwork):
    """torchvision's `RegionProposalNetwork` (module doc), called as
    ``rpn(images, image_size, features, gt_boxes)``.

    Args of ``forward``:
        images: the padded, normalised batch (B, 3, H', W') (anchors are laid out over it).
        image_size: (H, W) of the unpadded images (proposals are clipped to it).
        features: the FPN maps, finest first, one anchor size each.
        gt_boxes: training only, per image the (G, 4) boxes, or None for an image whose boxes
            are not annotated.

    Returns per image the (P, 4) proposals and their (P,) objectness probabilities (highest
    first), and the losses ``{"loss_objectness", "loss_rpn_box_reg"}`` (empty in eval mode).
    """

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        image_size: tuple[int, int],
        features: Sequence[Tensor],
        gt_boxes: Sequence[Tensor | None] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        batch = images.shape[0]
        image_list = ImageList(images, [image_size] * batch)
        features = list(features)
        objectness, deltas = self.head(features)  # per level: (B, A_l, h, w), (B, 4 A_l, h, w)
        anchors = self.anchor_generator(image_list, features)  # B x (A, 4)
        per_level = [o[0].numel() for o in objectness]  # anchors per level
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)  # (B A, 1), (B A, 4)
        # Proposals do not back-propagate into the RPN (Faster R-CNN's approximate joint
        # training, as torchvision and detectron2).
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(batch, -1, 4)
        boxes, scores = self.filter_proposals(
            proposals, objectness, image_list.image_sizes, per_level
        )
        losses: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None or len(gt_boxes) != batch:
                raise ValueError("ProposalNetwork: training needs gt_boxes for every image")
            losses = self._losses(anchors, objectness, deltas, gt_boxes)
        return boxes, scores, losses

    def _losses(
        self,
        anchors: list[Tensor],
        objectness: Tensor,
        deltas: Tensor,
        gt_boxes: Sequence[Tensor | None],
    ) -> dict[str, Tensor]:
        empty = torch.zeros(0, 4, device=objectness.device)
        targets = [{"boxes": empty if b is None else b} for b in gt_boxes]
        labels, matched = self.assign_targets_to_anchors(anchors, targets)
        for i, boxes in enumerate(gt_boxes):
            if boxes is None:  # not annotated: no anchor is a negative either
                labels[i] = torch.full_like(labels[i], -1.0)
        regression_targets = self.box_coder.encode(matched, anchors)
        positives, negatives = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positives))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negatives))[0]])
        keep = zero_weighted(objectness, deltas)
        if sampled.numel() == 0:
            return {"loss_objectness": keep, "loss_rpn_box_reg": keep}
        labels_flat = torch.cat(labels)
        targets_flat = torch.cat(regression_targets)
        box_loss = (
            F.smooth_l1_loss(deltas[positive], targets_flat[positive], beta=1 / 9, reduction="sum")
            / sampled.numel()
        )
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], labels_flat[sampled]
        )
        return {"loss_objectness": objectness_loss + keep, "loss_rpn_box_reg": box_loss + keep}


def anchor_generator(
    anchor_sizes: Sequence[float], aspect_ratios: Sequence[float]
) -> AnchorGenerator:
    """torchvision's generator of one anchor size per level, every aspect ratio at each."""
    return AnchorGenerator(
        sizes=tuple((float(s),) for s in anchor_sizes),
        aspect_ratios=(tuple(float(r) for r in aspect_ratios),) * len(anchor_sizes),
    )


def build_rpn(
    *,
    in_channels: int,
    anchor_sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    fg_iou: float,
    bg_iou: float,
    batch_size: int,
    positive_fraction: float,
    pre_nms_topk: tuple[int, int],
    post_nms_topk: tuple[int, int],
    nms_threshold: float,
) -> ProposalNetwork:
    """The RPN of Mask R-CNN* over five levels, one anchor size per level; the top-k pairs are
    (training, inference)."""
    generator = anchor_generator(anchor_sizes, aspect_ratios)
    head = RPNHead(in_channels, generator.num_anchors_per_location()[0])
    return ProposalNetwork(
        generator,
        head,
        fg_iou_thresh=fg_iou,
        bg_iou_thresh=bg_iou,
        batch_size_per_image=batch_size,
        positive_fraction=positive_fraction,
        pre_nms_top_n={"training": pre_nms_topk[0], "testing": pre_nms_topk[1]},
        post_nms_top_n={"training": post_nms_topk[0], "testing": post_nms_topk[1]},
        nms_thresh=nms_threshold,
    )
