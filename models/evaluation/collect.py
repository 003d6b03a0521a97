"""What `models.evaluate` gathers while it runs a model over shards, and how it reports it:
the ground truth of each image (as a COCO instances dict), the detections, the files written
(the challenge's submission CSV, COCO results JSON) and the table printed.

Plain data: the targets come from `models.evaluate.GroundTruthEvalTransform`, the detections
from `models.inference`; no model here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from models.evaluation.oid_ground_truth import OidClassTable
from models.evaluation.records import SUBSETS, ImageDetections
from models.evaluation.submission import write_coco_results, write_oid_submission

__all__ = [
    "ORIGINAL_BOXES",
    "ORIGINAL_MASKS",
    "UNITS",
    "GroundTruthCollector",
    "coco_in_percent",
    "format_per_class",
    "format_table",
    "oid_in_percent",
    "per_class",
    "percent",
    "summary",
    "write_detections",
]

ORIGINAL_BOXES = "original_boxes_xyxy_px"  # float32 (N, 4), pixels of the stored image
ORIGINAL_MASKS = "original_mask_rles"  # N compressed RLEs of the stored masks (None: no mask)


class GroundTruthCollector:
    """Ground truth (a COCO instances dict) and detections gathered image by image."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.category_of: dict[str, int] = {}  # class name -> COCO category id
        self.detections: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, tuple]] = []
        self.source_ids: dict[int, Any] = {}  # evaluation id -> the shards' id (ImageID)
        self.image_labels: dict[int, Mapping[str, Any]] = {}  # Open Images: verified labels
        self._seen: set[Any] = set()

    def add_ground_truth(self, target: Mapping[str, Any]) -> int:
        source_id = target["image_id"]
        # Open Images ImageIDs are strings: numbered 1, 2, ... in reading order here.
        image_id = len(self.images) + 1 if isinstance(source_id, str) else int(source_id)
        where = f"image {source_id}"
        if ORIGINAL_MASKS not in target:
            raise ValueError(
                f"{where}: target lacks {ORIGINAL_MASKS!r}; read the shards with "
                "models.evaluate.eval_dataset (GroundTruthEvalTransform)"
            )
        if source_id in self._seen:
            raise ValueError(f"{where} occurs twice in the shards")
        self._seen.add(source_id)
        self.source_ids[image_id] = source_id
        if "image_labels" in target:
            self.image_labels[image_id] = target["image_labels"]
        height, width = (int(v) for v in target["image_hw"])
        self.images.append({"id": image_id, "height": height, "width": width})
        boxes = target[ORIGINAL_BOXES]
        rles = target[ORIGINAL_MASKS]
        n = len(boxes)
        crowd = target.get("iscrowd")
        for j in range(n):
            name, category_id = str(target["phrases"][j]), int(target["category_ids"][j])
            if self.category_of.setdefault(name, category_id) != category_id:
                raise ValueError(
                    f"{where}: class {name!r} has category_id {category_id}, earlier "
                    f"{self.category_of[name]}"
                )
            x0, y0, x1, y1 = (float(v) for v in boxes[j])
            rle = rles[j] if bool(target["has_mask"][j]) else None
            is_crowd = bool(crowd[j]) if crowd is not None else False
            self.annotations.append(
                {
                    "id": int(target["annotation_ids"][j]),
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    # The mask's pixel count (COCO's own area is the polygon's, a hair apart).
                    "area": float(_rle_area(rle)) if rle else (x1 - x0) * (y1 - y0),
                    "iscrowd": int(is_crowd),
                    "is_group_of": is_crowd,
                    "has_mask": rle is not None,
                    "segmentation": rle,
                }
            )
        return image_id

    def ground_truth(self, oid_classes: OidClassTable | None = None) -> dict[str, Any]:
        names = dict(oid_classes.category_ids) if oid_classes else self.category_of
        categories = [{"id": c, "name": n} for n, c in sorted(names.items())]
        return {"images": self.images, "categories": categories, "annotations": self.annotations}


def write_detections(
    collected: GroundTruthCollector,
    detections: Sequence[ImageDetections],
    oid_classes: OidClassTable | None,
    submission_csv: str | Path | None,
    results_json: str | Path | None,
) -> None:
    """Write the challenge's submission CSV and / or COCO's results JSON (folders made)."""
    for path in (submission_csv, results_json):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if submission_csv is not None:
        if oid_classes is None:
            raise ValueError("a submission CSV needs Open Images shards (ImageIDs, LabelNames)")
        sizes = {i["id"]: (i["height"], i["width"]) for i in collected.images}
        images = {i: (str(collected.source_ids[i]), *sizes[i]) for i in sizes}
        write_oid_submission(
            submission_csv, detections, images=images, label_names=oid_classes.label_names
        )
    if results_json is not None:
        write_coco_results(results_json, detections, image_ids=collected.source_ids)


def _rle_area(rle: Mapping[str, Any]) -> int:
    return int(mask_utils.area(dict(rle)))


AP_KEYS = ("AP", "AP50", "AP75", "ap50")  # the AP values of the metrics' outputs
UNITS = "percent"  # of every AP value `models.evaluate` reports (table and JSON)


PERCENT_DECIMALS = 4  # far below any difference a table shows; keeps 100.0 from 99.99999999999999


