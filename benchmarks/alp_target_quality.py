"""Where do ALP boxes put each detector's training targets? Positives checked against the truth.

    python benchmarks/alp_target_quality.py --world table3_work/world_locnar \
        --alps table3_work/shards_novel_alps --image-size 128

A detector learns a novel class from an ALP through the positives its target assignment makes of
the ALP box. This script applies each detector's own rule to every ALP of a synthetic world whose
ground truth names the object each phrase is about, and counts how many positives land on that
object:

- FCOS-MO: the locations `models.heads.fcos_targets.fcos_match` makes positive for the ALP box
  (centre region of radius 1.5 strides, the level its size picks); a location is on the object
  when it lies inside the object's true box, on another object when inside another's box only.
- Mask R-CNN*, RPN: the anchors torchvision's matcher makes positive (IoU >= 0.7 with the ALP
  box, and its best anchors); second stage: of the same anchors taken as RoIs, those with IoU >=
  0.5 with the ALP box. An anchor or RoI is on the object when its IoU with the true box is >= 0.5
  (what a ground-truth box of the object would have made positive), on another object when that
  holds for another object's box.

Also printed: the share of ALPs that make any positive at all, the same counts with the true
boxes in place of the ALP boxes for reference, and what the ALP boxes are like: the share that
cover their object (90 % of the true box inside), whose centre lies on it (inside the true box),
and their median side relative to the object's. Prints one table.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import alp_curation.torchvision_fix  # noqa: F401  (before any torchvision import)

import polars as pl
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from alp_curation import flags
from alp_dataset.schema import ALPS_DIR
from models.architectures import FCOSMOConfig, MaskRCNNStarConfig
from models.heads.fcos_targets import fcos_match, level_ranges, locations
from models.heads.rpn import anchor_generator

FCOS_STRIDES = (8, 16, 32, 64, 128)
RCNN_STRIDES = (4, 8, 16, 32, 64)


def load_alps(world: Path, alps: Path) -> list[dict[str, Any]]:
    """Every ALP whose caption span overlaps a ground-truth mention: its box, the mentioned
    object's box and the boxes of the image's other objects, all normalised."""
    mentions: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for line in (world / "ground_truth.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        key = (record["dataset_id"], record["image_id"], int(record["annotator_id"]))
        mentions[key] = record["mentions"]
    coco = json.loads((world / "instances.json").read_text(encoding="utf-8"))
    sizes = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
    names = {i["id"]: Path(i["file_name"]).stem for i in coco["images"]}
    objects: dict[str, list[list[float]]] = defaultdict(list)
    for ann in coco["annotations"]:
        w, h = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        objects[names[ann["image_id"]]].append([x / w, y / h, (x + bw) / w, (y + bh) / h])
    table = pl.read_parquet(alps / ALPS_DIR)
    out = []
    for row in table.iter_rows(named=True):
        key = (row["dataset_id"], row["image_id"], int(row["annotator_id"]))
        best, overlap = None, 0
        for mention in mentions.get(key, []):
            shared = min(row["end_char"], mention["end_char"]) - max(
                row["start_char"], mention["start_char"]
            )
            if shared > overlap:
                best, overlap = mention, shared
        if best is None:
            continue
        true_box = [float(v) for v in best["box_xyxy_norm"]]
        others = [b for b in objects[row["image_id"]] if max(
            abs(a - t) for a, t in zip(b, true_box, strict=True)) > 0.01]  # fmt: skip
        out.append({"alp": [float(v) for v in row["box_xyxy_norm"]], "true": true_box,
                    "others": others})  # fmt: skip
    return out


def fcos_counts(box: torch.Tensor, true: torch.Tensor, others: torch.Tensor, size: int) -> tuple:
    """(positives, on the object, on another object only) under FCOS-MO's assignment."""
    cfg = FCOSMOConfig()
    sizes = [(-(-size // s), -(-size // s)) for s in FCOS_STRIDES]
    points, strides, ranges = locations(sizes, FCOS_STRIDES, level_ranges(cfg.size_ranges))
    positive = fcos_match(points, strides, ranges, box[None], cfg.center_sampling_radius) >= 0
    p = points[positive]  # (P, 2)

    def inside(boxes: torch.Tensor) -> torch.Tensor:  # (P,) inside any of (K, 4)
        if len(boxes) == 0:
            return torch.zeros(len(p), dtype=torch.bool)
        x, y = p[:, 0:1], p[:, 1:2]
        return ((x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])).any(
            1
        )

    on = inside(true[None])
    return len(p), int(on.sum()), int((~on & inside(others)).sum())


def rcnn_counts(
    box: torch.Tensor, true: torch.Tensor, others: torch.Tensor, anchors: torch.Tensor
) -> tuple:
    """(RPN positives, on the object, on another; RoI positives, on the object, on another)."""
    cfg = MaskRCNNStarConfig()
    iou = box_iou(box[None], anchors)  # (1, A)
    matched = Matcher(cfg.rpn_fg_iou, cfg.rpn_bg_iou, allow_low_quality_matches=True)(iou)
    rpn = anchors[matched >= 0]
    roi = anchors[iou[0] >= cfg.roi_fg_iou]

    def split(candidates: torch.Tensor) -> tuple[int, int, int]:
        if len(candidates) == 0:
            return 0, 0, 0
        on = box_iou(candidates, true[None])[:, 0] >= 0.5
        other = (box_iou(candidates, others) >= 0.5).any(1) if len(others) else torch.zeros_like(on)
        return len(candidates), int(on.sum()), int((~on & other).sum())

    return (*split(rpn), *split(roi))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--world", type=Path, required=True, help="world with ground_truth.jsonl")
    parser.add_argument("--alps", type=Path, required=True, help="extract_alps output of it")
    parser.add_argument("--image-size", type=int, default=128, help="training side, px")
    args = flags.parse_args(parser)
    size = args.image_size
    cfg = MaskRCNNStarConfig()
    generator = anchor_generator(cfg.anchor_sizes, cfg.aspect_ratios)
    image = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
    maps = [torch.zeros(1, 1, -(-size // s), -(-size // s)) for s in RCNN_STRIDES]
    anchors = generator(image, maps)[0]  # (A, 4)
    alps = load_alps(args.world, args.alps)
    totals: dict[str, list[int]] = defaultdict(
        lambda: [0, 0, 0, 0]
    )  # positives, on, other, ALPs with any
    for entry in alps:
        true = torch.tensor(entry["true"]) * size
        others = torch.tensor(entry["others"]).reshape(-1, 4) * size
        for source in ("alp", "true"):
            box = torch.tensor(entry[source]) * size
            f = fcos_counts(box, true, others, size)
            r = rcnn_counts(box, true, others, anchors)
            rules = (
                ("FCOS-MO locations", f),
                ("Mask R-CNN* RPN anchors", r[:3]),
                ("Mask R-CNN* RoIs", r[3:]),
            )
            for rule, (n, on, other) in rules:
                t = totals[f"{rule}|{source}"]
                t[0] += n
                t[1] += on
                t[2] += other
                t[3] += n > 0
    alp_boxes = torch.tensor([e["alp"] for e in alps])  # (N, 4)
    true_boxes = torch.tensor([e["true"] for e in alps])
    inter = (torch.minimum(alp_boxes[:, 2:], true_boxes[:, 2:])
             - torch.maximum(alp_boxes[:, :2], true_boxes[:, :2])).clamp(min=0).prod(1)  # fmt: skip
    true_area = (true_boxes[:, 2:] - true_boxes[:, :2]).prod(1)
    covers = (inter / true_area.clamp(min=1e-12) >= 0.9).float().mean()
    centre = (alp_boxes[:, :2] + alp_boxes[:, 2:]) / 2
    on = ((centre > true_boxes[:, :2]) & (centre < true_boxes[:, 2:])).all(1).float().mean()
    side = ((alp_boxes[:, 2:] - alp_boxes[:, :2]).prod(1) / true_area.clamp(min=1e-12)).sqrt()
    print(f"{len(alps)} ALPs matched to the objects their phrases name ({args.world}), "
          f"{size} px images; {100 * covers:.0f} % cover their object, {100 * on:.0f} % have "
          f"their centre on it, median side {side.median():.2f}x the object's")  # fmt: skip
    print("| rule | boxes | positives per box | on the object | on another object | elsewhere "
          "| boxes with a positive |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for key, (n, on, other, some) in totals.items():
        rule, source = key.split("|")
        label = "ALP" if source == "alp" else "true box"
        shares = [f"{100 * k / n:.0f} %" if n else "-" for k in (on, other, n - on - other)]
        print(
            f"| {rule} | {label} | {n / len(alps):.1f} | {' | '.join(shares)} "
            f"| {100 * some / len(alps):.0f} % |"
        )


if __name__ == "__main__":
    main()
