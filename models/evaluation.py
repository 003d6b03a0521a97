"""Instance-segmentation metrics on plain data: COCO AP through pycocotools, Open-Images AP50.

No model here: ground truth is a COCO instances dict, predictions are per-image records, both in
the pixels of the original images.

    gt = {"images": [{"id": 1, "height": 480, "width": 640}, ...],
          "categories": [{"id": 18, "name": "dog"}, ...],
          "annotations": [{"id": 7, "image_id": 1, "category_id": 18, "bbox": [x, y, w, h],
                           "segmentation": rle_or_polygons, "area": 1234.0, "iscrowd": 0}, ...]}
    dets = [{"image_id": 1, "boxes_xyxy_px": (K, 4), "scores": (K,), "category_ids": (K,),
             "masks": (K, H, W) bool or K RLEs}, ...]
    coco = coco_metrics(gt, dets, base_category_ids=[18], novel_category_ids=[1])
    coco["segm"]["novel"]["AP50"]
    oid = oid_mask_ap50(gt, dets, base_category_ids=[18], novel_category_ids=[1])
    oid["novel"]

Conventions shared by both metrics:

- At most ``max_dets`` detections per image (the highest scores over all classes) are evaluated,
  the COCO and Open Images challenge rule.
- "all" means base + novel classes; categories in neither part are left out, and so are the
  detections of such categories.
- A subset whose classes have no ground-truth instance gets ``None`` (never 0, which would read as
  a failed detector) with ``num_gt`` 0 beside it.
- An annotation with ``"has_mask": False`` (or no ``segmentation``) is a box-only instance: it
  counts normally for box AP; for mask metrics it becomes an ignored region covering its box
  (COCO: a crowd region; Open Images: detections it holds by IoA >= 0.5 are dropped, as the
  challenge drops detections on "difficult" instances).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from alp_dataset.coco_shards import RleError, encode_mask, rle_counts, segmentation_to_rle

__all__ = [
    "SUBSETS",
    "ImageDetections",
    "average_precision",
    "coco_metrics",
    "image_detections",
    "oid_mask_ap50",
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
                _check_rle(r, f"detections of image {image_id}: masks[{i}]")
                for i, r in enumerate(masks)
            )
    return ImageDetections(
        image_id=image_id,
        boxes_xyxy_px=_numpy(record["boxes_xyxy_px"], np.float64).reshape(-1, 4),
        scores=scores,
        category_ids=_numpy(record["category_ids"], np.int64).reshape(-1),
        masks=rles,
    )


def _check_rle(rle: Mapping[str, Any], where: str) -> Rle:
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
class _GroundTruth:
    """A checked copy of a COCO instances dict: annotation ids renumbered 1..N (pycocotools reads
    id 0 as "unmatched"), every field present, masks as compressed RLEs (None: box-only)."""

    images: dict[int, tuple[int, int]]  # image id -> (height, width)
    categories: dict[int, str]
    annotations: tuple[dict[str, Any], ...]


def _prepare_gt(gt: Mapping[str, Any]) -> _GroundTruth:
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
    return _GroundTruth(images, categories, tuple(annotations))


def _box_rle(bbox_xywh: Sequence[float], height: int, width: int) -> Rle:
    box = np.asarray([bbox_xywh], dtype=np.float64)  # (1, 4) xywh
    rle = mask_utils.frPyObjects(box, height, width)[0]  # the box as a mask
    return _check_rle(rle, "box")


def _subsets(
    base_category_ids: Iterable[int], novel_category_ids: Iterable[int]
) -> dict[str, list[int]]:
    base = sorted({int(c) for c in base_category_ids})
    novel = sorted({int(c) for c in novel_category_ids})
    both = sorted(set(base) & set(novel))
    if both:
        raise ValueError(f"category ids {both} are both base and novel")
    return {"all": sorted(base + novel), "base": base, "novel": novel}


def _prepare_detections(
    detections: Iterable[ImageDetections | Mapping[str, Any]],
    truth: _GroundTruth,
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
def _quiet() -> Any:
    """pycocotools prints progress on stdout; keep it out of the caller's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# ---------------------------------------------------------------------------------------------
# COCO AP


