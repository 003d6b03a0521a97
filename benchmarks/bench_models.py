"""Detector speed against torchvision's: a training step, peak memory and inference, on this CPU.

    python benchmarks/bench_models.py --threads 1                       # every pair, R-50, 512 px
    python benchmarks/bench_models.py --archs maskx-rcnn --steps 3

Each of our detectors is set against its torchvision counterpart, both with random weights,
ResNet-50 + FPN and trainable BatchNorm:

- ``mask-rcnn-star`` (the paper's recipe, ``--preset coco-oid``: Hourglass-20 mask head on GT
  boxes, open-vocabulary classifier over 512-d phrases) against ``maskrcnn_resnet50_fpn``
  (91 classes, 4-conv mask head on the positive proposals);
- ``fcos-mo`` (``--preset coco-oid``) against ``fcos_resnet50_fpn`` (91 classes, no masks);
- ``maskx-rcnn`` (its defaults: 4-conv mask head on the positive proposals, T of the
  cls+box weights) over COCO's 80 classes against ``maskrcnn_resnet50_fpn`` with 81 outputs:
  the same classes and boxes; ours has masks for two of the three boxes (set A), torchvision's
  for all three (it has no box-only instances).

Same input for both: one in-memory batch of ``--batch`` random images of ``--size`` px, each
with the same three boxes (two with masks, one an ALP box for ours; torchvision's models get a
label and, for Mask R-CNN, a mask for every box); torchvision's resize is set to keep the size.
No data loading.

- Training: forward, backward and an SGD step. The two models alternate step by step in one
  process (interleaved, so that the load of a shared machine hits both alike); seconds per step
  is the median of ``--steps`` steps after ``--warmup`` each.
- Peak RSS: each model alone in a fresh process running the same steps (the process's
  high-water mark: model, optimiser state, activations).
- Inference: eval mode, one image; ours scores 80 class embeddings; the median of ``--infer``
  images in ms, and the detections kept (masks are computed for each: with random weights ours
  keep up to 100, while torchvision's 91-way softmax stays under its 0.05 threshold; MaskX
  R-CNN's 81-way softmax too).

On a machine where torchvision's compiled operators do not load (`alp_curation.torchvision_fix`),
torchvision's RoI Align falls back to a pure-Python kernel under ``torch.compile`` that measured
over 60 s a step here: there, torchvision's Mask R-CNN is given our RoI Align
(`models.ops.roi_align`, the same work; aligned sampling instead of torchvision's half-pixel
offset), so that the ratio compares the detectors rather than a missing kernel. The table says
when it was done. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import alp_curation.torchvision_fix  # before any torchvision import

import torch
from torch import nn

from alp_curation import flags

REFERENCES = {
    "mask-rcnn-star": "maskrcnn_resnet50_fpn",
    "fcos-mo": "fcos_resnet50_fpn",
    "maskx-rcnn": "maskrcnn_resnet50_fpn",
}
WITH_MASKS = ("mask-rcnn-star", "maskx-rcnn")  # pairs whose torchvision side is Mask R-CNN
NUM_CLASSES = 91  # torchvision's COCO heads
FIXED_CLASSES = 80  # MaskX R-CNN's class list (COCO's 80); its torchvision peer gets 81 outputs
TEXT_DIM = 512


def coco_names() -> tuple[str, ...]:
    from alp_dataset.class_splits import COCO80

    return tuple(COCO80)


def fixed_class_targets(targets: list[dict]) -> list[dict]:
    """MaskX R-CNN's targets: the same boxes as classes 0..2 of its list (two with masks: set
    A; the third box-only: set B), phrase ids of the class names as the datasets give them."""
    from alp_curation.phrases import phrase_id

    ids = torch.tensor([phrase_id(n) for n in coco_names()[:3]])
    return [{**t, "phrase_ids": ids, "is_alp": torch.zeros(3, dtype=torch.bool)} for t in targets]


def synthetic_batch(batch: int, size: int, text_dim: int) -> tuple[torch.Tensor, list[dict]]:
    """uint8 images and our targets: two masked COCO instances and one ALP per image."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    targets = []
    for _ in range(batch):
        boxes = (
            torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8], [0.2, 0.5, 0.7, 0.95]]) * size
        )  # (3, 4) px
        masks = torch.zeros(3, size, size, dtype=torch.bool)
        for k in range(3):
            x0, y0, x1, y1 = boxes[k].int().tolist()
            masks[k, y0 + 4 : y1 - 4, x0 + 4 : x1 - 4] = True
        embeddings = torch.nn.functional.normalize(torch.randn(3, text_dim, generator=g), dim=1)
        targets.append(
            {
                "boxes_xyxy_px": boxes,
                "masks": masks,
                "has_mask": torch.tensor([True, True, False]),
                "is_alp": torch.tensor([False, False, True]),
                "phrase_ids": torch.tensor([11, 12, 13]),
                "text_embeddings": embeddings,
            }
        )
    return images, targets