def percent(value: float | None) -> float | None:
    """An AP in [0, 1] as a percentage (None stays None: no ground truth)."""
    return None if value is None or math.isnan(value) else round(100.0 * value, PERCENT_DECIMALS)


def _entry_in_percent(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: percent(v) if k in AP_KEYS else v for k, v in entry.items()}


def coco_in_percent(coco: Mapping[str, Any]) -> dict[str, Any]:
    """`coco_metrics` output with every AP value in percent."""
    out: dict[str, Any] = {}
    for iou_type, per_type in coco.items():
        out[iou_type] = {
            subset: (
                {c: _entry_in_percent(e) for c, e in entry.items()}
                if subset == "per_class"
                else _entry_in_percent(entry)
            )
            for subset, entry in per_type.items()
        }
    return out


def oid_in_percent(oid: Mapping[str, Any]) -> dict[str, Any]:
    """`oid_mask_ap50` output with every AP value in percent."""
    out = {k: percent(oid[k]) for k in SUBSETS if k in oid}
    out["num_classes_with_gt"] = dict(oid.get("num_classes_with_gt", {}))
    out["per_class"] = {c: _entry_in_percent(e) for c, e in oid.get("per_class", {}).items()}
    return out


def summary(coco: Mapping[str, Any], oid: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per subset (all / base / novel) the headline numbers of `coco_metrics` and
    `oid_mask_ap50` outputs, in their units."""
    out = {}
    for subset in SUBSETS:
        out[subset] = {
            "mask_AP": coco.get("segm", {}).get(subset, {}).get("AP"),
            "mask_AP50": coco.get("segm", {}).get(subset, {}).get("AP50"),
            "box_AP": coco.get("bbox", {}).get(subset, {}).get("AP"),
            "box_AP50": coco.get("bbox", {}).get(subset, {}).get("AP50"),
            "oid_mask_AP50": oid.get(subset),
        }
    return out


def per_class(
    coco: Mapping[str, Any],
    oid: Mapping[str, Any],
    category_ids: Mapping[str, int],
    novel: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Per class present in the data (``category_ids``: name -> id, in the split's order) the
    numbers of `summary`, its part ("base" / "novel") and ``num_gt`` (instances with masks, crowds
    left out; Open Images: a group-of counts as the metric's weight)."""
    novel = set(novel)
    segm = coco.get("segm", {}).get("per_class", {})
    bbox = coco.get("bbox", {}).get("per_class", {})
    oid_classes = oid.get("per_class", {})
    out: dict[str, dict[str, Any]] = {}
    for name, c in category_ids.items():
        mask, box, challenge = segm.get(c, {}), bbox.get(c, {}), oid_classes.get(c, {})
        num_gt = mask.get("num_gt", box.get("num_gt", challenge.get("num_gt", 0)))
        out[name] = {
            "category_id": c,
            "part": "novel" if name in novel else "base",
            "num_gt": num_gt,
            "mask_AP": mask.get("AP"),
            "mask_AP50": mask.get("AP50"),
            "box_AP": box.get("AP"),
            "box_AP50": box.get("AP50"),
            "oid_mask_AP50": challenge.get("ap50"),
        }
    return out


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    return lines


METRIC_COLUMNS = (
    ("mask AP", "mask_AP"),
    ("mask AP50", "mask_AP50"),
    ("box AP", "box_AP"),
    ("box AP50", "box_AP50"),
    ("OID mask AP50", "oid_mask_AP50"),
)


def format_table(result: Mapping[str, Any]) -> str:
    """The summary as a text table: rows all / base / novel, AP values in percent ("-": no
    ground truth in that subset)."""
    rows = [("AP in %", "classes", *(h for h, _ in METRIC_COLUMNS))]
    segm = result["coco"].get("segm") or result["coco"].get("bbox")
    sizes = {"base": len(result["classes"]["base"]), "novel": len(result["classes"]["novel"])}
    sizes["all"] = sizes["base"] + sizes["novel"]
    for subset in SUBSETS:
        s = result["summary"][subset]
        if segm is not None:
            with_gt, of = segm[subset]["num_classes_with_gt"], segm[subset]["num_classes"]
        else:  # Open Images shards: the challenge metric only
            with_gt, of = result["oid"]["num_classes_with_gt"][subset], sizes[subset]
        rows.append((subset, f"{with_gt}/{of}", *(_cell(s[k]) for _, k in METRIC_COLUMNS)))
    notes = [f"images: {result['num_images']}"]
    if result["classes"]["absent"]:
        notes.append(
            "classes of the split absent from the data (left out): "
            + ", ".join(result["classes"]["absent"])
        )
    return "\n".join(_columns(rows) + notes)


def format_per_class(result: Mapping[str, Any]) -> str:
    """`per_class` of a result as a text table, one row per class (base first, then novel),
    AP values in percent ("-": no ground truth of that class, or a metric not computed)."""
    rows = [("class (AP in %)", "part", "instances", *(h for h, _ in METRIC_COLUMNS))]
    table = result["per_class"]
    for part in ("base", "novel"):
        for name, entry in table.items():
            if entry["part"] == part:
                values = (_cell(entry[k]) for _, k in METRIC_COLUMNS)
                rows.append((name, part, str(entry["num_gt"]), *values))
    return "\n".join(_columns(rows))
