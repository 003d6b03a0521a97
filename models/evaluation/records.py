"""Detections and ground truth as both metrics read them (`models.evaluation.coco`,
`models.evaluation.open_images`): plain data, no model.

Ground truth is a COCO instances dict, predictions are per-image records, both in the pixels of
the original images (the shapes are in `models.evaluation`). `image_detections` checks a record
and turns its masks into compressed RLE; `prepare_gt` checks the ground truth and renumbers its
annotation ids 1..N (pycocotools reads id 0 as "unmatched").
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from alp_dataset.coco_shards import RleError, encode_mask, rle_counts, segmentation_to_rle

__all__ = [
    "SUBSETS",
    "GroundTruth",
    "ImageDetections",
    "Rle",
    "box_rle",
    "check_rle",
    "class_subsets",
    "image_detections",
    "keep_detections",
    "prepare_detections",
    "prepare_gt",
    "quiet",
]

SUBSETS = ("all", "base", "novel")
Rle = dict[str, Any]  # {"size": [H, W], "counts": str}, compressed COCO RLE


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image, in the pixels of the original image (K detections).

    Attributes:
        image_id: the ground-truth image id.
        boxes_xyxy_px: float64 (K, 4).
        scores: float64 (K,).
        category_ids: int64 (K,), ground-truth category ids.
        masks: K compressed RLEs of the image's size, or None (box metrics only).
    """

    image_id: int
    boxes_xyxy_px: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    masks: tuple[Rle, ...] | None = None

    def __post_init__(self) -> None:
        k = len(self.scores)
        where = f"detections of image {self.image_id}"
        if self.boxes_xyxy_px.shape != (k, 4):
            raise ValueError(f"{where}: boxes_xyxy_px is {self.boxes_xyxy_px.shape}, want ({k}, 4)")
        if self.category_ids.shape != (k,):
            raise ValueError(f"{where}: category_ids is {self.category_ids.shape}, want ({k},)")
        if self.masks is not None and len(self.masks) != k:
            raise ValueError(f"{where}: {len(self.masks)} masks for {k} scores")

    def top(self, max_dets: int) -> ImageDetections:
        """The ``max_dets`` highest-scoring detections (stable on ties), highest first."""
        order = np.argsort(-self.scores, kind="stable")[:max_dets]
        return ImageDetections(
            self.image_id,
            self.boxes_xyxy_px[order],
            self.scores[order],
            self.category_ids[order],
            None if self.masks is None else tuple(self.masks[i] for i in order),
        )


