"""Evaluate a detector checkpoint on COCO shards: mask and box AP for all / base / novel classes.

    python -m models.evaluate --checkpoint run/checkpoint.pt \\
        --shards "coco_val/shards/shard-{000000..000004}.tar" --split coco_voc \\
        --size 1024 --out run/eval.json

One deterministic pass over the shards (`alp_dataset.datasets.CocoShardDataset` in exact-epoch
mode, no shuffling, crowd instances kept). Each image goes through `GroundTruthEvalTransform`:
`EvalTransform` (longer side resized to ``--size``, padded to a square; the batch is zero-padded
further to a multiple of 128 when ``--size`` is not one) that also keeps every instance's box
and mask *as decoded from the shard*, i.e. in the original image's pixels. The ground truth for
the metrics is built from those originals, so it is exactly the stored annotation (no resampling
there and back); predictions are mapped to the original pixels with the transform's `Geometry`
(`boxes_to_input`, and `masks_to_input` on the mask probabilities, thresholded at 0.5).

Classes: the model scores the split's class names (base first, then novel), embedded with the
checkpoint's text encoder through the prompt ensemble. COCO category ids come from the shards
(each instance carries its ``category_ids`` and class name): a class of the split that never
occurs in the data is reported as absent and has no part in any number. Crowd instances are
COCO's ignored regions for COCO AP and group-of instances for the Open Images metric.

Metrics (`models.evaluation`): COCO AP / AP50 / AP75 through pycocotools for masks and boxes,
and the Open-Images-challenge mask AP50 (every class verified on every image: COCO is annotated
exhaustively). The table printed has rows all / base / novel; ``--out`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader
from tqdm import tqdm

from alp_dataset.coco_shards import encode_mask
from alp_dataset.datasets import CocoShardDataset, shard_urls
from alp_dataset.loader import make_loader
from alp_dataset.transforms import GEOMETRY, INSTANCES, EvalTransform, Instances
from models.evaluation import ImageDetections, coco_metrics, oid_mask_ap50
from models.predict import (
    default_device,
    inference_settings,
    load_for_inference,
    parse_class_list,
    predict_batch,
)

__all__ = [
    "ORIGINAL_BOXES",
    "ORIGINAL_MASKS",
    "GroundTruthEvalTransform",
    "build_parser",
    "eval_dataset",
    "evaluate_model",
    "format_table",
    "main",
]

ORIGINAL_BOXES = "original_boxes_xyxy_px"  # float32 (N, 4), pixels of the stored image
ORIGINAL_MASKS = "original_mask_rles"  # N compressed RLEs of the stored masks (None: no mask)


@dataclass(frozen=True)
class GroundTruthEvalTransform(EvalTransform):
    """`EvalTransform` that also puts each instance's box and mask, as they were before the
    transform (original image pixels), into the target under ``ORIGINAL_BOXES`` and
    ``ORIGINAL_MASKS`` (RLE: small to pass between loader workers). EvalTransform drops no
    instance, so these stay aligned with the other per-instance entries."""

    def __call__(
        self, image: torch.Tensor, target: Mapping[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        instances = None if target is None else target.get(INSTANCES)
        image, out = super().__call__(image, target)
        if isinstance(instances, Instances):
            n = len(instances.boxes_xyxy_px)
            masks = instances.masks
            out[ORIGINAL_BOXES] = instances.boxes_xyxy_px.clone()
            out[ORIGINAL_MASKS] = (
                (None,) * n
                if masks is None
                else tuple(encode_mask(m.numpy()) if m.any() else None for m in masks)
            )
        return image, out


def eval_dataset(urls: str | Sequence[str], *, size: int, **kwargs: Any) -> CocoShardDataset:
    """COCO shards read once in a fixed order, crowds kept, through `GroundTruthEvalTransform`
    (what `evaluate_model` needs). ``kwargs`` go to `CocoShardDataset`."""
    options: dict[str, Any] = {
        "epoch_length": None,
        "shuffle_buffer": 0,
        "keep_crowd": True,
        "rank": 0,
        "world_size": 1,
        **kwargs,
    }
    return CocoShardDataset(urls, transform=GroundTruthEvalTransform(size=size), **options)


# ---------------------------------------------------------------------------------------------
# The evaluation loop


class _Collector:
    """Ground truth (a COCO instances dict) and detections gathered image by image."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.category_of: dict[str, int] = {}  # class name -> COCO category id
        self.detections: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, tuple]] = []
        self._seen: set[int] = set()

    def add_ground_truth(self, target: Mapping[str, Any]) -> int:
        image_id = int(target["image_id"])
        where = f"image {image_id}"
        if ORIGINAL_MASKS not in target:
            raise ValueError(
                f"{where}: target lacks {ORIGINAL_MASKS!r}; read the shards with "
                "models.evaluate.eval_dataset (GroundTruthEvalTransform)"
            )
        if image_id in self._seen:
            raise ValueError(f"{where} occurs twice in the shards")
        self._seen.add(image_id)
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

    def ground_truth(self) -> dict[str, Any]:
        categories = [{"id": c, "name": n} for n, c in sorted(self.category_of.items())]
        return {"images": self.images, "categories": categories, "annotations": self.annotations}