def _coco_object(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with _quiet():
        coco.createIndex()
    return coco


def _coco_gt(truth: _GroundTruth, iou_type: str) -> COCO:
    images = [{"id": i, "height": h, "width": w} for i, (h, w) in truth.images.items()]
    categories = [{"id": c, "name": n} for c, n in truth.categories.items()]
    anns = []
    for a in truth.annotations:
        ann = {k: a[k] for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd")}
        if iou_type == "segm":
            if a["rle"] is None:  # box-only: a crowd region, ignored (module doc)
                ann["iscrowd"] = 1
                ann["segmentation"] = _box_rle(a["bbox"], *truth.images[a["image_id"]])
            else:
                ann["segmentation"] = a["rle"]
        anns.append(ann)
    return _coco_object(images, categories, anns)


def _coco_dt(gt: COCO, detections: Sequence[ImageDetections], iou_type: str) -> COCO:
    """Results as pycocotools' ``loadRes`` makes them, built directly (loadRes fails on none)."""
    anns = []
    for det in detections:
        for k in range(len(det.scores)):
            ann: dict[str, Any] = {
                "id": len(anns) + 1,  # 0 would read as "unmatched" in COCOeval
                "image_id": det.image_id,
                "category_id": int(det.category_ids[k]),
                "score": float(det.scores[k]),
                "iscrowd": 0,
            }
            if iou_type == "segm":
                assert det.masks is not None
                rle = det.masks[k]
                ann["segmentation"] = rle
                ann["area"] = float(mask_utils.area(rle))
                ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
            else:
                x0, y0, x1, y1 = (float(v) for v in det.boxes_xyxy_px[k])
                ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
                ann["area"] = (x1 - x0) * (y1 - y0)
            anns.append(ann)
    return _coco_object(gt.dataset["images"], gt.dataset["categories"], anns)


def _mean_precision(precision: np.ndarray) -> float | None:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def coco_metrics(
    gt: Mapping[str, Any],
    detections: Iterable[ImageDetections | Mapping[str, Any]],
    *,
    base_category_ids: Iterable[int],
    novel_category_ids: Iterable[int],
    iou_types: Sequence[str] = ("segm", "bbox"),
    max_dets: int = 100,
) -> dict[str, dict[str, dict[str, Any]]]:
    """COCO AP, AP50, AP75 (IoU 0.5:0.95, area "all", ``max_dets`` per image) per IoU type for the
    subsets "all", "base" and "novel" (module doc for the conventions).

    Returns ``{iou_type: {subset: {"AP", "AP50", "AP75", "num_classes", "num_classes_with_gt",
    "num_gt"}}}`` with AP values in [0, 1], or None for a subset without ground truth. pycocotools
    evaluates and accumulates once over all classes; a subset's numbers average its classes'
    slice of the precision array, which is what COCOeval with ``params.catIds`` restricted to the
    subset gives (classes are evaluated independently).
    """
    truth = _prepare_gt(gt)
    subsets = _subsets(base_category_ids, novel_category_ids)
    unknown = sorted(set(iou_types) - {"segm", "bbox"})
    if unknown:
        raise ValueError(f"iou_types holds {unknown}; expected 'segm' and / or 'bbox'")
    dets = _prepare_detections(detections, truth, max_dets=max_dets, need_masks="segm" in iou_types)
    wanted = set(subsets["all"])
    dets = [_keep(d, np.isin(d.category_ids, list(wanted))) for d in dets]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for iou_type in iou_types:
        coco_gt = _coco_gt(truth, iou_type)
        coco_dt = _coco_dt(coco_gt, dets, iou_type)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = sorted(truth.images)
        evaluator.params.catIds = subsets["all"]
        evaluator.params.maxDets = [1, 10, max_dets]
        counts: dict[int, int] = defaultdict(int)
        for a in coco_gt.dataset["annotations"]:
            counts[a["category_id"]] += not a["iscrowd"]
        per_type: dict[str, dict[str, Any]] = {}
        precision = None
        if subsets["all"]:
            with _quiet():
                evaluator.evaluate()
                evaluator.accumulate()
            # (T IoU thresholds, R recall points, K classes, A area ranges, M max-dets settings)
            precision = evaluator.eval["precision"]
        iou_thrs = evaluator.params.iouThrs
        for name, cat_ids in subsets.items():
            num_gt = sum(counts[c] for c in cat_ids)
            entry: dict[str, Any] = {
                "AP": None,
                "AP50": None,
                "AP75": None,
                "num_classes": len(cat_ids),
                "num_classes_with_gt": sum(counts[c] > 0 for c in cat_ids),
                "num_gt": num_gt,
            }
            if precision is not None and num_gt > 0:
                ks = [evaluator.params.catIds.index(c) for c in cat_ids]
                p = precision[:, :, ks, 0, -1]  # (T, R, K_subset): area "all", max_dets
                entry["AP"] = _mean_precision(p)
                entry["AP50"] = _mean_precision(p[np.isclose(iou_thrs, 0.5)])
                entry["AP75"] = _mean_precision(p[np.isclose(iou_thrs, 0.75)])
            per_type[name] = entry
        out[iou_type] = per_type
    return out


def _keep(det: ImageDetections, keep: np.ndarray) -> ImageDetections:
    return ImageDetections(
        det.image_id,
        det.boxes_xyxy_px[keep],
        det.scores[keep],
        det.category_ids[keep],
        None if det.masks is None else tuple(det.masks[i] for i in np.flatnonzero(keep)),
    )


# ---------------------------------------------------------------------------------------------
# Open Images mask AP50


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """Area under the precision / recall curve of ranked detections, precision made monotonic
    (each point takes the best precision at equal or higher recall), as the Open Images challenge
    and VOC 2010+ compute it; no 101-point sampling. NaN when ``num_gt`` is 0; 0 when nothing was
    detected. Ties in score keep the given order."""
    if num_gt <= 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.asarray(is_tp, dtype=bool)[order]
    cum_tp = np.cumsum(tp)
    precision = cum_tp / np.arange(1, len(tp) + 1)
    recall = cum_tp / num_gt
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # monotonic envelope
    steps = np.flatnonzero(r[1:] != r[:-1]) + 1
    return float(np.sum((r[steps] - r[steps - 1]) * p[steps]))


def _overlaps(dets: list[Rle], gts: list[Rle], ioa: bool) -> np.ndarray:
    """(K, G) mask IoU, or with ``ioa`` intersection over the detection's area."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    # pycocotools' crowd IoU divides by the detection's area: the IoA the challenge uses.
    return np.asarray(mask_utils.iou(dets, gts, [int(ioa)] * len(gts))).reshape(len(dets), len(gts))


def _match_image_class(
    det_rles: list[Rle],
    scores: np.ndarray,
    plain: list[Rle],
    groups: list[Rle],
    ignore: list[Rle],
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and TP flags of one class on one image, the challenge's way.

    Detections (highest score first) take the non-group-of instance of highest IoU; it is a TP if
    that IoU >= threshold and the instance is not taken yet, else an FP (no fall-back to the next
    instance). Detections left are dropped when a box-only region holds them (IoA >= threshold),
    and collapse into the group-of instance of highest IoA when it is >= threshold: each group hit
    is one TP scored with its best detection.
    """
    k = len(scores)
    tp = np.zeros(k, dtype=bool)
    dropped = np.zeros(k, dtype=bool)
    iou = _overlaps(det_rles, plain, ioa=False)  # (K, G_plain)
    if iou.shape[1]:
        best = iou.argmax(axis=1)
        taken = np.zeros(iou.shape[1], dtype=bool)
        for i in range(k):
            g = best[i]
            if iou[i, g] >= threshold and not taken[g]:
                tp[i] = taken[g] = True
    ioa_ignore = _overlaps(det_rles, ignore, ioa=True)  # (K, G_ignore)
    if ioa_ignore.shape[1]:
        dropped |= ~tp & (ioa_ignore.max(axis=1) >= threshold)
    group_score = np.full(len(groups), -np.inf)
    ioa = _overlaps(det_rles, groups, ioa=True)  # (K, G_group)
    if ioa.shape[1]:
        best = ioa.argmax(axis=1)
        for i in range(k):
            g = best[i]
            if not tp[i] and not dropped[i] and ioa[i, g] >= threshold:
                dropped[i] = True
                group_score[g] = max(group_score[g], scores[i])
    hit = np.isfinite(group_score)
    keep = ~dropped
    return (
        np.concatenate([scores[keep], group_score[hit]]),
        np.concatenate([tp[keep], np.ones(int(hit.sum()), dtype=bool)]),
    )


def oid_mask_ap50(
    gt: Mapping[str, Any],
    detections: Iterable[ImageDetections | Mapping[str, Any]],
    *,
    base_category_ids: Iterable[int],
    novel_category_ids: Iterable[int],
    image_labels: Mapping[int, Iterable[int]] | None = None,
    iou_threshold: float = 0.5,
    max_dets: int = 100,
) -> dict[str, Any]:
    """Open Images challenge instance-segmentation AP50, per class and averaged.

    Per class, detections of all images ranked by score are TP / FP as `_match_image_class` says
    (mask IoU for instances, IoA for ``is_group_of`` ones); AP is `average_precision`; the
    positives are the class's instances, group-of ones included, box-only ones not.

    ``image_labels``: image id -> the category ids verified on the image (positive or negative
    image-level labels). Detections of a class neither verified on the image nor among its
    instances are ignored (Open Images annotates only verified classes). Without it every class
    counts as verified on every image (exhaustive annotation, as COCO). Class-hierarchy
    expansion is left to the caller (expand the ground truth and the labels beforehand).

    Returns ``{"all", "base", "novel": mean AP50 in [0, 1] or None, "num_classes_with_gt":
    {subset: n}, "per_class": {category_id: {"name", "ap50", "num_gt", "num_detections"}}}``;
    a class without instances has ``ap50`` None and no part in the means.
    """
    truth = _prepare_gt(gt)
    subsets = _subsets(base_category_ids, novel_category_ids)
    wanted = set(subsets["all"])
    dets = _prepare_detections(detections, truth, max_dets=max_dets, need_masks=True)

    # (image, class) -> non-group-of masks, group-of masks, box-only regions
    plain: dict[tuple[int, int], list[Rle]] = defaultdict(list)
    groups: dict[tuple[int, int], list[Rle]] = defaultdict(list)
    ignore: dict[tuple[int, int], list[Rle]] = defaultdict(list)
    num_gt: dict[int, int] = defaultdict(int)
    for a in truth.annotations:
        key = (a["image_id"], a["category_id"])
        hw = truth.images[a["image_id"]]
        if a["rle"] is None:
            ignore[key].append(_box_rle(a["bbox"], *hw))
            continue
        (groups if a["is_group_of"] else plain)[key].append(a["rle"])
        num_gt[a["category_id"]] += 1

    evaluatable: dict[int, set[int]] | None = None
    if image_labels is not None:
        evaluatable = {i: {int(c) for c in image_labels.get(i, ())} for i in truth.images}
        for image_id, category_id in (*plain, *groups, *ignore):
            evaluatable[image_id].add(category_id)

    scores: dict[int, list[np.ndarray]] = defaultdict(list)
    labels: dict[int, list[np.ndarray]] = defaultdict(list)
    for det in dets:
        assert det.masks is not None or not len(det.scores)
        for category_id in np.unique(det.category_ids).tolist():
            if category_id not in wanted:
                continue
            if evaluatable is not None and category_id not in evaluatable[det.image_id]:
                continue
            idx = np.flatnonzero(det.category_ids == category_id)  # already by score
            key = (det.image_id, category_id)
            s, t = _match_image_class(
                [det.masks[i] for i in idx],  # type: ignore[index]
                det.scores[idx],
                plain.get(key, []),
                groups.get(key, []),
                ignore.get(key, []),
                iou_threshold,
            )
            scores[category_id].append(s)
            labels[category_id].append(t)

    per_class: dict[int, dict[str, Any]] = {}
    for category_id in subsets["all"]:
        s = np.concatenate(scores[category_id]) if scores[category_id] else np.zeros(0)
        t = np.concatenate(labels[category_id]) if labels[category_id] else np.zeros(0, bool)
        ap = average_precision(s, t, num_gt[category_id])
        per_class[category_id] = {
            "name": truth.categories.get(category_id, str(category_id)),
            "ap50": None if math.isnan(ap) else ap,
            "num_gt": num_gt[category_id],
            "num_detections": len(s),
        }
    out: dict[str, Any] = {}
    with_gt: dict[str, int] = {}
    for name, cat_ids in subsets.items():
        aps = [per_class[c]["ap50"] for c in cat_ids if per_class[c]["ap50"] is not None]
        out[name] = float(np.mean(aps)) if aps else None
        with_gt[name] = len(aps)
    out["num_classes_with_gt"] = with_gt
    out["per_class"] = per_class
    return out