def _numpy(value: Any, dtype: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def image_detections(record: ImageDetections | Mapping[str, Any]) -> ImageDetections:
    """A record (keys ``image_id``, ``boxes_xyxy_px``, ``scores``, ``category_ids`` and
    optionally ``masks``; numpy arrays, tensors or lists) as `ImageDetections`. Masks may be
    bool / uint8 / {0, 1} float (K, H, W) arrays or tensors (encoded to RLE here) or K RLEs."""
    if isinstance(record, ImageDetections):
        return record
    missing = {"image_id", "boxes_xyxy_px", "scores", "category_ids"} - set(record)
    if missing:
        raise KeyError(f"detection record lacks {sorted(missing)}")
    image_id = int(record["image_id"])
    scores = _numpy(record["scores"], np.float64).reshape(-1)
    masks = record.get("masks")
    rles: tuple[Rle, ...] | None = None
    if masks is not None:
        if isinstance(masks, (torch.Tensor, np.ndarray)):
            array = _numpy(masks, None)
            if array.ndim != 3:
                raise ValueError(
                    f"detections of image {image_id}: masks must be (K, H, W), got {array.shape}"
                )
            rles = tuple(encode_mask(m > 0.5 if array.dtype.kind == "f" else m) for m in array)
        else:
            rles = tuple(
                check_rle(r, f"detections of image {image_id}: masks[{i}]")
                for i, r in enumerate(masks)
            )
    return ImageDetections(
        image_id=image_id,
        boxes_xyxy_px=_numpy(record["boxes_xyxy_px"], np.float64).reshape(-1, 4),
        scores=scores,
        category_ids=_numpy(record["category_ids"], np.int64).reshape(-1),
        masks=rles,
    )


def check_rle(rle: Mapping[str, Any], where: str) -> Rle:
    if not (isinstance(rle, Mapping) and "size" in rle and "counts" in rle):
        raise ValueError(f"{where}: expected an RLE {{size, counts}}, got {type(rle).__name__}")
    size = [int(v) for v in rle["size"]]
    counts = rle["counts"]
    counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
    if not isinstance(counts, str):
        raise ValueError(f"{where}: expected compressed RLE counts (str), got {type(counts)}")
    try:  # pycocotools trusts the runs and reads past its buffer when they lie
        covered = int(rle_counts(counts).sum())
    except RleError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if len(size) != 2 or covered != size[0] * size[1]:
        raise ValueError(f"{where}: runs cover {covered} pixels, size {size}")
    return {"size": size, "counts": counts}


# ---------------------------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class GroundTruth:
    """A checked copy of a COCO instances dict: annotation ids renumbered 1..N (pycocotools reads
    id 0 as "unmatched"), every field present, masks as compressed RLEs (None: box-only)."""

    images: dict[int, tuple[int, int]]  # image id -> (height, width)
    categories: dict[int, str]
    annotations: tuple[dict[str, Any], ...]


def prepare_gt(gt: Mapping[str, Any]) -> GroundTruth:
    for key in ("images", "categories", "annotations"):
        if key not in gt:
            raise KeyError(f"ground truth lacks {key!r} (a COCO instances dict is expected)")
    images = {int(i["id"]): (int(i["height"]), int(i["width"])) for i in gt["images"]}
    categories = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    annotations = []
    for n, ann in enumerate(gt["annotations"]):
        where = f"annotation {ann.get('id', f'#{n}')}"
        image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
        if image_id not in images:
            raise ValueError(f"{where}: image_id {image_id} is not among the images")
        if category_id not in categories:
            raise ValueError(f"{where}: category_id {category_id} is not among the categories")
        height, width = images[image_id]
        segmentation = ann.get("segmentation")
        rle = None
        if ann.get("has_mask", True) and segmentation:
            try:
                rle = segmentation_to_rle(segmentation, height, width)
            except RleError as exc:
                raise ValueError(f"{where}: {exc}") from None
        bbox = [float(v) for v in ann["bbox"]]
        if len(bbox) != 4:
            raise ValueError(f"{where}: bbox must be [x, y, w, h], got {ann['bbox']}")
        area = ann.get("area")
        if area is None:
            area = float(mask_utils.area(rle)) if rle is not None else bbox[2] * bbox[3]
        annotations.append(
            {
                "id": n + 1,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": bbox,
                "area": float(area),
                "iscrowd": int(bool(ann.get("iscrowd", 0))),
                "is_group_of": bool(ann.get("is_group_of", False)),
                "rle": rle,
            }
        )
    return GroundTruth(images, categories, tuple(annotations))


def box_rle(bbox_xywh: Sequence[float], height: int, width: int) -> Rle:
    box = np.asarray([bbox_xywh], dtype=np.float64)  # (1, 4) xywh
    rle = mask_utils.frPyObjects(box, height, width)[0]  # the box as a mask
    return check_rle(rle, "box")


def class_subsets(
    base_category_ids: Iterable[int], novel_category_ids: Iterable[int]
) -> dict[str, list[int]]:
    base = sorted({int(c) for c in base_category_ids})
    novel = sorted({int(c) for c in novel_category_ids})
    both = sorted(set(base) & set(novel))
    if both:
        raise ValueError(f"category ids {both} are both base and novel")
    return {"all": sorted(base + novel), "base": base, "novel": novel}


def prepare_detections(
    detections: Iterable[ImageDetections | Mapping[str, Any]],
    truth: GroundTruth,
    *,
    max_dets: int,
    need_masks: bool,
) -> list[ImageDetections]:
    out, seen = [], set()
    for record in detections:
        det = image_detections(record)
        if det.image_id not in truth.images:
            raise ValueError(f"detections name image {det.image_id}, which has no ground truth")
        if det.image_id in seen:
            raise ValueError(f"image {det.image_id} has two detection records")
        seen.add(det.image_id)
        if need_masks and det.masks is None and len(det.scores):
            raise ValueError(f"detections of image {det.image_id}: masks are needed")
        hw = list(truth.images[det.image_id])
        for i, rle in enumerate(det.masks or ()):
            if rle["size"] != hw:
                raise ValueError(
                    f"detections of image {det.image_id}: masks[{i}] is {rle['size']}, the "
                    f"image is {hw} (masks must be in original image pixels)"
                )
        out.append(det.top(max_dets))
    return out


@contextlib.contextmanager
def quiet() -> Any:
    """pycocotools prints progress on stdout; keep it out of the caller's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def keep_detections(det: ImageDetections, keep: np.ndarray) -> ImageDetections:
    """The detections of ``det`` where the bool (K,) ``keep`` is True."""
    return ImageDetections(
        det.image_id,
        det.boxes_xyxy_px[keep],
        det.scores[keep],
        det.category_ids[keep],
        None if det.masks is None else tuple(det.masks[i] for i in np.flatnonzero(keep)),
    )
