"""Why a detector scores what it scores on novel classes: classification against localization.

    python benchmarks/diagnose_novel.py --shards table3_work/shards_eval \
        --checkpoint table3_work/runs/*/*alp_supervised/last.pt \
        --base-classes circle,... --novel-classes diamond,...

For each ground-truth instance of the evaluation shards, two questions, asked of any detector
of the library:

- **classification at the object**: given the object's true location, does the open-vocabulary
  classifier pick its class among all the classes (base and novel) and the background? FCOS-MO
  is asked at the locations its matching makes positive for the true box (the mean over them);
  Mask R-CNN* for the RoI of the true box. Reported: the share whose top class, background
  included, is the right one, and the share whose top class among the classes alone is.
- **localization**: is the object found at all, whatever the label: the share of instances
  with a detection of IoU >= 0.5 among the model's kept detections (class-agnostic recall).

Each split into base and novel classes. Prints one table per checkpoint.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import alp_curation.torchvision_fix  # noqa: F401  (before any torchvision import)

import torch
from torchvision.ops import box_iou

from alp_curation import flags
from alp_dataset.loader import make_loader
from models.engine.checkpoint import load_model
from models.evaluate import eval_dataset
from models.heads.fcos_targets import fcos_match, flatten_levels
from models.meta_arch.fcos_mo import FCOSMO
from models.meta_arch.mask_rcnn_star import MaskRCNNStar
from models.predict import embed_classes


def class_scores(model: Any, images: torch.Tensor, boxes: list[torch.Tensor],
                 classes: torch.Tensor) -> list[torch.Tensor]:  # fmt: skip
    """Per image, (N, 1 + C) class probabilities of its N true boxes (background first)."""
    x = model.preprocess(images)
    features = model.backbone(x)
    out = []
    if isinstance(model, FCOSMO):
        embeds, _, _ = model.head(features)
        points, strides, ranges = model.level_locations(embeds)
        flat = flatten_levels(embeds)  # (B, R, D)
        for b, image_boxes in enumerate(boxes):
            rows = []
            for box in image_boxes:
                positive = fcos_match(points, strides, ranges, box[None]) >= 0
                if not positive.any():  # too small for any location: the nearest one
                    centre = (box[:2] + box[2:]) / 2
                    positive = (points - centre).norm(dim=1) == (points - centre).norm(dim=1).min()
                logits = model.classifier.logits(flat[b, positive], classes)
                rows.append(logits.softmax(dim=1).mean(dim=0))
            out.append(torch.stack(rows) if rows else torch.zeros(0, 1 + len(classes)))
    elif isinstance(model, MaskRCNNStar):
        embedded, _ = model.roi_heads(features, boxes)
        probs = model.roi_heads.classifier.logits(embedded, classes).softmax(dim=1)
        out = list(probs.split([len(b) for b in boxes]))
    else:
        raise SystemExit(f"no diagnosis for {type(model).__name__}")
    return out


def diagnose(checkpoint: Path, shards: str, base: list[str], novel: list[str]) -> dict[str, Any]:
    model, config = load_model(checkpoint)
    names = [*base, *novel]
    classes = embed_classes(config["text_encoder"], names)
    size = int(config["train"].get("image_size", 128))
    loader = make_loader(eval_dataset(shards, size=size), batch_size=8, num_workers=0)
    counts: dict[str, list[int]] = defaultdict(
        lambda: [0, 0, 0, 0]
    )  # n, right, right w/o bg, found
    with torch.no_grad():
        for images, targets in loader:
            boxes = [t["boxes_xyxy_px"].float() for t in targets]
            probs = class_scores(model, images, boxes, classes)
            detections = model(images, class_embeddings=classes)
            for target, p, det, gt in zip(targets, probs, detections, boxes, strict=True):
                found = (
                    (box_iou(gt, det["boxes_xyxy_px"]) >= 0.5).any(dim=1)
                    if len(det["boxes_xyxy_px"]) else torch.zeros(len(gt), dtype=torch.bool)
                )  # fmt: skip
                for j, name in enumerate(target["phrases"]):
                    label = names.index(name) + 1
                    c = counts["novel" if name in novel else "base"]
                    c[0] += 1
                    c[1] += int(p[j].argmax()) == label
                    c[2] += int(p[j, 1:].argmax()) + 1 == label
                    c[3] += int(found[j])
    return {"arch": config["arch"], "counts": dict(counts)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, nargs="+", required=True, help="checkpoints to diagnose"
    )
    parser.add_argument("--shards", required=True, help="evaluation COCO shards (all classes)")
    parser.add_argument(
        "--base-classes", required=True, metavar="A,B", help="classes that had training masks"
    )
    parser.add_argument(
        "--novel-classes", required=True, metavar="C,D", help="classes held out of the masks"
    )
    args = flags.parse_args(parser)
    torch.set_num_threads(1)
    base, novel = args.base_classes.split(","), args.novel_classes.split(",")
    print("| checkpoint | classes | instances | top class right | top class right (no bg) "
          "| found (IoU >= 0.5, any label) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for checkpoint in args.checkpoint:
        result = diagnose(checkpoint, args.shards, base, novel)
        for subset in ("base", "novel"):
            n, right, right_no_bg, found = result["counts"][subset]
            print(
                f"| {checkpoint.parent.name} ({result['arch']}) | {subset} | {n} "
                f"| {100 * right / n:.0f} % | {100 * right_no_bg / n:.0f} % "
                f"| {100 * found / n:.0f} % |"
            )


if __name__ == "__main__":
    main()
