"""Open Images challenge instance-segmentation AP50: mask IoU, group-of instances by IoA, boxes
without masks as ignored regions, image-level labels, the class hierarchy; per class and averaged
over all / base / novel classes.

    oid = oid_mask_ap50(gt, dets, base_category_ids=[18], novel_category_ids=[1],
                        image_labels={7: ImageLabels(positive={18}, negative={1})},
                        hierarchy={18: [40]})        # category 40 is a parent of 18
    oid["novel"]

Each rule and where it comes from ([E] the challenge's evaluation page,
storage.googleapis.com/openimages/web/evaluation.html; [T] its reference implementation,
tensorflow/models research/object_detection: oid_hierarchical_labels_expansion.py,
utils/per_image_evaluation.py, utils/object_detection_evaluation.py):

1. Hierarchy [E "Labels hierarchy handling", T expansion tool]: ground-truth instances and
   positive image-level labels are expanded to every ancestor class, negative labels to every
   descendant; a detection of a parent class then matches an instance of its child.
2. Unannotated classes [E "Handling non-exhaustive image-level labeling", T
   OpenImagesChallengeEvaluator]: on each image only the classes of its (expanded) positive or
   negative labels, or of its instances, are evaluated; detections of other classes are ignored.
3. Negative labels [E]: a class verified absent is evaluated on the image, so its detections
   match nothing and are false positives.
4. Matching [T _compute_tp_fp_for_single_class]: per image and class, detections in score order
   take the non-group-of instance of highest mask IoU; a TP when IoU >= 0.5 and the instance is
   not taken yet, else an FP (no fall-back to the next instance).
5. Group-of [E "Handling group-of boxes", T compute_match_ioa]: detections left are matched to
   the group-of instance of highest IoA (intersection over the detection's area) >= 0.5; all of
   them collapse into one entry per group, scored with the best of them, counted as
   ``group_of_weight`` true positives (1: the detection track's rule; the segmentation track's
   evaluator passes 0, which drops the entry and the group, leaving such detections ignored).
6. Instances without masks [T, mask mode's second stage]: a box-only instance (a box with no
   mask) is matched by the detection's box (its mask's bounding box) with IoU >= 0.5, a
   box-only group-of by IoA >= 0.5; detections matched so are ignored, neither TP nor FP. They
   are not positives here; [T] counts box-only non-group-of instances as positives, which on the
   challenge's files, where every such instance has a mask, comes to the same.
7. At most ``max_dets`` (100) detections per image, the highest scores over all classes
   (the ALP paper, Sec. 4; `models.evaluation.records.prepare_detections`).
8. AP [T compute_average_precision, VOC 2010+]: area under the precision / recall curve with
   precision made monotonic (`average_precision`); per class over all images; classes without
   positives have no AP and no part in the means; mean over all, base and novel classes apart.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from models.evaluation.records import (
    ImageDetections,
    Rle,
    class_subsets,
    prepare_detections,
    prepare_gt,
)

__all__ = ["ClassTruth", "ImageLabels", "average_precision", "match_image_class", "oid_mask_ap50"]


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: float) -> float:
    """Area under the precision / recall curve of ranked detections, precision made monotonic
    (each point takes the best precision at equal or higher recall), as the Open Images challenge
    and VOC 2010+ compute it; no 101-point sampling. ``is_tp`` may hold weights (a group-of
    entry counts ``group_of_weight``). NaN when ``num_gt`` is 0; 0 when nothing was detected.
    Ties in score keep the given order."""
    if num_gt <= 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.asarray(is_tp, dtype=np.float64)[order]
    cum_tp = np.cumsum(tp)
    precision = cum_tp / np.arange(1, len(tp) + 1)
    recall = cum_tp / num_gt
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # monotonic envelope
    steps = np.flatnonzero(r[1:] != r[:-1]) + 1
    return float(np.sum((r[steps] - r[steps - 1]) * p[steps]))


@dataclass(frozen=True)
class ImageLabels:
    """An image's verified classes: present (positive) and absent (negative) category ids."""

    positive: frozenset[int] = frozenset()
    negative: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "positive", frozenset(int(c) for c in self.positive))
        object.__setattr__(self, "negative", frozenset(int(c) for c in self.negative))


