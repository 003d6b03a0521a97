"""Open Images challenge instance-segmentation AP50 (mask IoU, group-of instances by IoA,
image-level labels), per class and averaged over all / base / novel classes.

    oid = oid_mask_ap50(gt, dets, base_category_ids=[18], novel_category_ids=[1])
    oid["novel"]

The inputs and the conventions shared with the COCO metric are in `models.evaluation`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from models.evaluation.records import (
    ImageDetections,
    Rle,
    box_rle,
    class_subsets,
    prepare_detections,
    prepare_gt,
)

__all__ = ["average_precision", "oid_mask_ap50"]


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
    truth = prepare_gt(gt)
    subsets = class_subsets(base_category_ids, novel_category_ids)
    wanted = set(subsets["all"])
    dets = prepare_detections(detections, truth, max_dets=max_dets, need_masks=True)

    # (image, class) -> non-group-of masks, group-of masks, box-only regions
    plain: dict[tuple[int, int], list[Rle]] = defaultdict(list)
    groups: dict[tuple[int, int], list[Rle]] = defaultdict(list)
    ignore: dict[tuple[int, int], list[Rle]] = defaultdict(list)
    num_gt: dict[int, int] = defaultdict(int)
    for a in truth.annotations:
        key = (a["image_id"], a["category_id"])
        hw = truth.images[a["image_id"]]
        if a["rle"] is None:
            ignore[key].append(box_rle(a["bbox"], *hw))
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
