"""What `models.evaluate` gathers while it runs a model over shards, and how it reports it:
the ground truth of each image (as a COCO instances dict), the detections, the files written
(the challenge's submission CSV, COCO results JSON) and the table printed.

Plain data: the targets come from `models.evaluate.GroundTruthEvalTransform`, the detections
from `models.predict`; no model here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from models.evaluation.oid_ground_truth import OidClassTable
from models.evaluation.records import ImageDetections
from models.evaluation.submission import write_coco_results, write_oid_submission

__all__ = [
    "ORIGINAL_BOXES",
    "ORIGINAL_MASKS",
    "GroundTruthCollector",
    "format_table",
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


def summary(coco: Mapping[str, Any], oid: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for subset in ("all", "base", "novel"):
        out[subset] = {
            "mask_AP": coco.get("segm", {}).get(subset, {}).get("AP"),
            "mask_AP50": coco.get("segm", {}).get(subset, {}).get("AP50"),
            "box_AP": coco.get("bbox", {}).get(subset, {}).get("AP"),
            "box_AP50": coco.get("bbox", {}).get(subset, {}).get("AP50"),
            "oid_mask_AP50": oid.get(subset),
        }
    return out


def percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def format_table(result: Mapping[str, Any]) -> str:
    """The summary as a text table: rows all / base / novel, AP values in percent ("-": no
    ground truth in that subset)."""
    header = ("classes", "mask AP", "mask AP50", "box AP", "box AP50", "OID mask AP50")
    rows = [("", *header)]
    segm = result["coco"].get("segm") or result["coco"].get("bbox")
    sizes = {"base": len(result["classes"]["base"]), "novel": len(result["classes"]["novel"])}
    sizes["all"] = sizes["base"] + sizes["novel"]
    for subset in ("all", "base", "novel"):
        s = result["summary"][subset]
        if segm is not None:
            with_gt, of = segm[subset]["num_classes_with_gt"], segm[subset]["num_classes"]
        else:  # Open Images shards: the challenge metric only
            with_gt, of = result["oid"]["num_classes_with_gt"][subset], sizes[subset]
        rows.append(
            (
                subset,
                f"{with_gt}/{of}",
                *(percent(s[k]) for k in ("mask_AP", "mask_AP50", "box_AP", "box_AP50")),
                percent(s["oid_mask_AP50"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    notes = [f"images: {result['num_images']}"]
    if result["classes"]["absent"]:
        notes.append(
            "classes of the split absent from the data (left out): "
            + ", ".join(result["classes"]["absent"])
        )
    return "\n".join(lines + notes)
