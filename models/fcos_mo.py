"""FCOS-MO: FCOS with a mask head and an open-vocabulary classifier (ALP paper, Sec. 3.2-3.4).

    model = FCOSMO(backbone="resnet50", text_dim=512)
    losses = model(images, targets)                       # training: dict of 4 scalar losses
    model.eval()
    detections = model(images, class_embeddings=names_d)  # list of per-image dicts

The maths (matching, targets, classifier logits, decoding) are free functions in
`models.fcos_losses`, re-exported here; the backbone is `models.backbone.ResNetFPN`, the mask
heads are in `models.mask_heads`, RoI Align in `models.ops`.

Naming convention: B = images, L = FPN levels (P3..P7), R = locations of one image over all
levels, N = B * R, M = ground-truth boxes of the batch, P = positive locations, U = unique
phrases of the batch, C = classes at inference, D = text_dim, K = detections / mask RoIs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import batched_nms, generalized_box_iou_loss

from models.backbone import ResNetFPN, make_norm
from models.fcos_losses import (
    centerness_targets,
    contrastive_logits,
    contrastive_loss,
    decode_boxes,
    fcos_match,
    level_ranges,
    locations,
    regression_targets,
)
from models.mask_heads import build_mask_head
from models.ops import multilevel_roi_align, roi_align

__all__ = [
    "FCOSMO",
    "centerness_targets",
    "contrastive_logits",
    "contrastive_loss",
    "decode_boxes",
    "fcos_match",
]

HEAD_NORMS = ("GN", "BN", "none")
SIZE_DIVISIBILITY = 128  # the stride of P7
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level on the box branch, as FCOS)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSMOHead(nn.Module):
    """Shared FCOS heads over the levels: classification tower -> 1x1 projection to ``text_dim``;
    box tower -> (l, t, r, b) in strides (per-level Scale, ReLU) and centerness logits.

    Towers are ``num_convs`` x (conv3x3 -> norm -> ReLU) with shared convs; with ``norm="BN"``
    each level keeps its own BatchNorms (paper Sec. 3.4), with "GN" the GroupNorms are shared.
    """

    def __init__(
        self,
        *,
        channels: int,
        num_convs: int,
        text_dim: int,
        norm: str,
        num_levels: int,
        use_centerness: bool,
    ) -> None:
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ValueError(f"head_norm: expected one of {HEAD_NORMS}, got {norm!r}")
        self.num_levels = num_levels
        self.cls_convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs)
        )
        self.box_convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs)
        )
        self.cls_norms = self._norms(norm, channels, num_convs, num_levels)
        self.box_norms = self._norms(norm, channels, num_convs, num_levels)
        self.cls_embed = nn.Conv2d(channels, text_dim, 1)
        self.box_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1) if use_centerness else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        # Every side starts at 1 stride, in the linear part of the ReLU: with a zero bias about
        # half the sides start at 0, and a side stuck there never receives a gradient again.
        nn.init.constant_(self.box_pred.bias, 1.0)

    @staticmethod
    def _norms(norm: str, channels: int, num_convs: int, num_levels: int) -> nn.ModuleList:
        """norms[level][conv]: one set per level for BN; one shared set otherwise."""

        def make() -> nn.Module:
            return nn.Identity() if norm == "none" else make_norm(norm)(channels)

        sets = num_levels if norm == "BN" else 1
        return nn.ModuleList(nn.ModuleList(make() for _ in range(num_convs)) for _ in range(sets))

    def _tower(self, x: Tensor, convs: nn.ModuleList, norms: nn.ModuleList, level: int) -> Tensor:
        level_norms = norms[level if len(norms) > 1 else 0]
        for conv, norm in zip(convs, level_norms, strict=True):
            x = F.relu(norm(conv(x)))
        return x

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per level: embeddings (B, D, h, w), (l, t, r, b) (B, 4, h, w) >= 0 in strides, and
        centerness logits (B, 1, h, w) (an empty list without the centerness branch)."""
        if len(features) != self.num_levels:
            raise ValueError(f"head: expected {self.num_levels} levels, got {len(features)}")
        embeds, boxes, centers = [], [], []
        for level, feature in enumerate(features):
            cls = self._tower(feature, self.cls_convs, self.cls_norms, level)
            box = self._tower(feature, self.box_convs, self.box_norms, level)
            embeds.append(self.cls_embed(cls))
            boxes.append(F.relu(self.scales[level](self.box_pred(box))))
            if self.centerness is not None:
                centers.append(self.centerness(box))
        return embeds, boxes, centers


