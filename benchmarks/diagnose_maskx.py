"""The masks of MaskX R-CNN variants on the true boxes: mask quality alone, apart from detection.

    python benchmarks/diagnose_maskx.py --shards maskx_work/shards_eval \\
        --checkpoint maskx_work/runs/*/last.pt --base-classes circle,heart,crown,gear \\
        --novel-classes square,triangle,...

Mask AP mixes two things: whether an object is detected and labelled, and how good its mask is.
The stage-wise rows of `experiment_maskx.py` share one frozen detector, so their mask AP differs
by the masks alone, but through the noise of a few hundred detections. This asks the mask
branch of each checkpoint for the mask of every ground-truth instance of the evaluation shards,
from its true box and true class (the RoI features of that box, the class's w_seg), and reports
the mean mask IoU against the true mask, and the share of instances above IoU 0.5 and 0.75,
for set A (classes with training masks) and set B (boxes only), and per class of B with
``--per-class``. A class-agnostic predictor gives every class the same mask; a transfer
predictor gives class c the mask of T(w_det of c).

Prints one table (one row per checkpoint and set). With ``--drift-from CKPT`` it prints instead
how far each checkpoint's detection weights w_det of A and of B moved from those of CKPT: the
discrepancy between A and B that the stop-gradient prevents (Sec. 3.2). ``--shards`` is then
not read.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import alp_curation.torchvision_fix  # noqa: F401  (before any torchvision import)

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from alp_curation import flags
from alp_dataset.loader import make_loader
from models.engine.checkpoint import load_model
from models.evaluate import eval_dataset
from models.meta_arch.maskx_rcnn import MASK_LEVELS, MaskXRCNN
from models.ops import multilevel_roi_align


def true_box_masks(model: MaskXRCNN, images: torch.Tensor, targets: list[dict]) -> list[Any]:
    """Per image, (N, H, W) bool masks the model predicts for its N true boxes and classes."""
    x = model.preprocess(images)
    features = model.backbone(x)
    boxes = [t["boxes_xyxy_px"].float() for t in targets]
    batch = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)])
    classes = torch.tensor(
        [model.class_names.index(n) for t in targets for n in t["phrases"]], dtype=torch.long
    )  # (K,)
    rois = multilevel_roi_align(
        features, torch.cat(boxes), batch, model.mask_roi_size, model.strides,
        min_level=MASK_LEVELS[0], max_level=MASK_LEVELS[1],
    )  # fmt: skip  # (K, C, S, S)
    probs = model.mask_predictor(rois, classes, model.mask_weights()).sigmoid()  # (K, 1, M, M)
    size = tuple(images.shape[-2:])
    out = []
    for image_boxes, p in zip(boxes, probs.split([len(b) for b in boxes]), strict=True):
        out.append(paste_masks_in_image(p, image_boxes, size)[:, 0] > 0.5)  # (N, H, W)
    return out


def diagnose(checkpoint: Path, shards: str, base: list[str], novel: list[str]) -> dict[str, Any]:
    model, config = load_model(checkpoint)
    if not isinstance(model, MaskXRCNN):
        raise SystemExit(f"{checkpoint}: a {type(model).__name__}, not a MaskX R-CNN")
    size = int(config["train"].get("image_size", 128))
    loader = make_loader(eval_dataset(shards, size=size), batch_size=8, num_workers=0)
    ious: dict[str, list[float]] = defaultdict(list)
    with torch.no_grad():
        for images, targets in loader:
            keep = [i for i, t in enumerate(targets) if len(t["boxes_xyxy_px"])]
            if not keep:
                continue
            targets = [targets[i] for i in keep]
            predicted = true_box_masks(model, images[keep], targets)
            for target, masks in zip(targets, predicted, strict=True):
                truth = target["masks"][:, : masks.shape[1], : masks.shape[2]]
                for j, name in enumerate(target["phrases"]):
                    if not bool(target["has_mask"][j]):
                        continue
                    union = (masks[j] | truth[j]).sum()
                    iou = float((masks[j] & truth[j]).sum() / union) if union else 0.0
                    ious["A" if name in base else "B"].append(iou)
                    if name in novel:
                        ious[f"B: {name}"].append(iou)
    return {"checkpoint": checkpoint, "ious": dict(ious)}


def detection_weight_drift(
    checkpoint: Path, start: Path, base: list[str], novel: list[str]
) -> tuple[float, float]:
    """Mean relative change ||w_det - w_det(start)|| / ||w_det(start)|| of the classes of A and
    of B between two checkpoints (e.g. an end-to-end run and the stage-one detector it started
    from): whether training moved A's detection weights apart from B's (Sec. 3.2)."""
    weights = []
    for path in (checkpoint, start):
        model, _ = load_model(path)
        if not isinstance(model, MaskXRCNN):
            raise SystemExit(f"{path}: a {type(model).__name__}, not a MaskX R-CNN")
        weights.append((model.roi_heads.detection_weights("cls+box").detach(), model.class_names))
    (w, names), (w0, names0) = weights
    if names != names0:
        raise SystemExit(f"{checkpoint} and {start} have different class lists")
    drift = (w - w0).norm(dim=1) / w0.norm(dim=1)  # (K,)
    a = [names.index(n) for n in base]
    b = [names.index(n) for n in novel]
    return float(drift[a].mean()), float(drift[b].mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        required=True,
        help="MaskX R-CNN checkpoints (e.g. the rows of experiment_maskx.py)",
    )
    parser.add_argument(
        "--shards", required=True, help="evaluation COCO shards with masks for every class"
    )
    parser.add_argument(
        "--base-classes",
        required=True,
        metavar="A,B",
        help="set A: the classes that had training masks",
    )
    parser.add_argument(
        "--novel-classes",
        required=True,
        metavar="C,D",
        help="set B: the classes that had boxes only",
    )
    parser.add_argument("--per-class", action="store_true", help="also one row per class of B")
    parser.add_argument(
        "--drift-from",
        type=Path,
        metavar="CKPT",
        help="instead of masks: how far each checkpoint's detection weights of A and of B "
        "moved from this one's (e.g. the stage-one detector)",
    )
    args = flags.parse_args(parser)  # fmt: skip
    torch.set_num_threads(1)
    base, novel = args.base_classes.split(","), args.novel_classes.split(",")
    if args.drift_from is not None:
        print("| checkpoint | w_det drift, A | w_det drift, B |")
        print("|---|---:|---:|")
        for checkpoint in args.checkpoint:
            a, b = detection_weight_drift(checkpoint, args.drift_from, base, novel)
            print(f"| {checkpoint.parent.name} | {a:.3f} | {b:.3f} |")
        return
    print("| checkpoint | set | instances | mean mask IoU | IoU >= 0.5 | IoU >= 0.75 |")
    print("|---|---|---:|---:|---:|---:|")
    for checkpoint in args.checkpoint:
        result = diagnose(checkpoint, args.shards, base, novel)
        sets = ["A", "B"] + (sorted(k for k in result["ious"] if k.startswith("B: "))
                             if args.per_class else [])  # fmt: skip
        for subset in sets:
            values = torch.tensor(result["ious"].get(subset, []))
            if not len(values):
                continue
            print(
                f"| {checkpoint.parent.name} | {subset} | {len(values)} "
                f"| {100 * values.mean():.1f} | {100 * (values >= 0.5).float().mean():.0f} % "
                f"| {100 * (values >= 0.75).float().mean():.0f} % |"
            )


if __name__ == "__main__":
    main()
