"""COCO AP, AP50, AP75 for masks and boxes through pycocotools, for all / base / novel classes
and for each class.

    coco = coco_metrics(gt, dets, base_category_ids=[18], novel_category_ids=[1])
    coco["segm"]["novel"]["AP50"]
    coco["segm"]["per_class"][18]["AP50"]

The inputs and the conventions shared with the Open Images metric are in `models.evaluation`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.evaluation.records import (
    GroundTruth,
    ImageDetections,
    box_rle,
    class_subsets,
    keep_detections,
    prepare_detections,
    prepare_gt,
    quiet,
)

__all__ = ["coco_metrics"]


def _coco_object(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with quiet():
        coco.createIndex()
    return coco


def _coco_gt(truth: GroundTruth, iou_type: str) -> COCO:
    images = [{"id": i, "height": h, "width": w} for i, (h, w) in truth.images.items()]
    categories = [{"id": c, "name": n} for c, n in truth.categories.items()]
    anns = []
    for a in truth.annotations:
        ann = {k: a[k] for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd")}
        if iou_type == "segm":
            if a["rle"] is None:  # box-only: a crowd region, ignored (module doc)
                ann["iscrowd"] = 1
                ann["segmentation"] = box_rle(a["bbox"], *truth.images[a["image_id"]])
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


def _ap_values(precision: np.ndarray, iou_thrs: np.ndarray) -> dict[str, float | None]:
    """AP, AP50, AP75 of a (T, R, K) slice of COCOeval's precision (area "all", max_dets)."""
    return {
        "AP": _mean_precision(precision),
        "AP50": _mean_precision(precision[np.isclose(iou_thrs, 0.5)]),
        "AP75": _mean_precision(precision[np.isclose(iou_thrs, 0.75)]),
    }


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
    "num_gt"}, "per_class": {category_id: {"name", "AP", "AP50", "AP75", "num_gt"}}}}`` with AP
    values in [0, 1], or None for a subset or class without ground truth. pycocotools
    evaluates and accumulates once over all classes; a subset's numbers average its classes'
    slice of the precision array, which is what COCOeval with ``params.catIds`` restricted to the
    subset gives (classes are evaluated independently).
    """
    truth = prepare_gt(gt)
    subsets = class_subsets(base_category_ids, novel_category_ids)
    unknown = sorted(set(iou_types) - {"segm", "bbox"})
    if unknown:
        raise ValueError(f"iou_types holds {unknown}; expected 'segm' and / or 'bbox'")
    dets = prepare_detections(detections, truth, max_dets=max_dets, need_masks="segm" in iou_types)
    wanted = set(subsets["all"])
    dets = [keep_detections(d, np.isin(d.category_ids, list(wanted))) for d in dets]
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
            with quiet():
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
                entry.update(_ap_values(precision[:, :, ks, 0, -1], iou_thrs))
            per_type[name] = entry
        per_class: dict[int, dict[str, Any]] = {}
        for k, category_id in enumerate(evaluator.params.catIds):
            name = truth.categories.get(int(category_id), str(category_id))
            entry = {"name": name, "AP": None, "AP50": None, "AP75": None,
                     "num_gt": counts[category_id]}  # fmt: skip
            if precision is not None and counts[category_id] > 0:
                entry.update(_ap_values(precision[:, :, [k], 0, -1], iou_thrs))
            per_class[int(category_id)] = entry
        out[iou_type] = {**per_type, "per_class": per_class}
    return out