@dataclass
class ClassTruth:
    """The ground truth of one class on one image, as `match_image_class` reads it."""

    masks: list[Rle] = field(default_factory=list)  # non-group-of instances with masks
    group_masks: list[Rle] = field(default_factory=list)  # group-of instances with masks
    boxes: list[list[float]] = field(default_factory=list)  # xywh, box-only non-group-of
    group_boxes: list[list[float]] = field(default_factory=list)  # xywh, box-only group-of


def _overlaps(dets: list[Any], gts: list[Any], ioa: bool) -> np.ndarray:
    """(K, G) IoU of RLEs or xywh boxes, or with ``ioa`` intersection over the detection's area
    (pycocotools' crowd IoU divides by the detection's area: the challenge's IoA)."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    return np.asarray(mask_utils.iou(dets, gts, [int(ioa)] * len(gts))).reshape(len(dets), len(gts))


def match_image_class(
    det_masks: list[Rle],
    scores: np.ndarray,
    truth: ClassTruth,
    *,
    threshold: float = 0.5,
    group_of_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, TP weights) of one class's detections on one image (module doc, rules 4-6).

    ``det_masks`` and ``scores`` are in score order, highest first. The result holds an entry
    per detection that is neither ignored nor collapsed into a group, then one entry per group
    hit (weight ``group_of_weight``; none when the weight is 0).
    """
    k = len(scores)
    tp = np.zeros(k, dtype=bool)
    in_group = np.zeros(k, dtype=bool)
    ignored = np.zeros(k, dtype=bool)

    def match_iou(overlap: np.ndarray, mark: np.ndarray) -> None:
        if not overlap.shape[1]:
            return
        best = overlap.argmax(axis=1)
        taken = np.zeros(overlap.shape[1], dtype=bool)
        for i in range(k):
            g = best[i]
            if not (tp[i] or in_group[i] or ignored[i]) and overlap[i, g] >= threshold:
                if not taken[g]:
                    mark[i] = taken[g] = True

    def match_ioa(overlap: np.ndarray, mark: np.ndarray) -> np.ndarray:
        group_score = np.full(overlap.shape[1], -np.inf)
        if not overlap.shape[1]:
            return group_score
        best = overlap.argmax(axis=1)
        for i in range(k):
            g = best[i]
            if not (tp[i] or in_group[i] or ignored[i]) and overlap[i, g] >= threshold:
                mark[i] = True
                group_score[g] = max(group_score[g], scores[i])
        return group_score

    # Stage 1: instances with masks, by mask overlap.
    match_iou(_overlaps(det_masks, truth.masks, ioa=False), tp)
    group_score = match_ioa(_overlaps(det_masks, truth.group_masks, ioa=True), in_group)
    # Stage 2: instances with boxes only, by the detections' boxes; matches are ignored.
    if truth.boxes or truth.group_boxes:
        det_boxes = [list(b) for b in mask_utils.toBbox(det_masks)] if det_masks else []
        match_iou(_overlaps(det_boxes, truth.boxes, ioa=False), ignored)
        match_ioa(_overlaps(det_boxes, truth.group_boxes, ioa=True), ignored)
    keep = ~(in_group | ignored)
    hit = np.isfinite(group_score) if group_of_weight > 0 else np.zeros(len(group_score), bool)
    return (
        np.concatenate([scores[keep], group_score[hit]]),
        np.concatenate([tp[keep].astype(np.float64), np.full(int(hit.sum()), group_of_weight)]),
    )


def _labels(value: ImageLabels | Iterable[int]) -> ImageLabels:
    if isinstance(value, ImageLabels):
        return value
    if isinstance(value, Mapping):
        return ImageLabels(value.get("positive", ()), value.get("negative", ()))
    return ImageLabels(positive=frozenset(value))  # verified classes, sign unknown


def _descendants(ancestors: Mapping[int, Iterable[int]]) -> dict[int, set[int]]:
    below: dict[int, set[int]] = defaultdict(set)
    for child, ups in ancestors.items():
        for up in ups:
            below[int(up)].add(int(child))
    return below


