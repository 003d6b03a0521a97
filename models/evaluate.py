"""Evaluate a detector checkpoint on COCO shards: mask and box AP for all / base / novel classes
and for each class.

    python -m models.evaluate --checkpoint run/checkpoint.pt \\
        --shards "coco_val/shards/shard-{000000..000004}.tar" --class-split coco_voc \\
        --image-size 1024 --output run/eval.json --per-class --plot run/per_class.png \\
        --detections run/detections.json

In Python, from a checkpoint to the result dict (the JSON of ``--output``):

    model = load_model("run/checkpoint.pt")                       # models.inference
    names = [*base, *novel]
    result = evaluate_model(model, eval_dataset("coco_val", size=default_image_size(model)),
                            names, base, novel)
    result["summary"]["novel"]["mask_AP50"], result["per_class"]["dog"]["mask_AP50"]

One deterministic pass over the shards (`alp_dataset.datasets.CocoShardDataset` in exact-epoch
mode, no shuffling, crowd instances kept). Each image goes through `GroundTruthEvalTransform`:
`EvalTransform` (longer side resized to ``--image-size``, padded to a square; the batch is
zero-padded further to a multiple of 128 when ``--image-size`` is not one) that also keeps every
instance's box and mask *as decoded from the shard*, i.e. in the original image's pixels. The
ground truth for the metrics is built from those originals, so it is exactly the stored
annotation (no resampling there and back); predictions are mapped to the original pixels with
the transform's `Geometry` (`boxes_to_input`, and `masks_to_input` on the mask probabilities,
thresholded at 0.5).

Before the model loads, the shards are checked (`models.evaluation.shards`): files that do not
exist, shards that hold no image and ALP shards (`pipelines/extract_alps.py`, no masks) are
usage errors naming the path; the manifests' sample counts give the progress bar its total.

Classes: the model scores the split's class names (base first, then novel), embedded with the
checkpoint's text encoder through the prompt ensemble. COCO category ids come from the shards
(each instance carries its ``category_ids`` and class name): a class of the split that never
occurs in the data is reported as absent and has no part in any number. Crowd instances are
COCO's ignored regions for COCO AP and group-of instances for the Open Images metric.

Metrics (`models.evaluation`): COCO AP / AP50 / AP75 through pycocotools for masks and boxes,
and the Open-Images-challenge mask AP50 (every class verified on every image: COCO is annotated
exhaustively), per subset and per class. On Open Images shards (`pipelines/build_oid_shards.py`,
told by their manifest) only the challenge's metric is computed, with each image's verified
labels and the class hierarchy; ``--submission`` writes the challenge's submission CSV.
``--detections`` writes COCO's results JSON (RLE masks), ``--output`` everything as JSON,
``--plot`` the per-class mask AP50 chart. Every AP, in the table and the JSON, is in percent
(the JSON's ``"units": "percent"``); the library metrics (`coco_metrics`, `oid_mask_ap50`)
return fractions in [0, 1] as pycocotools does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from alp_curation import flags
from alp_dataset.coco_shards import encode_mask
from alp_dataset.datasets import CocoShardDataset, shard_urls
from alp_dataset.loader import make_loader
from alp_dataset.open_images import load_hierarchy
from alp_dataset.transforms import GEOMETRY, INSTANCES, EvalTransform, Instances
from models.evaluation import ImageDetections, coco_metrics, oid_mask_ap50
from models.evaluation.collect import (
    ORIGINAL_BOXES,
    ORIGINAL_MASKS,
    UNITS,
    GroundTruthCollector,
    coco_in_percent,
    format_per_class,
    format_table,
    oid_in_percent,
    per_class,
    summary,
    write_detections,
)
from models.evaluation.oid_ground_truth import OidClassTable, find_oid_manifest
from models.evaluation.shards import ShardsError, inspect_eval_shards
from models.inference import (
    default_device,
    default_image_size,
    embed_classes,
    inference_settings,
    load_model,
    predict_batch,
)
from models.predict import load_for_inference

__all__ = [
    "ORIGINAL_BOXES",
    "ORIGINAL_MASKS",
    "GroundTruthEvalTransform",
    "build_parser",
    "default_image_size",
    "eval_dataset",
    "evaluate_model",
    "format_per_class",
    "format_table",
    "load_model",
    "main",
]


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
    """COCO or Open Images shards (a pipeline's output folder, a brace pattern, a list) read
    once in a fixed order, crowds kept, through `GroundTruthEvalTransform` with longer side
    ``size`` (what `evaluate_model` needs; `models.inference.default_image_size` gives the
    checkpoint's). ``kwargs`` go to `CocoShardDataset`."""
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


def _as_loader(data: Any, batch_size: int, workers: int) -> Iterable[Any]:
    if isinstance(data, DataLoader):
        return data
    return make_loader(data, batch_size=batch_size, num_workers=workers)


def _bar_total(data: Any, limit: int | None) -> int | None:
    """Images the pass will read, when the shards' manifests say (and ``limit`` caps it);
    `ShardsError` for shards that cannot be evaluated (`inspect_eval_shards`)."""
    urls = getattr(getattr(data, "dataset", data), "urls", None)
    known = inspect_eval_shards(urls).num_images if urls else None
    if known is None:
        return limit
    return known if limit is None else min(known, limit)


def evaluate_model(
    model: torch.nn.Module,
    dataset_or_loader: Any,
    class_names: Sequence[str],
    base: Sequence[str],
    novel: Sequence[str],
    *,
    class_embeddings: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 4,
    workers: int = 0,
    limit: int | None = None,
    score_threshold: float | None = None,
    nms_threshold: float | None = None,
    progress: bool = True,
    oid_classes: OidClassTable | None = None,
    group_of_weight: float = 1.0,
    submission_csv: str | Path | None = None,
    detections_json: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``model`` over a dataset from `eval_dataset` (or a loader of its batches, made with
    `alp_dataset.loader.collate`) and compute the metrics.

    ``class_names`` is the model's label order; ``base`` and ``novel`` are disjoint subsets of
    it. ``class_embeddings`` (C, D) rows belong to ``class_names`` (default: `embed_classes` of
    a model from `load_model`). ``limit`` stops after that many images; the thresholds, when
    given, override the model's for this run.

    Open Images shards (``oid_classes``, from their manifest): category ids are the table's for
    every kept class (a parent class can have positives through its children without
    instances of its own); the metric is the challenge's (`oid_mask_ap50` with the images'
    verified labels, the hierarchy and ``group_of_weight``); COCO AP, which assumes exhaustive
    annotation, is not computed. ``submission_csv`` writes the challenge submission file (Open
    Images shards only), ``detections_json`` COCO's results JSON (``image_id`` as the shards
    hold it, ``category_id``, ``bbox`` [x, y, w, h] in original pixels, ``score``,
    ``segmentation`` RLE with str ``counts``: what ``pycocotools.COCO.loadRes`` reads).

    Returns ``{"units": "percent", "num_images", "seconds", "data_errors", "classes": {"base",
    "novel", "absent"}, "category_ids": {name: id}, "summary": {subset: {"mask_AP",
    "mask_AP50", "box_AP", "box_AP50", "oid_mask_AP50"}}, "per_class": {name: {"category_id",
    "part", "num_gt", and the keys of summary}}, "coco": `coco_metrics` output, "oid":
    `oid_mask_ap50` output}``; every AP in percent (0-100), None where a subset or class has no
    ground truth (or, on Open Images shards, for the COCO metrics).
    `models.evaluation.shards.ShardsError` (a ValueError) when the shards cannot be evaluated
    (missing, ALP shards) or hold no image.
    """
    class_names = list(class_names)
    outside = sorted(set(base) - set(class_names)) + sorted(set(novel) - set(class_names))
    if outside:
        raise ValueError(f"base / novel classes {outside} are not among class_names")
    if class_embeddings is None:
        class_embeddings = embed_classes(model, class_names)
    if len(class_embeddings) != len(class_names):
        raise ValueError(
            f"{len(class_names)} class names but {len(class_embeddings)} class embeddings"
        )
    if device is None:
        device = next(model.parameters()).device
    collected = GroundTruthCollector()
    start = time.perf_counter()
    total = _bar_total(dataset_or_loader, limit)
    bar = tqdm(total=total, unit="image", desc="evaluate", disable=not progress, file=sys.stderr)
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
    data = getattr(dataset_or_loader, "dataset", dataset_or_loader)
    if not collected.images:
        urls = getattr(data, "urls", None) or ["(a loader)"]
        more = f" and {len(urls) - 1} more" if len(urls) > 1 else ""
        raise ShardsError(
            f"shards {urls[0]}{more}: no image read (empty shards, or every sample unreadable: "
            "see the warnings above)"
        )

    present = dict(oid_classes.category_ids) if oid_classes else collected.category_of
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
    gt = collected.ground_truth(oid_classes)
    subsets = {"base_category_ids": base_ids, "novel_category_ids": novel_ids}
    if oid_classes is None:
        coco = coco_metrics(gt, detections, **subsets)
        oid = oid_mask_ap50(gt, detections, **subsets)
    else:
        coco = {}
        labels = {i: oid_classes.image_labels(v) for i, v in collected.image_labels.items()}
        oid = oid_mask_ap50(
            gt,
            detections,
            **subsets,
            image_labels=labels,
            hierarchy=oid_classes.ancestors,
            group_of_weight=group_of_weight,
        )
    write_detections(collected, detections, oid_classes, submission_csv, detections_json)
    coco, oid = coco_in_percent(coco), oid_in_percent(oid)
    category_ids = {n: present[n] for n in (*base, *novel) if n in present}
    return {
        "units": UNITS,
        "num_images": len(collected.images),
        "seconds": time.perf_counter() - start,
        # Shards / samples the dataset skipped as unreadable (CocoShardDataset, on_error="warn").
        "data_errors": data.error_counts() if hasattr(data, "error_counts") else None,
        "classes": {
            "base": list(base),
            "novel": list(novel),
            "absent": [n for n in (*base, *novel) if n not in present],
        },
        "category_ids": category_ids,
        "summary": summary(coco, oid),
        "per_class": per_class(coco, oid, category_ids, novel),
        "coco": coco,
        "oid": oid,
    }


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.evaluate",
        formatter_class=flags.HelpFormatter,
        description="Evaluate a detector checkpoint (any --arch) on COCO or Open Images shards: "
        "COCO mask / box AP and Open-Images-style mask AP50 for all, base and novel classes, "
        "and per class. Every AP is in percent.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="model checkpoint")
    parser.add_argument(
        "--shards",
        required=True,
        action="append",
        metavar="DIR_OR_URLS",
        help="shards with masks for every class, of pipelines/build_coco_shards.py or "
        "build_oid_shards.py (the challenge's protocol; needs their manifest): the output "
        "folder, a brace pattern, or several patterns joined by '::'; repeat the flag "
        "for more",
    )
    parser.add_argument(
        "--class-split",
        metavar="NAME_OR_CSV",
        help="class split of alp_dataset.class_splits (coco_voc, coco_nonvoc, coco_zsd_48_17), "
        "or a CSV of Open Images classes: class descriptions (base classes by the shipped COCO "
        "correspondence, printed) or display_name,mid,coco_name",
    )
    parser.add_argument(
        "--base-classes",
        type=flags.class_list,
        metavar="A,B",
        help="base class names, comma-separated (instead of --class-split)",
    )
    parser.add_argument(
        "--novel-classes",
        type=flags.class_list,
        metavar="C,D",
        help="novel class names, comma-separated (with --base-classes)",
    )
    parser.add_argument(
        "--hierarchy",
        metavar="JSON",
        help="Open Images shards: the class hierarchy JSON to expand the ground truth with; "
        "None: the one the shards' manifest recorded (none recorded: no expansion)",
    )
    parser.add_argument(
        "--group-of-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="Open Images shards: true positives a hit group-of instance counts for (1: one, "
        "the challenge's detection rule; 0: its segmentation evaluator's, group-of detections "
        "ignored)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="S",
        help="longer image side fed to the model (padded to S x S, then to a multiple of 128); "
        "None: the training crop side of the checkpoint (its --image-size)",
    )
    parser.add_argument("--batch-size", type=int, default=4, metavar="B", help="images per batch")
    parser.add_argument(
        "--num-workers", type=int, default=0, metavar="W", help="DataLoader workers"
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="stop after N images (a quick look)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--nms-threshold",
        type=float,
        default=None,
        metavar="X",
        help="IoU threshold of the class-wise NMS; None: the model's",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        metavar="X",
        help="candidates scoring at most X are dropped before NMS; None: the model's",
    )
    parser.add_argument(
        "--output",
        metavar="JSON",
        help="write all results (summary, per class, the metrics' details; AP in percent) to "
        "this JSON file",
    )
    parser.add_argument(
        "--per-class",
        action="store_true",
        help="also print the per-class table (the JSON of --output always holds it)",
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="draw the per-class mask AP50, sorted, base and novel classes in two colours, to "
        "this PNG (Open Images shards: the challenge's mask AP50)",
    )
    parser.add_argument(
        "--detections",
        metavar="JSON",
        help="write the detections as COCO results JSON (image_id as the shards hold it, "
        "category_id, bbox [x, y, w, h] in original pixels, score, RLE segmentation), which "
        "pycocotools' COCO.loadRes reads",
    )
    parser.add_argument("--results-json", dest="detections", help=argparse.SUPPRESS)
    parser.add_argument(
        "--submission",
        metavar="CSV",
        help="Open Images shards: write the detections as the challenge's submission CSV "
        "(ImageID,ImageWidth,ImageHeight,PredictionString)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (cpu, cuda); None: cuda when available"
    )
    return parser


def _classes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list, list]:
    from alp_dataset.class_splits import get_split, is_split_file

    by_list = args.base_classes is not None or args.novel_classes is not None
    if (args.class_split is None) == (not by_list):
        parser.error("give either --class-split or --base-classes with --novel-classes")
    if args.class_split is None:
        if args.base_classes is None or args.novel_classes is None:
            parser.error("--base-classes and --novel-classes go together")
        base, novel = list(args.base_classes), list(args.novel_classes)
        both = sorted(set(base) & set(novel))
        if both:
            parser.error(f"{both} are both base and novel classes")
        return base, novel
    try:
        split = get_split(args.class_split)
        if is_split_file(args.class_split):
            from alp_dataset.oid_classes import format_matches, split_from_csv

            report = format_matches(split_from_csv(args.class_split), source=args.class_split)
            print(report, file=sys.stderr)
    except ValueError as exc:
        parser.error(f"--class-split: {exc}")
    return list(split.base), list(split.novel)


def _write_outputs(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    if args.plot:
        from models.evaluation.plot import plot_per_class_ap50

        metric = "mask_AP50" if result["coco"] else "oid_mask_AP50"
        name = Path(args.checkpoint).parent.name or Path(args.checkpoint).stem
        title = f"{name}: per-class {'mask AP50' if result['coco'] else 'OID mask AP50'} (%)"
        try:
            plot_per_class_ap50(result["per_class"], args.plot, metric=metric, title=title)
        except ValueError as exc:
            print(f"--plot {args.plot}: not written: {exc}", file=sys.stderr)
        else:
            print(f"wrote {args.plot}", file=sys.stderr)
    if args.detections:
        print(f"wrote {args.detections}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = flags.parse_args(parser, argv)
    base, novel = _classes(args, parser)
    for flag, value in (("--image-size", args.image_size), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be positive, got {value}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be positive, got {args.limit}")
    if args.num_workers < 0:
        parser.error(f"--num-workers must be >= 0, got {args.num_workers}")
    try:
        urls = [u for pattern in args.shards for u in shard_urls(pattern)]
        inspect_eval_shards(urls)
    except ValueError as exc:  # ShardsError too: its message starts with "shards"
        message = str(exc)
        parser.error(f"--{message}" if message.startswith("shards") else f"--shards: {message}")
    try:
        manifest = find_oid_manifest(args.shards)
        hierarchy = load_hierarchy(args.hierarchy) if args.hierarchy else None
        oid_classes = OidClassTable.from_manifest(manifest, hierarchy) if manifest else None
    except (OSError, ValueError) as exc:
        parser.error(f"--shards / --hierarchy: {exc}")
    if oid_classes is None and (args.hierarchy or args.submission):
        parser.error("--hierarchy and --submission need Open Images shards (build_oid_shards.py)")
    device = args.device or default_device()

    class_names = [*base, *novel]
    model, config, embeddings, size = load_for_inference(
        parser, args.checkpoint, class_names, size=args.image_size, device=device
    )
    try:
        result = evaluate_model(
            model,
            eval_dataset(urls, size=size),
            class_names,
            base,
            novel,
            class_embeddings=embeddings,
            device=device,
            batch_size=args.batch_size,
            workers=args.num_workers,
            limit=args.limit,
            score_threshold=args.score_threshold,
            nms_threshold=args.nms_threshold,
            oid_classes=oid_classes,
            group_of_weight=args.group_of_weight,
            submission_csv=args.submission,
            detections_json=args.detections,
            progress=not args.quiet,
        )
    except ShardsError as exc:  # what the manifests could not tell before the pass
        parser.error(f"--{exc}")
    result = {
        "checkpoint": os.fspath(args.checkpoint),
        "shards": urls,
        "image_size": size,
        "text_encoder": config["text_encoder"],
        **result,
    }
    print(format_table(result))
    if args.per_class:
        print()
        print(format_per_class(result))
    _write_outputs(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