def _flatten(maps: list[Tensor]) -> Tensor:
    """Per-level (B, X, h, w) maps -> (B, R, X), levels concatenated, row-major within one."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # (B, R, X)


def _mean_over_ranks(value: Tensor) -> Tensor:
    """The mean of a scalar over torch.distributed ranks (itself when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


class FCOSMO(nn.Module):
    """FCOS-MO instance segmentation with an open-vocabulary classifier.

    Input ``images``: uint8 or float (B, 3, H, W), RGB 0-255; normalised here with the ImageNet
    mean / std. H and W should be multiples of 128 (the P7 stride); other sizes are padded at the
    bottom / right with zeros after normalisation, and outputs still refer to the unpadded image.

    Training (``self.training``): ``targets`` is a list of B dicts (N instances each):
    ``boxes_xyxy_px`` float (N, 4) pixels; ``phrase_ids`` int64 (N,); ``text_embeddings`` float
    (N, text_dim) (may be None only when N == 0); ``is_alp`` bool (N,) (True: no box regression;
    all False when absent); ``masks`` bool (N, H, W) or None; ``has_mask`` bool (N,) (the mask
    row is real; all True when absent and ``masks`` is given). Returns scalar losses
    ``{"loss_cls", "loss_box", "loss_centerness", "loss_mask"}``, total = their sum. Every
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
        super().__init__()
        self.backbone = ResNetFPN(
            name=backbone, weights=backbone_weights, norm=backbone_norm, fpn_channels=fpn_channels
        )
        self.strides = tuple(self.backbone.strides)
        self.ranges = level_ranges(size_ranges)
        if len(self.ranges) != len(self.strides):
            raise ValueError(
                f"size_ranges: expected {len(self.strides) - 1} boundaries for the levels "
                f"P3..P7, got {tuple(size_ranges)}"
            )
        if tau <= 0:
            raise ValueError(f"tau: expected > 0, got {tau}")
        self.head = FCOSMOHead(
            channels=fpn_channels,
            num_convs=head_convs,
            text_dim=text_dim,
            norm=head_norm,
            num_levels=len(self.strides),
            use_centerness=use_centerness,
        )
        self.mask_head = build_mask_head(mask_head, fpn_channels, mask_channels)
        self.text_dim = text_dim
        self.mask_roi_size = mask_roi_size
        self.tau = tau
        self.background_alpha = background_alpha
        self.center_sampling_radius = center_sampling_radius
        self.use_centerness = use_centerness
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.pre_nms_topk = pre_nms_topk
        self.detections_per_image = detections_per_image
        self.register_buffer(
            "pixel_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False
        )

    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor,
        targets: list[dict] | None = None,
        *,
        class_embeddings: Tensor | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
        image_size = (images.shape[-2], images.shape[-1])
        features = self.backbone(self._normalise(images))
        if self.training:
            if targets is None or len(targets) != images.shape[0]:
                raise ValueError(
                    f"targets: training needs one target dict per image ({images.shape[0]}), "
                    f"got {None if targets is None else len(targets)}"
                )
            return self._losses(features, targets, image_size)
        if class_embeddings is None:
            raise ValueError("class_embeddings: inference needs (C, text_dim) class embeddings")
        if class_embeddings.dim() != 2 or class_embeddings.shape[1] != self.text_dim:
            raise ValueError(
                f"class_embeddings: expected (C, {self.text_dim}), got "
                f"{tuple(class_embeddings.shape)}"
            )
        with torch.no_grad():
            return self._inference(features, class_embeddings, image_size)

    def _normalise(self, images: Tensor) -> Tensor:
        x = (images.float() - self.pixel_mean) / self.pixel_std
        pad_h = -x.shape[-2] % SIZE_DIVISIBILITY
        pad_w = -x.shape[-1] % SIZE_DIVISIBILITY
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def _locations(self, maps: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        sizes = [(m.shape[-2], m.shape[-1]) for m in maps]
        return locations(sizes, self.strides, self.ranges, device=maps[0].device)

    # ------------------------------------------------------------------------------------------
    def _losses(
        self, features: list[Tensor], targets: list[dict], image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        embeds, regs, centers = self.head(features)
        points, strides, ranges = self._locations(embeds)
        gt = _gather_targets(targets, self.text_dim, image_size)
        num_locations = points.shape[0]

        # Match each image's locations to its own boxes; indices become batch-global.
        matches = []
        for boxes, offset in zip(gt.boxes_per_image, gt.offsets, strict=True):
            match = fcos_match(points, strides, ranges, boxes, self.center_sampling_radius)
            matches.append(torch.where(match >= 0, match + offset, match))
        gt_index = torch.stack(matches).flatten()  # (N,)
        positive = (gt_index >= 0).nonzero().squeeze(1)  # (P,)
        matched = gt_index[positive]  # (P,)
        num_positive = _mean_over_ranks(positive.new_tensor(positive.numel(), dtype=torch.float))
        normaliser = num_positive.clamp(min=1.0)

        # Classification (Sec. 3.2): candidates = [background] + unique phrases of the batch.
        embed_flat = _flatten(embeds).flatten(0, 1)  # (N, D)
        inverse, candidates = _phrase_candidates(gt.phrase_ids, gt.text_embeddings)
        labels = torch.zeros_like(gt_index)
        labels[positive] = inverse[matched] + 1
        logits = contrastive_logits(embed_flat, candidates, self.tau)
        loss_cls = contrastive_loss(logits, labels, self.background_alpha).sum() / normaliser

        # Box regression (non-ALP positives) and centerness (all positives), in stride units.
        location = positive % num_locations  # (P,)
        ltrb_target = regression_targets(points[location], gt.boxes[matched])
        ltrb_target = ltrb_target / strides[location, None]  # (P, 4)
        center_target = centerness_targets(ltrb_target)  # (P,)
        reg_flat = _flatten(regs).flatten(0, 1)  # (N, 4)
        regress = ~gt.is_alp[matched]  # (P,)
        pred_ltrb = reg_flat[positive][regress].float()
        weights = center_target[regress]
        giou = generalized_box_iou_loss(
            decode_boxes(pred_ltrb.new_zeros(len(pred_ltrb), 2), pred_ltrb),
            decode_boxes(pred_ltrb.new_zeros(len(pred_ltrb), 2), ltrb_target[regress]),
            reduction="none",
        )  # (P',)
        weight_sum = _mean_over_ranks(weights.sum().detach()).clamp(min=1e-6)
        loss_box = (giou * weights).sum() / weight_sum + reg_flat.sum() * 0.0

        if self.use_centerness:
            center_flat = _flatten(centers).flatten()  # (N,)
            loss_centerness = (
                F.binary_cross_entropy_with_logits(
                    center_flat[positive].float(), center_target, reduction="sum"
                )
                / normaliser
                + center_flat.sum() * 0.0
            )
        else:
            loss_centerness = loss_cls.new_zeros(())

        loss_mask = self._mask_loss(features, gt)
        # Zero-weighted: keeps the classifier in the graph when the batch has no phrase.
        loss_cls = loss_cls + embed_flat.sum() * 0.0
        return {
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "loss_centerness": loss_centerness,
            "loss_mask": loss_mask,
        }

    def _mask_loss(self, features: list[Tensor], gt: _Targets) -> Tensor:
        """BCE of the mask head on GT boxes with masks (Sec. 3.2: trained on GT boxes only)."""
        size = self.mask_roi_size
        rois = multilevel_roi_align(
            features, gt.mask_boxes, gt.mask_batch, size, self.strides
        )  # (K, C, S, S)
        logits = self.mask_head(rois)  # (K, 1, 2S, 2S)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        targets = torch.cat([_mask_targets(masks, boxes, 2 * size) for masks, boxes in gt.masks])
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())

    # ------------------------------------------------------------------------------------------
    def _inference(
        self, features: list[Tensor], class_embeddings: Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        embeds, regs, centers = self.head(features)
        points, strides, _ = self._locations(embeds)
        counts = [e.shape[-2] * e.shape[-1] for e in embeds]  # locations per level
        embed_flat, reg_flat = _flatten(embeds), _flatten(regs)  # (B, R, D), (B, R, 4)
        center_flat = _flatten(centers)[..., 0].sigmoid() if centers else None  # (B, R)
        num_classes = max(1, class_embeddings.shape[0])  # no classes: no candidates either
        height, width = image_size
        detections = []
        for b in range(embed_flat.shape[0]):
            logits = contrastive_logits(embed_flat[b], class_embeddings, self.tau)  # (R, 1 + C)
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
        self._predict_masks(features, detections, image_size)
        return detections

    def _predict_masks(
        self, features: list[Tensor], detections: list[dict[str, Tensor]], size: tuple[int, int]
    ) -> None:
        """Mask head on the kept boxes of all images at once, pasted into each image."""
        boxes = torch.cat([d["boxes_xyxy_px"] for d in detections])  # (K, 4)
        batch = torch.cat(
            [
                torch.full((len(d["boxes_xyxy_px"]),), b, dtype=torch.long, device=boxes.device)
                for b, d in enumerate(detections)
            ]
        )  # (K,)
        rois = multilevel_roi_align(features, boxes, batch, self.mask_roi_size, self.strides)
        probs = self.mask_head(rois).sigmoid().float()  # (K, 1, 2S, 2S)
        counts = [len(d["boxes_xyxy_px"]) for d in detections]
        for d, mask in zip(detections, probs.split(counts), strict=True):
            d["masks"] = paste_masks_in_image(mask, d["boxes_xyxy_px"], size)  # (k, 1, H, W)


@dataclass(frozen=True)
class _Targets:
    """The targets of a batch, concatenated over images (M instances, K of them with masks)."""

    boxes_per_image: list[Tensor]  # (N_i, 4) each
    offsets: list[int]  # index of each image's first instance in the batch
    boxes: Tensor  # (M, 4)
    phrase_ids: Tensor  # (M,) int64
    text_embeddings: Tensor  # (M, D)
    is_alp: Tensor  # (M,) bool
    mask_boxes: Tensor  # (K, 4)
    mask_batch: Tensor  # (K,) image of each mask box
    masks: list[tuple[Tensor, Tensor]]  # per image with masks: (k, H, W) masks, (k, 4) boxes


def _gather_targets(targets: list[dict], text_dim: int, image_size: tuple[int, int]) -> _Targets:
    """Concatenate and check the per-image targets (the errors name the image and the field)."""
    boxes_per_image, offsets, phrase_ids, embeddings, is_alp = [], [], [], [], []
    mask_boxes, mask_batch, masks = [], [], []
    offset = 0
    for i, target in enumerate(targets):
        boxes = target.get("boxes_xyxy_px")
        if boxes is None or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"targets[{i}]['boxes_xyxy_px']: expected float (N, 4), got "
                f"{None if boxes is None else tuple(boxes.shape)}"
            )
        boxes = boxes.float()
        n = boxes.shape[0]
        ids = target.get("phrase_ids")
        if ids is None or ids.shape != (n,):
            raise ValueError(
                f"targets[{i}]['phrase_ids']: expected int64 ({n},), got "
                f"{None if ids is None else tuple(ids.shape)}"
            )
        emb = target.get("text_embeddings")
        if emb is None:
            if n:
                raise ValueError(
                    f"targets[{i}]['text_embeddings'] is None but the image has {n} instances: "
                    "give the dataset class embeddings (CocoShardDataset(class_embeddings=...))"
                )
            emb = boxes.new_zeros(0, text_dim)
        if emb.shape != (n, text_dim):
            raise ValueError(
                f"targets[{i}]['text_embeddings']: expected ({n}, {text_dim}) (text_dim of the "
                f"model), got {tuple(emb.shape)}"
            )
        alp = target.get("is_alp")
        alp = torch.zeros(n, dtype=torch.bool, device=boxes.device) if alp is None else alp.bool()
        image_masks = target.get("masks")
        if image_masks is not None:
            has_mask = target.get("has_mask")
            has_mask = torch.ones_like(alp) if has_mask is None else has_mask.bool()
            if image_masks.dim() != 3 or image_masks.shape[0] != n:
                raise ValueError(
                    f"targets[{i}]['masks']: expected bool ({n}, H, W), got "
                    f"{tuple(image_masks.shape)}"
                )
            if tuple(image_masks.shape[1:]) != image_size:
                raise ValueError(
                    f"targets[{i}]['masks']: mask size {tuple(image_masks.shape[1:])} differs "
                    f"from the image size {image_size}"
                )
            if has_mask.any():
                masks.append((image_masks[has_mask], boxes[has_mask]))
                mask_boxes.append(boxes[has_mask])
                mask_batch.append(torch.full((int(has_mask.sum()),), i, dtype=torch.long))
        boxes_per_image.append(boxes)
        offsets.append(offset)
        offset += n
        phrase_ids.append(ids.long())
        embeddings.append(emb.float())
        is_alp.append(alp)
    device = targets[0]["boxes_xyxy_px"].device
    return _Targets(
        boxes_per_image=boxes_per_image,
        offsets=offsets,
        boxes=torch.cat(boxes_per_image),
        phrase_ids=torch.cat(phrase_ids),
        text_embeddings=torch.cat(embeddings),
        is_alp=torch.cat(is_alp),
        mask_boxes=torch.cat(mask_boxes) if mask_boxes else torch.zeros(0, 4, device=device),
        mask_batch=(
            torch.cat(mask_batch).to(device)
            if mask_batch
            else torch.zeros(0, dtype=torch.long, device=device)
        ),
        masks=masks,
    )


def _mask_targets(masks: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Binary (k, 1, size, size) targets: each (H, W) mask RoI-aligned by its own box and
    thresholded at 0.5 (one grid_sample call for the image's k masks)."""
    index = torch.arange(len(boxes), device=boxes.device)
    return roi_align(masks[:, None].float(), boxes, index, size, 1.0) >= 0.5


def _phrase_candidates(phrase_ids: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor]:
    """Unique phrases of the batch: (M,) index of each instance's phrase, (U, D) embeddings
    (those of each phrase's first instance)."""
    unique_ids, inverse = torch.unique(phrase_ids, return_inverse=True)  # (U,), (M,)
    first = torch.full_like(unique_ids, phrase_ids.numel()).scatter_reduce(
        0, inverse, torch.arange(inverse.numel(), device=inverse.device), reduce="amin"
    )  # (U,)
    return inverse, embeddings[first]
