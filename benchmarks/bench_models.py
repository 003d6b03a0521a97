"""FCOS-MO speed on this CPU: a training step and inference, for ResNet-50 and the narrow ResNet.

    python benchmarks/bench_models.py --steps 5 --threads 2

For each backbone, in a fresh process (so that peak memory is that backbone's alone):

- training: the model of the paper's recipe (``--preset coco-voc``: ResNet-50, FPN 256, BN heads,
  Hourglass-20 mask head, 512-d phrases) or of ``--preset synthetic-small`` (resnet_small, FPN
  64, GN heads, 384-d phrases), random weights; one synthetic in-memory batch of ``--batch``
  images of ``--size`` px, each with two COCO instances (boxes and masks) and one ALP (box
  only), no data loading; forward, backward and an SGD step. Seconds per step: the median of
  ``--steps`` steps after ``--warmup`` ones. Peak RSS: the process's high-water mark after
  training (model, optimiser state, activations).
- inference: eval mode, one image of ``--size`` px, 80 class embeddings; the median of
  ``--infer`` images in ms (random weights keep up to 100 detections, so the mask head runs on
  all of them: the slow end).

Prints one table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

BACKBONE_PRESETS = {"resnet50": "coco-voc", "resnet_small": "synthetic-small"}


def synthetic_batch(batch: int, size: int, text_dim: int) -> tuple[torch.Tensor, list[dict]]:
    """uint8 images and targets: two masked COCO instances and one ALP per image."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    targets = []
    for _ in range(batch):
        boxes = (
            torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8], [0.2, 0.5, 0.7, 0.95]]) * size
        )  # (3, 4) px
        masks = torch.zeros(3, size, size, dtype=torch.bool)
        for k in range(2):
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


def measure(backbone: str, args: argparse.Namespace) -> dict[str, Any]:
    """One backbone's numbers, in this process."""
    import models  # noqa: F401  (the torchvision fix)
    from models.config import PRESETS, ModelConfig, build_model
    from models.schedule import build_optimizer

    cfg = ModelConfig(**{**PRESETS[BACKBONE_PRESETS[backbone]].model, "backbone": backbone})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(model, lr=1e-4, momentum=0.9, weight_decay=1e-4)
    images, targets = synthetic_batch(args.batch, args.size, cfg.text_dim)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    model.eval()
    classes = torch.nn.functional.normalize(torch.randn(80, cfg.text_dim), dim=1)
    infer = []
    detections = 0
    for i in range(1 + args.infer):
        start = time.perf_counter()
        out = model(images[:1], class_embeddings=classes)
        if i:
            infer.append(time.perf_counter() - start)
            detections = len(out[0]["scores"])
    return {
        "backbone": backbone,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_s": statistics.median(times),
        "peak_rss_mib": peak_mib,
        "infer_ms": 1000 * statistics.median(infer),
        "detections": detections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--infer", type=int, default=5, help="timed inference images (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument(
        "--backbones",
        default="resnet50,resnet_small",
        help=f"comma-separated, of {sorted(BACKBONE_PRESETS)}",
    )
    parser.add_argument("--size", type=int, default=512, help="image side in px")
    parser.add_argument("--batch", type=int, default=2, help="images per training step")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return

    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    unknown = sorted(set(backbones) - set(BACKBONE_PRESETS))
    if unknown:
        parser.error(f"--backbones: unknown {unknown}; choose from {sorted(BACKBONE_PRESETS)}")
    rows = []
    for backbone in backbones:
        child = [sys.executable, __file__, "--one", backbone, *sys.argv[1:]]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{backbone} failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    threads = args.threads or torch.get_num_threads()
    print(
        f"FCOS-MO on CPU, random weights, torch {torch.__version__}, {threads} thread(s); "
        f"training: batch {args.batch} x {args.size} px, median of {args.steps} steps after "
        f"{args.warmup}; inference: 1 image, 80 classes, median of {args.infer}"
    )
    header = (
        "backbone", "preset", "params (M)", "train s/step", "peak RSS (MiB)", "infer ms/image",
        "detections",
    )  # fmt: skip
    print(f"| {' | '.join(header)} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backbone']} | {BACKBONE_PRESETS[r['backbone']]} | {r['params_m']:.1f} | "
            f"{r['step_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['infer_ms']:.0f} | "
            f"{r['detections']} |"
        )


if __name__ == "__main__":
    main()