def reference_targets(targets: list[dict], with_masks: bool) -> list[dict]:
    """The same boxes for torchvision: labels 1..3, a mask for every box (Mask R-CNN)."""
    out = []
    for t in targets:
        entry = {"boxes": t["boxes_xyxy_px"], "labels": torch.tensor([1, 2, 3])}
        if with_masks:
            entry["masks"] = t["masks"].to(torch.uint8)
        out.append(entry)
    return out


def use_our_roi_align_in_torchvision() -> bool:
    """Route torchvision's R-CNN RoI Align calls (its poolers and its mask targets) to ours when
    torchvision's compiled operators are missing (module doc); True when it did."""
    if alp_curation.torchvision_fix.STATE != "patched":
        return False
    from torchvision.models.detection import roi_heads
    from torchvision.ops import _utils, poolers

    from models.ops import roi_align

    def ours(
        features: torch.Tensor,
        boxes: torch.Tensor | list[torch.Tensor],
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
    ) -> torch.Tensor:
        rois = boxes if torch.is_tensor(boxes) else _utils.convert_boxes_to_roi_format(boxes)
        side = output_size if isinstance(output_size, int) else output_size[0]
        ratio = sampling_ratio if sampling_ratio > 0 else 2  # torchvision's R-CNN uses 2
        return roi_align(features, rois[:, 1:], rois[:, 0].long(), side, spatial_scale, ratio)

    poolers.roi_align = ours
    roi_heads.roi_align = ours
    return True