def oid_mask_ap50(
    gt: Mapping[str, Any],
    detections: Iterable[ImageDetections | Mapping[str, Any]],
    *,
    base_category_ids: Iterable[int],
    novel_category_ids: Iterable[int],
    image_labels: Mapping[int, ImageLabels | Iterable[int]] | None = None,
    hierarchy: Mapping[int, Iterable[int]] | None = None,
    iou_threshold: float = 0.5,
    max_dets: int = 100,
    group_of_weight: float = 1.0,
) -> dict[str, Any]:
    """Open Images challenge instance-segmentation AP50 (the rules: module doc).

    ``gt``: a COCO instances dict (`models.evaluation`); ``is_group_of`` marks group-of
    instances, ``has_mask: False`` box-only ones. ``image_labels``: image id -> `ImageLabels`
    (or a {"positive", "negative"} mapping, or the verified category ids); without it every
    class is verified on every image (exhaustive annotation, as COCO). ``hierarchy``: category
    id -> its ancestors' category ids (`alp_dataset.open_images.Hierarchy.ancestors`, mapped);
    without it nothing is expanded.

    Returns ``{"all", "base", "novel": mean AP50 in [0, 1] or None, "num_classes_with_gt":
    {subset: n}, "per_class": {category_id: {"name", "ap50", "num_gt", "num_detections"}}}``;
    ``num_gt`` counts instances with masks, a group-of one as ``group_of_weight``.
    """
    truth = prepare_gt(gt)
    subsets = class_subsets(base_category_ids, novel_category_ids)
    wanted = set(subsets["all"])
    dets = prepare_detections(detections, truth, max_dets=max_dets, need_masks=True)
    ancestors = {int(c): [int(a) for a in ups] for c, ups in (hierarchy or {}).items()}
    below = _descendants(ancestors)

    # (image, class) -> ground truth, every instance expanded to its ancestors (rule 1)
    per_key: dict[tuple[int, int], ClassTruth] = defaultdict(ClassTruth)
    num_gt: dict[int, float] = defaultdict(float)
    for a in truth.annotations:
        for category_id in (a["category_id"], *ancestors.get(a["category_id"], ())):
            t = per_key[(a["image_id"], category_id)]
            if a["rle"] is None:
                (t.group_boxes if a["is_group_of"] else t.boxes).append(a["bbox"])
            elif a["is_group_of"]:
                t.group_masks.append(a["rle"])
                num_gt[category_id] += group_of_weight
            else:
                t.masks.append(a["rle"])
                num_gt[category_id] += 1

    evaluatable: dict[int, set[int]] | None = None  # rules 2 and 3
    if image_labels is not None:
        evaluatable = {}
        for image_id in truth.images:
            labels = _labels(image_labels.get(image_id, ImageLabels()))
            verified = set(labels.positive) | set(labels.negative)
            for c in labels.positive:
                verified.update(ancestors.get(c, ()))
            for c in labels.negative:
                verified.update(below.get(c, ()))
            evaluatable[image_id] = verified
        for image_id, category_id in per_key:
            evaluatable[image_id].add(category_id)

    scores: dict[int, list[np.ndarray]] = defaultdict(list)
    weights: dict[int, list[np.ndarray]] = defaultdict(list)
    empty = ClassTruth()
    for det in dets:  # at most max_dets each (rule 7), highest score first
        assert det.masks is not None or not len(det.scores)
        for category_id in np.unique(det.category_ids).tolist():
            if category_id not in wanted:
                continue
            if evaluatable is not None and category_id not in evaluatable[det.image_id]:
                continue
            idx = np.flatnonzero(det.category_ids == category_id)
            s, w = match_image_class(
                [det.masks[i] for i in idx],  # type: ignore[index]
                det.scores[idx],
                per_key.get((det.image_id, category_id), empty),
                threshold=iou_threshold,
                group_of_weight=group_of_weight,
            )
            scores[category_id].append(s)
            weights[category_id].append(w)

    per_class: dict[int, dict[str, Any]] = {}
    for category_id in subsets["all"]:  # rule 8
        s = np.concatenate(scores[category_id]) if scores[category_id] else np.zeros(0)
        w = np.concatenate(weights[category_id]) if weights[category_id] else np.zeros(0)
        ap = average_precision(s, w, num_gt[category_id])
        n = num_gt[category_id]
        per_class[category_id] = {
            "name": truth.categories.get(category_id, str(category_id)),
            "ap50": None if math.isnan(ap) else ap,
            "num_gt": int(n) if float(n).is_integer() else n,
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
