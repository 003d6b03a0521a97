"""Time of the Open Images challenge evaluator per 1,000 images at 100 detections each.

    python benchmarks/bench_oid_eval.py --n-images 1000 --detections 100

Synthetic ground truth and detections in the shapes of Open Images v6 validation (the ALP paper,
Sec. 4: 12K images, 23K masks, 300 classes; images about 1024 x 768): ~2 masked instances per
image, a group-of box every 5th image, a class hierarchy of 300 classes (60 parents of 3-4
children), a few positive and negative image-level labels per image; each image gets exactly
``--detections`` detections whose masks are boxes placed around its instances and at random, most
of them in the image's own classes (as a detector's). Masks are compressed RLEs throughout, as
`models.evaluate` hands them over. Times `oid_mask_ap50` (checks, hierarchy expansion, matching,
AP) on one thread, best of ``--repeat``. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from alp_curation import flags
from models.evaluation import ImageDetections, ImageLabels, oid_mask_ap50


def _box_rle(box: np.ndarray, height: int, width: int) -> dict[str, Any]:
    rle = mask_utils.frPyObjects(box[None].astype(np.float64), height, width)[0]  # xywh
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _box(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    w, h = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
    return np.array([rng.uniform(0, width - w), rng.uniform(0, height - h), w, h])


def make_case(
    n_images: int, n_dets: int, *, classes: int, width: int, height: int, seed: int
) -> tuple[dict[str, Any], list[ImageDetections], dict[int, ImageLabels], dict[int, list[int]]]:
    rng = np.random.default_rng(seed)
    parents = list(range(1, 61))
    hierarchy = {c: [parents[(c - 61) % 60]] for c in range(61, classes + 1)}  # 240 children
    images, annotations, detections, labels = [], [], [], {}
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "height": height, "width": width})
        present = rng.choice(
            np.arange(61, classes + 1), size=int(rng.integers(1, 3)), replace=False
        )
        boxes = []
        for c in present.tolist():
            box = _box(rng, width, height)
            boxes.append((c, box))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": c,
                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0,
                "segmentation": _box_rle(box, height, width),
            })  # fmt: skip
        if image_id % 5 == 0:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(present[0]),
                "bbox": _box(rng, width, height).tolist(), "area": 1.0, "iscrowd": 0,
                "is_group_of": True, "has_mask": False,
            })  # fmt: skip
        absent = rng.choice(np.arange(1, classes + 1), size=5, replace=False)
        labels[image_id] = ImageLabels(
            positive=set(present.tolist()), negative=set(absent.tolist())
        )
        cats, rles, scores = [], [], []
        for k in range(n_dets):
            if k < n_dets // 2 and boxes:  # around the instances, jittered
                c, box = boxes[k % len(boxes)]
                box = box + rng.normal(0, 0.1, 4) * np.r_[box[2:], box[2:]]
                box[2:] = np.maximum(box[2:], 2.0)
            else:
                c = (
                    int(rng.choice(present))
                    if rng.random() < 0.7
                    else int(rng.integers(1, classes + 1))
                )
                box = _box(rng, width, height)
            box[:2] = np.clip(box[:2], 0, [width - 2, height - 2])
            cats.append(c)
            rles.append(_box_rle(box, height, width))
            scores.append(rng.random())
        xyxy = np.array([mask_utils.toBbox(rles)]).reshape(-1, 4)
        xyxy[:, 2:] += xyxy[:, :2]
        detections.append(
            ImageDetections(image_id, xyxy, np.array(scores), np.array(cats), tuple(rles))
        )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, classes + 1)]
    gt = {"images": images, "categories": categories, "annotations": annotations}
    return gt, detections, labels, hierarchy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--n-images", type=int, default=1000, help="images evaluated")
    parser.add_argument(
        "--detections-per-image", type=int, default=100, help="detections per image"
    )
    parser.add_argument("--n-classes", type=int, default=300, help="classes (the first 60 parents)")
    parser.add_argument("--image-size", default="1024x768", help="image WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; the best is shown")
    parser.add_argument("--seed", type=int, default=0, help="seed of the made-up detections")
    args = flags.parse_args(parser)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    width, height = (int(v) for v in args.image_size.split("x"))
    start = time.perf_counter()
    gt, dets, labels, hierarchy = make_case(
        args.n_images, args.detections_per_image, classes=args.n_classes, width=width,
        height=height, seed=args.seed,
    )  # fmt: skip
    print(f"made the case in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    ids = list(range(1, args.n_classes + 1))
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = oid_mask_ap50(gt, dets, base_category_ids=ids[:60], novel_category_ids=ids[60:],
                            image_labels=labels, hierarchy=hierarchy)  # fmt: skip
        runs.append(time.perf_counter() - start)
    best = min(runs)
    n_masks = sum(1 for a in gt["annotations"] if a.get("has_mask", True))
    evaluated = sum(v["num_detections"] for v in out["per_class"].values())
    print(
        f"oid_mask_ap50 on {args.n_images:,} images of {width} x {height}, {args.n_classes} "
        f"classes (60 parents), {n_masks:,} masks, {args.detections_per_image} detections "
        "each; one CPU"
    )
    print(f"{'images':>7} {'dets/img':>9} {'dets evaluated':>15} {'seconds':>8} "
          f"{'s / 1,000 images':>17} {'dets/s':>8}")  # fmt: skip
    per_1000, rate = best * 1000 / args.n_images, args.n_images * args.detections_per_image / best
    print(f"{args.n_images:>7,} {args.detections_per_image:>9} {evaluated:>15,} {best:>8.2f} "
          f"{per_1000:>17.2f} {rate:>8,.0f}")  # fmt: skip
    print(
        f"mean AP50 {out['all']:.3f} (synthetic detections); runs: "
        + ", ".join(f"{r:.2f} s" for r in runs)
    )


if __name__ == "__main__":
    main()