class Side:
    """One model of a pair: how to build it, step it and run it."""

    def __init__(self, arch: str, reference: bool, args: argparse.Namespace) -> None:
        self.arch, self.reference, self.args = arch, reference, args
        self.name = REFERENCES[arch] if reference else arch
        torch.manual_seed(0)
        self.model = self._build().train()
        self.optimizer = torch.optim.SGD(
            [p for p in self.model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
        )
        self.images, self.targets = synthetic_batch(args.batch_size, args.image_size, TEXT_DIM)
        self.floats = [image.float() / 255 for image in self.images]  # torchvision's input
        self.ref_targets = reference_targets(self.targets, arch in WITH_MASKS)
        self.classes = torch.nn.functional.normalize(torch.randn(80, TEXT_DIM), dim=1)
        if arch == "maskx-rcnn":
            self.targets = fixed_class_targets(self.targets)
            self.classes = torch.eye(FIXED_CLASSES)  # one-hot queries: every class

    def _build(self) -> nn.Module:
        size = self.args.image_size
        if self.reference:
            from torchvision.models import detection

            use_our_roi_align_in_torchvision()
            build: Callable[..., nn.Module] = getattr(detection, REFERENCES[self.arch])
            classes = FIXED_CLASSES + 1 if self.arch == "maskx-rcnn" else NUM_CLASSES
            return build(
                weights=None, weights_backbone=None, num_classes=classes, min_size=size,
                max_size=size,
            )  # fmt: skip
        from models.architectures import ARCHITECTURES, MODEL_PRESETS, build_model

        values = dict(MODEL_PRESETS[self.arch]["coco-oid"])
        if self.arch == "maskx-rcnn":
            values["classes"] = coco_names()
        return build_model(ARCHITECTURES[self.arch].config(**values))

    def step(self) -> float:
        start = time.perf_counter()
        if self.reference:
            losses = self.model(self.floats, self.ref_targets)
        else:
            losses = self.model(self.images, self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizer.step()
        return time.perf_counter() - start

    def infer(self) -> tuple[float, int]:
        self.model.eval()
        with torch.no_grad():
            start = time.perf_counter()
            if self.reference:
                out = self.model(self.floats[:1])
            else:
                out = self.model(self.images[:1], class_embeddings=self.classes)
            seconds = time.perf_counter() - start
        self.model.train()
        return seconds, len(out[0]["scores"])


def params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def measure_alone(arch: str, reference: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of one model's training steps and its inference times, in this process."""
    side = Side(arch, reference, args)
    for _ in range(args.warmup + args.steps):
        side.step()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    side.infer()  # warm-up
    runs = [side.infer() for _ in range(args.infer)]
    return {
        "peak_rss_mib": peak_mib,
        "infer_ms": 1000 * statistics.median(r[0] for r in runs),
        "detections": runs[-1][1],
        "params_m": params_m(side.model),
    }


def interleaved(arch: str, args: argparse.Namespace) -> tuple[float, float]:
    """Median seconds per training step of ours and of the reference, stepping in turn."""
    ours, theirs = Side(arch, False, args), Side(arch, True, args)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.warmup + args.steps):
        for side in (ours, theirs) if i % 2 == 0 else (theirs, ours):
            seconds = side.step()
            if i >= args.warmup:
                times[side.reference].append(seconds)
    return statistics.median(times[False]), statistics.median(times[True])


ARGS = argparse.Namespace()  # the parsed flags, which the measuring children get again


def _child(arch: str, reference: bool) -> dict[str, Any]:
    argv = []
    for name in ("steps", "warmup", "infer", "threads", "image_size", "batch_size"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(ARGS, name))]
    child = [sys.executable, __file__, "--one", f"{arch}:{int(reference)}", *argv]
    done = subprocess.run(child, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{arch} (reference={reference}) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--infer", type=int, default=5, help="timed inference images (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument(
        "--archs",
        default=",".join(REFERENCES),
        help=f"comma-separated, of {sorted(REFERENCES)}",
    )
    parser.add_argument("--image-size", type=int, default=512, help="image side in px")
    parser.add_argument("--batch-size", type=int, default=2, help="images per training step")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: ARCH:REFERENCE alone
    args = flags.parse_args(parser)
    global ARGS
    ARGS = args
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        arch, reference = args.one.split(":")
        print(json.dumps(measure_alone(arch, reference == "1", args)))
        return

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = sorted(set(archs) - set(REFERENCES))
    if unknown:
        parser.error(f"--archs: unknown {unknown}; choose from {sorted(REFERENCES)}")
    # The processes measured alone first: a child inherits the parent's high-water mark of RSS,
    # which stays small until the interleaved run.
    alone = {(arch, ref): _child(arch, ref) for arch in archs for ref in (False, True)}
    rows = []
    for arch in archs:
        ours_s, theirs_s = interleaved(arch, args)
        rows.append((arch, ours_s, theirs_s, alone[arch, False], alone[arch, True]))
    threads = args.threads or torch.get_num_threads()
    print(
        f"ours vs torchvision on CPU, ResNet-50 FPN, random weights, torch {torch.__version__}, "
        f"{threads} thread(s); training: batch {args.batch_size} x {args.image_size} px, median of "
        f"{args.steps} interleaved steps after {args.warmup}; inference: 1 image, median of "
        f"{args.infer}"
        + (
            "; torchvision runs our RoI Align (its kernel is missing here)"
            if alp_curation.torchvision_fix.STATE == "patched"
            else ""
        )
    )
    header = (
        "ours", "torchvision", "params (M) ours / tv", "train s/step ours", "train s/step tv",
        "ratio", "peak RSS MiB ours / tv", "infer ms ours / tv", "detections ours / tv",
    )  # fmt: skip
    print(f"| {' | '.join(header)} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for arch, ours_s, theirs_s, ours, theirs in rows:
        print(
            f"| {arch} | {REFERENCES[arch]} | {ours['params_m']:.1f} / {theirs['params_m']:.1f} "
            f"| {ours_s:.2f} | {theirs_s:.2f} | {ours_s / theirs_s:.2f} "
            f"| {ours['peak_rss_mib']:.0f} / {theirs['peak_rss_mib']:.0f} "
            f"| {ours['infer_ms']:.0f} / {theirs['infer_ms']:.0f} "
            f"| {ours['detections']} / {theirs['detections']} |"
        )


if __name__ == "__main__":
    main()
