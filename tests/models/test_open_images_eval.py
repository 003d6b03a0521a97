"""The Open Images challenge protocol (models/evaluation/open_images.py), rule by rule, on
hand-built images whose AP is worked out in the comments. Rule numbers are the module's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from alp_dataset.coco_shards import encode_mask
from models.evaluation import ImageLabels, oid_mask_ap50
from models.evaluation.open_images import ClassTruth, match_image_class

H, W = 10, 10


def rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """A bool (H, W) mask with rows y0..y1-1 and columns x0..x1-1 set."""
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def ann(ann_id: int, image_id: int, category_id: int, mask: np.ndarray, **extra: Any) -> dict:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(mask.sum()), "iscrowd": 0,
        "segmentation": encode_mask(mask), **extra,
    }  # fmt: skip


def gt_dict(annotations: list[dict], n_images: int) -> dict:
    return {
        "images": [{"id": i, "height": H, "width": W} for i in range(1, n_images + 1)],
        "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)],
        "annotations": annotations,
    }


def dets(image_id: int, items: list[tuple[int, float, np.ndarray]]) -> dict:
    """A detection record from (category id, score, mask) triples."""
    return {
        "image_id": image_id,
        "boxes_xyxy_px": np.zeros((len(items), 4)),  # the protocol reads boxes off the masks
        "scores": np.array([s for _, s, _ in items]),
        "category_ids": np.array([c for c, _, _ in items], dtype=np.int64),
        "masks": np.stack([m for _, _, m in items]) if items else np.zeros((0, H, W), bool),
    }


CHILD, OTHER, PARENT = 1, 2, 3  # category ids: PARENT is CHILD's parent in the hierarchy
HIERARCHY = {CHILD: [PARENT]}


def child_on_image_1() -> dict:
    return gt_dict([ann(1, 1, CHILD, rect(0, 5, 0, 5))], n_images=2)


# Rule 1: hierarchy ---------------------------------------------------------------------------


def test_a_parent_detection_matches_its_child_instance() -> None:
    gt = child_on_image_1()
    detections = [dets(1, [(PARENT, 0.9, rect(0, 5, 0, 5))])]
    out = oid_mask_ap50(
        gt,
        detections,
        base_category_ids=[CHILD, PARENT],
        novel_category_ids=[],
        hierarchy=HIERARCHY,
    )
    assert out["per_class"][PARENT]["ap50"] == 1.0  # the expanded instance
    assert out["per_class"][PARENT]["num_gt"] == 1
    assert out["per_class"][CHILD]["ap50"] == 0.0  # the child itself was not detected
    flat = oid_mask_ap50(gt, detections, base_category_ids=[CHILD, PARENT], novel_category_ids=[])
    assert flat["per_class"][PARENT]["ap50"] is None  # no parent instance without expansion


def test_negative_labels_expand_down_positive_labels_up() -> None:
    gt = child_on_image_1()
    # Image 2 has no instance; its labels verify PARENT absent, and (on image 1) CHILD present.
    labels = {1: ImageLabels(positive={CHILD}), 2: ImageLabels(negative={PARENT})}
    detections = [
        dets(1, [(CHILD, 0.9, rect(0, 5, 0, 5))]),
        dets(2, [(CHILD, 0.8, rect(0, 5, 0, 5))]),  # a child where its parent is absent
    ]
    kwargs = {"base_category_ids": [CHILD, PARENT], "novel_category_ids": []}
    expanded = oid_mask_ap50(gt, detections, image_labels=labels, hierarchy=HIERARCHY, **kwargs)
    # Negative PARENT -> negative CHILD on image 2: its detection is an FP there.
    # Ranked .9 TP, .8 FP against 1 positive: AP = 1.
    assert expanded["per_class"][CHILD]["num_detections"] == 2
    assert expanded["per_class"][CHILD]["ap50"] == 1.0
    flat = oid_mask_ap50(gt, detections, image_labels=labels, **kwargs)
    assert flat["per_class"][CHILD]["num_detections"] == 1  # CHILD unannotated on image 2

    # A positive CHILD label (no instance) verifies PARENT on image 2 as well.
    up = {2: ImageLabels(positive={CHILD})}
    on_two = [dets(1, []), dets(2, [(PARENT, 0.7, rect(0, 5, 0, 5))])]
    expanded = oid_mask_ap50(gt, on_two, image_labels=up, hierarchy=HIERARCHY, **kwargs)
    assert expanded["per_class"][PARENT]["num_detections"] == 1
    flat = oid_mask_ap50(gt, on_two, image_labels=up, **kwargs)
    assert flat["per_class"][PARENT]["num_detections"] == 0


# Rules 2 and 3: unannotated classes, negative labels ----------------------------------------


def test_unannotated_classes_are_ignored_and_negative_ones_are_false_positives() -> None:
    gt = child_on_image_1()
    detections = [
        dets(1, [(CHILD, 0.9, rect(0, 5, 0, 5))]),
        dets(2, [(OTHER, 0.8, rect(0, 5, 0, 5)), (CHILD, 0.95, rect(5, 10, 5, 10))]),
    ]
    kwargs = {"base_category_ids": [CHILD], "novel_category_ids": [OTHER]}
    # Nothing verified on image 2: both of its detections are ignored.
    out = oid_mask_ap50(gt, detections, image_labels={1: ImageLabels({CHILD})}, **kwargs)
    assert out["per_class"][CHILD]["num_detections"] == 1
    assert out["per_class"][CHILD]["ap50"] == 1.0
    assert out["per_class"][OTHER]["num_detections"] == 0
    # CHILD verified absent on image 2: its .95 detection is an FP ranked first.
    # Ranked .95 FP, .9 TP against 1 positive: precision 0, 1/2 at recall 0, 1 -> AP 1/2.
    labels = {1: ImageLabels({CHILD}), 2: ImageLabels(negative={CHILD, OTHER})}
    out = oid_mask_ap50(gt, detections, image_labels=labels, **kwargs)
    assert out["per_class"][CHILD]["ap50"] == pytest.approx(0.5)
    assert out["per_class"][OTHER]["num_detections"] == 1  # evaluated, but no positives
    assert out["per_class"][OTHER]["ap50"] is None
    # Without image labels every class counts as verified everywhere (COCO's exhaustiveness).
    exhaustive = oid_mask_ap50(gt, detections, **kwargs)
    assert exhaustive["per_class"][CHILD]["ap50"] == pytest.approx(0.5)


# Rules 4-6: matching ------------------------------------------------------------------------


def test_group_of_weight_zero_leaves_group_detections_ignored() -> None:
    plain, group = rect(0, 3, 5, 10), rect(5, 10, 0, 10)
    gt = gt_dict([ann(1, 1, 2, plain), ann(2, 1, 2, group, is_group_of=True)], n_images=1)
    detections = [
        dets(1, [(2, 0.9, rect(5, 10, 0, 5)), (2, 0.8, rect(0, 3, 0, 3)), (2, 0.7, plain)])
    ]
    kwargs = {"base_category_ids": [], "novel_category_ids": [2]}
    one = oid_mask_ap50(gt, detections, **kwargs)  # group = one TP (.9), .8 FP, .7 TP; 2 positives
    assert one["per_class"][2]["ap50"] == pytest.approx(5 / 6)  # 1/2 * 1 + 1/2 * 2/3
    zero = oid_mask_ap50(gt, detections, group_of_weight=0.0, **kwargs)
    # The group is no positive and its detection no entry: .8 FP, .7 TP against 1 positive.
    assert zero["per_class"][2]["num_gt"] == 1
    assert zero["per_class"][2]["num_detections"] == 2
    assert zero["per_class"][2]["ap50"] == pytest.approx(0.5)


def test_box_only_regions_by_iou_and_box_only_groups_by_ioa() -> None:
    empty = np.zeros(0)
    # Box-only instance 0..5 x 0..5; detection boxes from the masks.
    truth = ClassTruth(boxes=[[0.0, 0.0, 5.0, 5.0]])
    masks = [
        encode_mask(rect(0, 5, 0, 4)),
        encode_mask(rect(0, 5, 0, 4)),
        encode_mask(rect(1, 4, 1, 4)),
    ]
    scores, weights = match_image_class(masks, np.array([0.9, 0.8, 0.7]), truth)
    # .9: box IoU 0.8 -> ignored; .8: the region is taken -> FP; .7: IoU 9/25 < .5 -> FP.
    assert scores.tolist() == [0.8, 0.7] and weights.tolist() == [0.0, 0.0]
    # A box-only group-of region holds detections by IoA: all of them ignored, no entry.
    group = ClassTruth(group_boxes=[[0.0, 0.0, 10.0, 10.0]])
    scores, weights = match_image_class(masks, np.array([0.9, 0.8, 0.7]), group)
    assert scores.tolist() == [] and weights.tolist() == []
    # With nothing to match every detection is an FP; with no detection, nothing.
    assert match_image_class(masks[:1], np.array([0.5]), ClassTruth())[1].tolist() == [0.0]
    assert match_image_class([], empty, truth)[0].tolist() == []


def test_a_masked_instance_is_matched_before_box_only_regions() -> None:
    shared = rect(0, 5, 0, 5)
    truth = ClassTruth(masks=[encode_mask(shared)], boxes=[[0.0, 0.0, 5.0, 5.0]])
    masks = [encode_mask(shared), encode_mask(shared)]
    scores, weights = match_image_class(masks, np.array([0.9, 0.8]), truth)
    # .9 takes the mask (TP); .8 is a duplicate of it whose box matches the box-only region.
    assert scores.tolist() == [0.9] and weights.tolist() == [1.0]


# Rules 7 and 8: at most 100 detections, per-class AP, means --------------------------------


def test_at_most_100_detections_per_image_over_all_classes() -> None:
    gt = child_on_image_1()
    far = rect(9, 10, 9, 10)
    noise = [(OTHER, 0.5 + 0.001 * i, far) for i in range(100)]
    detections = [dets(1, [*noise, (CHILD, 0.4, rect(0, 5, 0, 5))])]  # the TP ranks 101st
    out = oid_mask_ap50(gt, detections, base_category_ids=[CHILD], novel_category_ids=[OTHER])
    assert out["per_class"][CHILD]["num_detections"] == 0 and out["base"] == 0.0
    assert out["per_class"][OTHER]["num_detections"] == 100
    kept = oid_mask_ap50(
        gt, detections, base_category_ids=[CHILD], novel_category_ids=[OTHER], max_dets=101
    )
    assert kept["base"] == 1.0


def test_mean_over_classes_with_base_and_novel_apart() -> None:
    # Base: CHILD AP 1, PARENT AP 1/2; novel: OTHER AP 0; PARENT is a class of its own here.
    a, b, c = rect(0, 5, 0, 5), rect(5, 10, 5, 10), rect(0, 5, 5, 10)
    gt = gt_dict([ann(1, 1, CHILD, a), ann(2, 1, PARENT, b), ann(3, 2, OTHER, c)], n_images=2)
    detections = [
        dets(1, [(CHILD, 0.9, a), (PARENT, 0.8, rect(0, 2, 0, 2)), (PARENT, 0.7, b)]),
        dets(2, [(OTHER, 0.6, rect(5, 10, 0, 5))]),
    ]
    out = oid_mask_ap50(
        gt, detections, base_category_ids=[CHILD, PARENT], novel_category_ids=[OTHER]
    )
    assert [out["per_class"][k]["ap50"] for k in (CHILD, PARENT, OTHER)] == [1.0, 0.5, 0.0]
    assert out["base"] == pytest.approx(0.75)
    assert out["novel"] == 0.0
    assert out["all"] == pytest.approx(0.5)
    assert out["num_classes_with_gt"] == {"all": 3, "base": 2, "novel": 1}
