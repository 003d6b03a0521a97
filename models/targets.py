"""The training targets every detector reads, checked and concatenated over the batch.

A detector's ``forward(images, targets)`` takes one dict per image, N instances each, as the
datasets of `alp_dataset.datasets` give them (after `alp_dataset.loader.collate`):

===================== =========================================================================
``boxes_xyxy_px``     float (N, 4) pixels of the input image
``phrase_ids``        int64 (N,): the phrase (or class name) id; equal ids share an embedding
``text_embeddings``   float (N, D) phrase embeddings (may be None only when N == 0)
``is_alp``            bool (N,), optional: the box is an ALP's (FCOS-MO trains no box regression
                      on it; Mask R-CNN* does)
``masks``             bool (N, H, W) or None; ``has_mask`` bool (N,): the mask row is real
                      (all True when absent and ``masks`` is given)
``image_labels_only`` bool, optional (default False): the image's instances are image-level
                      labels: only their phrases are used, not their boxes, and the image
                      trains no box, proposal or background loss (the ALP paper's "ALPs
                      without boxes", Sec. 4)
===================== =========================================================================

`gather_targets` turns them into one `Targets`; its errors name the image and the field.

Naming convention: M = box-supervised instances of the batch, K = of those with masks, L = image
labels of the batch, D = text_dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["TARGET_KEYS", "Targets", "gather_targets"]

# The entries of a target dict that detectors read (the training loop moves these to the device).
TARGET_KEYS = (
    "boxes_xyxy_px",
    "masks",
    "has_mask",
    "is_alp",
    "image_labels_only",
    "phrase_ids",
    "text_embeddings",
)


@dataclass(frozen=True)
class Targets:
    """The targets of a batch of B images, box-supervised instances concatenated (module doc)."""

    boxes_per_image: list[Tensor]  # B x (M_i, 4)
    offsets: list[int]  # index of each image's first instance in the concatenation
    boxes: Tensor  # (M, 4)
    phrase_ids: Tensor  # (M,) int64
    text_embeddings: Tensor  # (M, D)
    is_alp: Tensor  # (M,) bool
    mask_boxes: Tensor  # (K, 4)
    mask_batch: Tensor  # (K,) int64: the image of each mask box
    mask_instances: Tensor  # (K,) int64: the box-supervised instance (of M) of each mask
    masks: list[tuple[Tensor, Tensor]]  # per image with masks: (k, H, W) masks, (k, 4) boxes
    boxes_annotated: list[bool]  # B: False for images of image labels only
    label_ids_per_image: list[Tensor]  # B x (L_i,) int64: phrase ids of the image labels
    label_embeddings_per_image: list[Tensor]  # B x (L_i, D)

    def all_phrases(self) -> tuple[Tensor, Tensor]:
        """Phrase ids (M + L,) and embeddings (M + L, D) of every instance, boxed or not."""
        ids = torch.cat([self.phrase_ids, *self.label_ids_per_image])
        embeddings = torch.cat([self.text_embeddings, *self.label_embeddings_per_image])
        return ids, embeddings


def _flag(target: Mapping[str, Any], key: str, n: int, default: bool, device: Any) -> Tensor:
    value = target.get(key)
    if value is None:
        return torch.full((n,), default, dtype=torch.bool, device=device)
    return value.bool()


def gather_targets(
    targets: Sequence[Mapping[str, Any]], text_dim: int, image_size: tuple[int, int]
) -> Targets:
    """Check the per-image target dicts (module doc) and concatenate them."""
    boxes_per_image, offsets, phrase_ids, embeddings, is_alp = [], [], [], [], []
    mask_boxes, mask_batch, mask_instances, masks = [], [], [], []
    annotated, label_ids, label_embeddings = [], [], []
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
        alp = _flag(target, "is_alp", n, False, boxes.device)
        labels_only = bool(target.get("image_labels_only", False))
        boxed = torch.full((n,), not labels_only, dtype=torch.bool, device=boxes.device)
        image_masks = target.get("masks")
        if image_masks is not None:
            has_mask = _flag(target, "has_mask", n, True, boxes.device)
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
            has_mask = has_mask & boxed  # an image label has no box, so no mask either
            if has_mask.any():
                masks.append((image_masks[has_mask], boxes[has_mask]))
                mask_boxes.append(boxes[has_mask])
                mask_batch.append(torch.full((int(has_mask.sum()),), i, dtype=torch.long))
                # Position among the image's boxed instances, then in the batch's M.
                within = torch.cumsum(boxed.long(), 0) - 1  # (N,)
                mask_instances.append(within[has_mask].cpu() + offset)
        boxes_per_image.append(boxes[boxed])
        offsets.append(offset)
        offset += int(boxed.sum())
        phrase_ids.append(ids.long()[boxed])
        embeddings.append(emb.float()[boxed])
        is_alp.append(alp[boxed])
        annotated.append(not labels_only)
        label_ids.append(ids.long()[~boxed])
        label_embeddings.append(emb.float()[~boxed])
    device = targets[0]["boxes_xyxy_px"].device
    return Targets(
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
        mask_instances=(
            torch.cat(mask_instances).to(device)
            if mask_instances
            else torch.zeros(0, dtype=torch.long, device=device)
        ),
        masks=masks,
        boxes_annotated=annotated,
        label_ids_per_image=label_ids,
        label_embeddings_per_image=label_embeddings,
    )