def _rle_area(rle: Mapping[str, Any]) -> int:
    return int(mask_utils.area(dict(rle)))


def _as_loader(data: Any, batch_size: int, workers: int) -> Iterable[Any]:
    if isinstance(data, DataLoader):
        return data
    return make_loader(data, batch_size=batch_size, num_workers=workers)


def _summary(coco: Mapping[str, Any], oid: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
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


def evaluate_model(
    model: torch.nn.Module,
    dataset_or_loader: Any,
    class_names: Sequence[str],
    base: Sequence[str],
    novel: Sequence[str],
    *,
    class_embeddings: torch.Tensor,
    device: str | torch.device | None = None,
    batch_size: int = 4,
    workers: int = 0,
    limit: int | None = None,
    score_threshold: float | None = None,
    nms_threshold: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``model`` over a dataset from `eval_dataset` (or a loader of its batches, made with
    `alp_dataset.loader.collate`) and compute the metrics.

    ``class_embeddings`` (C, D) rows belong to ``class_names``, the model's label order;
    ``base`` and ``novel`` are disjoint subsets of ``class_names``. ``limit`` stops after that
    many images; the thresholds, when given, override the model's for this run.

    Returns ``{"num_images", "seconds", "data_errors", "classes": {"base", "novel", "absent"},
    "category_ids": {name: id}, "summary": {subset: {"mask_AP", "mask_AP50", "box_AP",
    "box_AP50", "oid_mask_AP50"}}, "coco": `coco_metrics` output, "oid": `oid_mask_ap50`
    output}``; AP values in [0, 1], None where a subset has no ground truth.
    """
    class_names = list(class_names)
    outside = sorted(set(base) - set(class_names)) + sorted(set(novel) - set(class_names))
    if outside:
        raise ValueError(f"base / novel classes {outside} are not among class_names")
    if len(class_embeddings) != len(class_names):
        raise ValueError(
            f"{len(class_names)} class names but {len(class_embeddings)} class embeddings"
        )
    if device is None:
        device = next(model.parameters()).device
    collected = _Collector()
    start = time.perf_counter()
    bar = tqdm(total=limit, unit="image", desc="evaluate", disable=not progress, file=sys.stderr)
    with inference_settings(model, score_threshold=score_threshold, nms_threshold=nms_threshold):
        for images, targets in _as_loader(dataset_or_loader, batch_size, workers):
            if limit is not None:
                room = limit - len(collected.images)
                images, targets = images[:room], targets[:room]
            preds = predict_batch(
                model, images, [t[GEOMETRY] for t in targets], class_embeddings, device=device
            )
            for target, pred in zip(targets, preds, strict=True):
                image_id = collected.add_ground_truth(target)
                rles = tuple(encode_mask(m) for m in pred.masks) if pred.masks is not None else ()
                collected.detections.append(
                    (image_id, pred.boxes_xyxy_px, pred.scores, pred.labels, rles)
                )
            bar.update(len(targets))
            if limit is not None and len(collected.images) >= limit:
                break
    bar.close()

    present = collected.category_of
    label_to_category = np.array([present.get(n, -1) for n in class_names], dtype=np.int64)
    detections = []
    for image_id, boxes, scores, labels, rles in collected.detections:
        category_ids = label_to_category[labels] if len(labels) else np.zeros(0, np.int64)
        keep = category_ids >= 0  # classes absent from the data have no category id
        detections.append(
            ImageDetections(
                image_id=image_id,
                boxes_xyxy_px=boxes[keep].astype(np.float64),
                scores=scores[keep].astype(np.float64),
                category_ids=category_ids[keep],
                masks=tuple(r for r, k in zip(rles, keep, strict=True) if k) if rles else None,
            )
        )
    base_ids = [present[n] for n in base if n in present]
    novel_ids = [present[n] for n in novel if n in present]
    gt = collected.ground_truth()
    coco = coco_metrics(gt, detections, base_category_ids=base_ids, novel_category_ids=novel_ids)
    oid = oid_mask_ap50(gt, detections, base_category_ids=base_ids, novel_category_ids=novel_ids)
    errors = getattr(dataset_or_loader, "dataset", dataset_or_loader)
    return {
        "num_images": len(collected.images),
        "seconds": time.perf_counter() - start,
        # Shards / samples the dataset skipped as unreadable (CocoShardDataset, on_error="warn").
        "data_errors": errors.error_counts() if hasattr(errors, "error_counts") else None,
        "classes": {
            "base": list(base),
            "novel": list(novel),
            "absent": [n for n in (*base, *novel) if n not in present],
        },
        "category_ids": {n: present[n] for n in (*base, *novel) if n in present},
        "summary": _summary(coco, oid),
        "coco": coco,
        "oid": oid,
    }


# ---------------------------------------------------------------------------------------------
# Output


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def format_table(result: Mapping[str, Any]) -> str:
    """The summary as a text table: rows all / base / novel, AP values in percent ("-": no
    ground truth in that subset)."""
    header = ("classes", "mask AP", "mask AP50", "box AP", "box AP50", "OID mask AP50")
    rows = [("", *header)]
    segm = result["coco"].get("segm") or result["coco"].get("bbox")
    for subset in ("all", "base", "novel"):
        s = result["summary"][subset]
        counts = segm[subset]
        rows.append(
            (
                subset,
                f"{counts['num_classes_with_gt']}/{counts['num_classes']}",
                *(_percent(s[k]) for k in ("mask_AP", "mask_AP50", "box_AP", "box_AP50")),
                _percent(s["oid_mask_AP50"]),
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


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.evaluate",
        description="Evaluate a detector checkpoint (any --arch) on COCO shards: COCO mask / box "
        "AP and Open-Images-style mask AP50 for all, base and novel classes.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="model checkpoint")
    parser.add_argument(
        "--shards",
        required=True,
        action="append",
        metavar="DIR_OR_URLS",
        help="COCO shards of pipelines/build_coco_shards.py with masks for every class: its "
        "output folder, a brace pattern, or several patterns joined by '::'; repeat the flag "
        "for more",
    )
    parser.add_argument(
        "--split",
        metavar="NAME",
        help="class split of alp_dataset.class_splits (coco_voc, coco_nonvoc, coco_zsd_48_17)",
    )
    parser.add_argument(
        "--base-classes", metavar="A,B", help="base class names (instead of --split)"
    )
    parser.add_argument(
        "--novel-classes", metavar="C,D", help="novel class names (with --base-classes)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="S",
        help="longer image side fed to the model (padded to S x S, then to a multiple of 128); "
        "default: the training crop side of the checkpoint (--image-size)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, metavar="B", help="images per batch; default: 4"
    )
    parser.add_argument(
        "--workers", type=int, default=0, metavar="W", help="DataLoader workers; default: 0"
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="stop after N images (a quick look)"
    )
    parser.add_argument(
        "--nms-threshold",
        type=float,
        default=None,
        metavar="X",
        help="IoU threshold of the class-wise NMS; default: the model's",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        metavar="X",
        help="candidates scoring at most X are dropped before NMS; default: the model's",
    )
    parser.add_argument("--out", metavar="JSON", help="write all results to this JSON file")
    parser.add_argument(
        "--device", default=None, help="torch device (cpu, cuda); default: cuda when available"
    )
    return parser


def _classes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list, list]:
    from alp_dataset.class_splits import get_split

    by_list = args.base_classes is not None or args.novel_classes is not None
    if (args.split is None) == (not by_list):
        parser.error("give either --split or --base-classes with --novel-classes")
    try:
        if args.split is not None:
            split = get_split(args.split)
            return list(split.base), list(split.novel)
        if args.base_classes is None or args.novel_classes is None:
            parser.error("--base-classes and --novel-classes go together")
        base = parse_class_list(args.base_classes)
        novel = parse_class_list(args.novel_classes)
    except ValueError as exc:
        parser.error(str(exc))
    both = sorted(set(base) & set(novel))
    if both:
        parser.error(f"{both} are both base and novel classes")
    return base, novel


def main(argv: Sequence[str] | None = None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)
    base, novel = _classes(args, parser)
    for flag, value in (("--size", args.size), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be positive, got {value}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be positive, got {args.limit}")
    try:
        urls = [u for pattern in args.shards for u in shard_urls(pattern)]
    except ValueError as exc:
        parser.error(f"--shards: {exc}")
    if not urls:
        parser.error(f"--shards {args.shards}: no shard files")
    device = args.device or default_device()

    class_names = [*base, *novel]
    model, config, embeddings, args.size = load_for_inference(
        parser, args.checkpoint, class_names, size=args.size, device=device
    )
    result = evaluate_model(
        model,
        eval_dataset(urls, size=args.size),
        class_names,
        base,
        novel,
        class_embeddings=embeddings,
        device=device,
        batch_size=args.batch_size,
        workers=args.workers,
        limit=args.limit,
        score_threshold=args.score_threshold,
        nms_threshold=args.nms_threshold,
    )
    result = {
        "checkpoint": os.fspath(args.checkpoint),
        "shards": urls,
        "size": args.size,
        "text_encoder": config["text_encoder"],
        **result,
    }
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
