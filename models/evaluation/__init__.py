"""Instance-segmentation metrics on plain data: COCO AP through pycocotools (``coco``),
Open-Images AP50 (``open_images``); detections and ground truth in ``records``.

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
  (COCO: a crowd region; Open Images: the challenge's second stage, a detection whose box has
  IoU >= 0.5 with it, or IoA >= 0.5 with a box-only group-of instance, is ignored; see
  `models.evaluation.open_images` for every rule of that protocol and its reference).
"""

from __future__ import annotations

from models.evaluation.coco import coco_metrics
from models.evaluation.open_images import ImageLabels, average_precision, oid_mask_ap50
from models.evaluation.records import SUBSETS, ImageDetections, image_detections

__all__ = [
    "SUBSETS",
    "ImageDetections",
    "ImageLabels",
    "average_precision",
    "coco_metrics",
    "image_detections",
    "oid_mask_ap50",
]
