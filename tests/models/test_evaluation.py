"""Tests for models/evaluation.py on hand-built toy images whose AP is worked out in comments."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from alp_dataset.coco_shards import encode_mask
from models.evaluation import (
    ImageDetections,
    average_precision,
    coco_metrics,
    image_detections,
    oid_mask_ap50,
)

H, W = 10, 10


def rect(y0: int, y1: int, x0: int, x1: int, hw: tuple[int, int] = (H, W)) -> np.ndarray:
    """A bool mask with rows y0..y1-1 and columns x0..x1-1 set."""
    mask = np.zeros(hw, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def ann(ann_id: int, image_id: int, category_id: int, mask: np.ndarray, **extra: Any) -> dict:
    x0, y0, x1, y1 = box_of(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": float(mask.sum()),
        "iscrowd": 0,
        "segmentation": encode_mask(mask),
        **extra,
    }


def gt_dict(annotations: list[dict], n_images: int = 2, n_categories: int = 3) -> dict:
    return {
        "images": [{"id": i, "height": H, "width": W} for i in range(1, n_images + 1)],
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, n_categories + 1)],
        "annotations": annotations,
    }


def dets(image_id: int, items: list[tuple[int, float, np.ndarray]]) -> dict:
    """A detection record from (category id, score, mask) triples; boxes from the masks."""
    return {
        "image_id": image_id,
        "boxes_xyxy_px": np.array([box_of(m) for _, _, m in items]).reshape(-1, 4),
        "scores": np.array([s for _, s, _ in items]),
        "category_ids": np.array([c for c, _, _ in items], dtype=np.int64),
        "masks": np.stack([m for _, _, m in items]) if items else np.zeros((0, H, W), bool),
    }


# ---------------------------------------------------------------------------------------------
# average_precision


def test_average_precision_by_hand() -> None:
    # Ranked TP, FP, TP, FP against 3 positives:
    #   precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3
    #   monotonic precision 1, 2/3, 2/3, 1/2 -> AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9
    ap = average_precision(np.array([0.6, 0.9, 0.7, 0.8]), np.array([0, 1, 1, 0]), 3)
    assert ap == pytest.approx(5 / 9)
    assert average_precision(np.array([0.9, 0.8]), np.array([1, 1]), 2) == pytest.approx(1.0)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 4) == 0.0
    assert math.isnan(average_precision(np.array([0.5]), np.array([0]), 0))


# ---------------------------------------------------------------------------------------------
# Open Images mask AP50


def two_image_case() -> tuple[dict, list[dict]]:
    """Class 1: 3 instances on 2 images, 4 detections (TP, FP, TP, FP by score)."""
    a1, a2, a3 = rect(0, 5, 0, 5), rect(5, 10, 5, 10), rect(0, 5, 5, 10)
    gt = gt_dict([ann(10, 1, 1, a1), ann(11, 2, 1, a2), ann(12, 2, 1, a3)])
    detections = [
        dets(1, [(1, 0.9, a1), (1, 0.6, rect(0, 5, 0, 4))]),  # TP; duplicate of a1 (IoU .8): FP
        dets(2, [(1, 0.8, rect(0, 5, 0, 5)), (1, 0.7, a2)]),  # nothing there: FP; TP
    ]
    return gt, detections


def test_oid_ap50_two_images_three_instances_four_detections() -> None:
    gt, detections = two_image_case()
    out = oid_mask_ap50(gt, detections, base_category_ids=[1], novel_category_ids=[])
    # Ranked .9 TP, .8 FP, .7 TP, .6 FP with 3 positives: 5/9 (test_average_precision_by_hand).
    assert out["per_class"][1]["ap50"] == pytest.approx(5 / 9)
    assert out["per_class"][1]["num_gt"] == 3
    assert out["per_class"][1]["num_detections"] == 4
    assert out["all"] == out["base"] == pytest.approx(5 / 9)
    assert out["novel"] is None
    assert out["num_classes_with_gt"] == {"all": 1, "base": 1, "novel": 0}


def test_oid_group_of_detections_collapse_to_one_true_positive() -> None:
    plain, group = rect(0, 3, 5, 10), rect(5, 10, 0, 10)
    gt = gt_dict([ann(1, 1, 2, plain), ann(2, 1, 2, group, is_group_of=True)], n_images=1)
    detections = [
        dets(
            1,
            [
                (2, 0.9, rect(5, 10, 0, 5)),  # inside the group (IoA 1, IoU .5 ignored)
                (2, 0.85, rect(5, 10, 5, 10)),  # inside the same group: collapses, no entry
                (2, 0.8, rect(0, 3, 0, 3)),  # on nothing: FP
                (2, 0.7, plain),  # TP
            ],
        )
    ]
    # Entries: group (score .9, TP), .8 FP, .7 TP against 2 positives (the group counts once):
    #   precision 1, 1/2, 2/3; recall 1/2, 1/2, 1 -> monotonic 1, 2/3, 2/3
    #   AP = 1/2 * 1 + 1/2 * 2/3 = 5/6   (counting the .85 one as an FP would give 3/4)
    out = oid_mask_ap50(gt, detections, base_category_ids=[], novel_category_ids=[2])
    assert out["per_class"][2]["ap50"] == pytest.approx(5 / 6)
    assert out["per_class"][2]["num_gt"] == 2
    assert out["novel"] == pytest.approx(5 / 6)


def test_oid_a_detection_takes_its_best_instance_or_is_a_false_positive() -> None:
    # 1 x 10 image; instances a = columns 0-5 and b = columns 3-8 of one class.
    hw = (1, 10)
    a, b = rect(0, 1, 0, 6, hw), rect(0, 1, 3, 9, hw)
    d2 = rect(0, 1, 1, 7, hw)  # IoU with a 5/7, with b 4/8: a is its best, and a is taken
    gt = {
        "images": [{"id": 1, "height": 1, "width": 10}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [ann(1, 1, 1, a), ann(2, 1, 1, b)],
    }
    record = {
        "image_id": 1,
        "boxes_xyxy_px": np.array([box_of(a), box_of(d2)]),
        "scores": np.array([0.9, 0.8]),
        "category_ids": np.array([1, 1]),
        "masks": np.stack([a, d2]),
    }
    out = oid_mask_ap50(gt, [record], base_category_ids=[1], novel_category_ids=[])
    # TP, FP against 2 positives: precision 1, 1/2; recall 1/2, 1/2 -> AP = 1/2.
    assert out["per_class"][1]["ap50"] == pytest.approx(0.5)


def test_oid_class_without_ground_truth_and_image_labels() -> None:
    gt, detections = two_image_case()
    detections[1]["category_ids"] = np.array([3, 1])  # the .8 FP now names class 3 (no GT)
    out = oid_mask_ap50(gt, detections, base_category_ids=[1], novel_category_ids=[3])
    assert out["per_class"][3] == {
        "name": "class3", "ap50": None, "num_gt": 0, "num_detections": 1
    }  # fmt: skip
    # Class 1 ranks .9 TP, .7 TP, .6 FP against 3 positives: AP = 1/3 + 1/3 = 2/3.
    assert out["per_class"][1]["ap50"] == pytest.approx(2 / 3)
    assert out["novel"] is None and out["all"] == pytest.approx(2 / 3)

    # Class 3 verified nowhere and without instances: its detection is not evaluated at all.
    labelled = oid_mask_ap50(
        gt, detections, base_category_ids=[1], novel_category_ids=[3], image_labels={1: [1]}
    )
    assert labelled["per_class"][3]["num_detections"] == 0
    # Class 1 has instances on image 2, so it is evaluated there although no label says so.
    assert labelled["per_class"][1]["num_detections"] == 3


def test_oid_box_only_instance_is_an_ignored_region() -> None:
    # The challenge's second stage (tests/models/test_open_images_eval.py has the other cases):
    # a detection whose box has IoU >= 0.5 with a box-only instance is neither TP nor FP.
    box_only = ann(1, 1, 1, rect(0, 5, 0, 5), has_mask=False)
    gt = gt_dict([box_only, ann(2, 1, 1, rect(5, 10, 5, 10))], n_images=1)
    detections = [dets(1, [(1, 0.9, rect(0, 5, 0, 4)), (1, 0.5, rect(5, 10, 5, 10))])]
    out = oid_mask_ap50(gt, detections, base_category_ids=[1], novel_category_ids=[])
    assert out["per_class"][1] == {"name": "class1", "ap50": 1.0, "num_gt": 1, "num_detections": 1}


def test_no_detections_at_all() -> None:
    gt, _ = two_image_case()
    oid = oid_mask_ap50(gt, [], base_category_ids=[1], novel_category_ids=[2])
    assert oid["base"] == 0.0 and oid["novel"] is None
    coco = coco_metrics(gt, [], base_category_ids=[1], novel_category_ids=[2])
    for iou_type in ("segm", "bbox"):
        assert coco[iou_type]["base"]["AP"] == 0.0
        assert coco[iou_type]["novel"]["AP"] is None
        assert coco[iou_type]["novel"]["num_gt"] == 0
    empty_records = [dets(1, []), dets(2, [])]  # records with no detection
    again = coco_metrics(gt, empty_records, base_category_ids=[1], novel_category_ids=[2])
    assert again == coco


# ---------------------------------------------------------------------------------------------
# COCO AP


def base_novel_case() -> tuple[dict, list[dict]]:
    """Class 1 (base) found perfectly on both images; class 2 (novel) missed, an FP instead."""
    b1, b2, n1 = rect(0, 5, 0, 5), rect(2, 8, 2, 8), rect(5, 10, 0, 4)
    gt = gt_dict([ann(1, 1, 1, b1), ann(2, 2, 1, b2), ann(3, 1, 2, n1)])
    detections = [
        dets(1, [(1, 0.9, b1), (2, 0.8, rect(0, 4, 6, 10))]),
        dets(2, [(1, 0.7, b2)]),
    ]
    return gt, detections


def test_coco_metrics_separate_base_and_novel() -> None:
    gt, detections = base_novel_case()
    out = coco_metrics(gt, detections, base_category_ids=[1], novel_category_ids=[2])
    for iou_type in ("segm", "bbox"):
        base, novel, every = (out[iou_type][k] for k in ("base", "novel", "all"))
        assert base["AP"] == base["AP50"] == base["AP75"] == pytest.approx(1.0)
        assert novel["AP"] == novel["AP50"] == 0.0
        assert every["AP"] == pytest.approx(0.5)  # mean of the two classes
        assert (base["num_gt"], novel["num_gt"], every["num_classes"]) == (2, 1, 2)
        per_class = out[iou_type]["per_class"]
        assert set(per_class) == {1, 2}
        assert (per_class[1]["AP50"], per_class[1]["num_gt"]) == (pytest.approx(1.0), 2)
        assert (per_class[2]["AP"], per_class[2]["num_gt"]) == (0.0, 1)
    oid = oid_mask_ap50(gt, detections, base_category_ids=[1], novel_category_ids=[2])
    assert (oid["base"], oid["novel"], oid["all"]) == (1.0, 0.0, 0.5)


def test_coco_subset_equals_cocoeval_with_restricted_cat_ids() -> None:
    gt, detections = two_image_case()
    gt["annotations"].append(ann(13, 1, 2, rect(6, 10, 0, 6)))
    detections[0] = dets(1, [(1, 0.9, rect(0, 5, 0, 5)), (2, 0.95, rect(6, 10, 0, 5))])
    out = coco_metrics(gt, detections, base_category_ids=[1], novel_category_ids=[2])

    results = []
    for d in detections:
        for k in range(len(d["scores"])):
            results.append(
                {
                    "image_id": d["image_id"],
                    "category_id": int(d["category_ids"][k]),
                    "score": float(d["scores"][k]),
                    "segmentation": encode_mask(d["masks"][k]),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        for cat_ids, subset in (([1], "base"), ([2], "novel"), ([1, 2], "all")):
            fresh = [dict(r) for r in results]  # loadRes adds fields to the records
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(fresh), iouType="segm")
            evaluator.params.catIds = cat_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            assert out["segm"][subset]["AP"] == pytest.approx(evaluator.stats[0])
            assert out["segm"][subset]["AP50"] == pytest.approx(evaluator.stats[1])
            assert out["segm"][subset]["AP75"] == pytest.approx(evaluator.stats[2])
            if len(cat_ids) == 1:  # one class: its per-class entry is COCOeval's on it alone
                entry = out["segm"]["per_class"][cat_ids[0]]
                assert entry["AP"] == pytest.approx(evaluator.stats[0])
                assert entry["AP50"] == pytest.approx(evaluator.stats[1])
                assert entry["AP75"] == pytest.approx(evaluator.stats[2])


def test_coco_metrics_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    gt, detections = base_novel_case()
    coco_metrics(gt, detections, base_category_ids=[1], novel_category_ids=[2])
    assert capsys.readouterr().out == ""


def test_box_only_instance_is_a_crowd_region_for_masks_only() -> None:
    gt = gt_dict([ann(1, 1, 1, rect(0, 5, 0, 5), has_mask=False)], n_images=1)
    detections = [dets(1, [(1, 0.9, rect(0, 5, 0, 5))])]
    out = coco_metrics(gt, detections, base_category_ids=[1], novel_category_ids=[])
    assert out["bbox"]["base"]["AP"] == pytest.approx(1.0)
    assert out["segm"]["base"]["AP"] is None and out["segm"]["base"]["num_gt"] == 0
    assert out["segm"]["per_class"][1] == {  # a class without ground truth: None, never 0
        "name": "class1", "AP": None, "AP50": None, "AP75": None, "num_gt": 0
    }  # fmt: skip


def test_input_forms_agree() -> None:
    """Polygons or RLEs in the ground truth; arrays, tensors or RLEs in the detections."""
    gt, detections = base_novel_case()
    reference = coco_metrics(gt, detections, base_category_ids=[1], novel_category_ids=[2])
    first = gt["annotations"][0]  # rows 0-4, columns 0-4: the polygon around those pixels
    first["segmentation"] = [[0.0, 0.0, 5.0, 0.0, 5.0, 5.0, 0.0, 5.0]]
    as_tensors = [
        {k: torch.as_tensor(v) if k != "image_id" else v for k, v in d.items()} for d in detections
    ]
    as_rles = [dict(d, masks=[encode_mask(m) for m in d["masks"]]) for d in detections]
    for variant in (as_tensors, as_rles):
        out = coco_metrics(gt, variant, base_category_ids=[1], novel_category_ids=[2])
        assert out == reference
    assert isinstance(image_detections(as_rles[0]), ImageDetections)


def test_max_dets_keeps_the_highest_scores_per_image() -> None:
    gt, _ = two_image_case()
    many = [dets(1, [(1, 0.1 + 0.01 * i, rect(9, 10, 9, 10)) for i in range(5)] +
                 [(1, 0.05, rect(0, 5, 0, 5))])]  # fmt: skip
    out = oid_mask_ap50(gt, many, base_category_ids=[1], novel_category_ids=[], max_dets=5)
    assert out["per_class"][1]["num_detections"] == 5  # the TP at .05 is cut
    assert out["base"] == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(image_id=99), "no ground truth"),
        (lambda d: d.update(masks=np.zeros((2, 5, 5), bool)), "original image pixels"),
        (lambda d: d.update(category_ids=np.array([1])), "category_ids"),
    ],
)
def test_bad_detections_are_named(change: Any, message: str) -> None:
    gt, detections = two_image_case()
    change(detections[0])
    with pytest.raises(ValueError, match=message):
        coco_metrics(gt, detections, base_category_ids=[1], novel_category_ids=[])


def test_bad_ground_truth_is_named() -> None:
    gt, detections = two_image_case()
    gt["annotations"][1]["category_id"] = 42
    with pytest.raises(ValueError, match="annotation 11: category_id 42"):
        oid_mask_ap50(gt, detections, base_category_ids=[1], novel_category_ids=[])
    gt, detections = two_image_case()
    with pytest.raises(ValueError, match="both base and novel"):
        coco_metrics(gt, detections, base_category_ids=[1], novel_category_ids=[1])
