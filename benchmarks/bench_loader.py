"""Loader throughput: the shard datasets with LSJ at 512 x 512 against raw webdataset decoding.

    python benchmarks/bench_loader.py --n-images 320

Writes a synthetic world at COCO's typical size (640 x 480; images re-encoded as JPEG, quality
90, as COCO's are, or kept as PNG with --png), turns it into COCO shards with
``pipelines/build_coco_shards.py`` (masks for every class) and, unless --no-alps, into ALP shards
with ``pipelines/extract_alps.py`` (offline MiniLM encoder, about a minute). Then, for DataLoader
workers 0 and 2 (--workers), measures samples/s over whole epochs of the same shards:

- raw: ``webdataset.WebDataset`` decoding the image (``torchrgb8``) and the JSON, and for COCO
  shards also the masks' RLE (``pycocotools.mask.decode``): everything the sample stores;
- dataset: ``CocoShardDataset`` / ``AlpShardDataset`` without a transform (decoding, RLE masks,
  targets);
- dataset + LSJ: the same with ``TrainTransform(size=512)`` (flip, large-scale jitter, ALP box
  quantization), batched by ``alp_dataset.loader.make_loader``; for COCO shards the masks are
  decoded only for the instances the crop keeps, only the window's columns;
- COCO only, "LSJ, all masks": the same, every mask decoded whole before the transform (how the
  COCO dataset decoded before it decoded lazily), for the before / after ratio.

Each rate is the best of --epochs timed epochs after a warm-up one, the three loaders' epochs
interleaved. Prints one table; "LSJ / raw" is the rate with LSJ over the raw rate of the same
shards and workers, "LSJ / dataset" the rate with LSJ over the rate without it (the transforms'
own cost). The target is at least 0.5: the transforms cost no more than half.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the encoder runs before forks

import argparse
import contextlib
import io
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, default_collate

from alp_curation import flags
from alp_dataset.datasets import AlpShardDataset, CocoShardDataset, decode_coco_sample
from alp_dataset.loader import make_loader
from alp_dataset.synthetic import write_world
from alp_dataset.transforms import TrainTransform


class AllMasksCocoDataset(CocoShardDataset):
    """Every mask decoded whole before the transform, however much of it the crop keeps."""

    def decode(self, raw: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return decode_coco_sample(raw, lazy_masks=False)


def make_world(root: Path, n_images: int, *, jpeg: bool) -> tuple[Path, Path, Path]:
    """(instances.json, images folder, narratives.jsonl) of a 640 x 480 synthetic world."""
    world = write_world(root / "world", n_images, seed=0, image_size=(640, 480))
    assert world.images is not None
    if jpeg:
        doc = json.loads(world.instances.read_text())
        for image in doc["images"]:
            png = world.images / image["file_name"]
            jpg = png.with_suffix(".jpg")
            Image.open(png).convert("RGB").save(jpg, quality=90)
            png.unlink()
            image["file_name"] = jpg.name
        world.instances.write_text(json.dumps(doc))
    return world.instances, world.images, world.narratives


def quiet(run: Callable[[list[str]], int], argv: list[str]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = run(argv)
    if status != 0:
        raise SystemExit(f"pipeline failed ({status}):\n{out.getvalue()}")


def shard_urls(out_dir: Path) -> list[str]:
    manifest = json.loads((out_dir / "manifest.json").read_text())
    return [str(out_dir / f["path"]) for f in manifest["files"]["shards"]]


def build_coco_shards(instances: Path, images: Path, out: Path, shard_size: int) -> list[str]:
    from pipelines.build_coco_shards import run

    quiet(run, ["--instances", str(instances), "--images", str(images), "--output", str(out),
                "--shard-size", str(shard_size), "--runner", "FnApiRunner"])  # fmt: skip
    return shard_urls(out)


def build_alp_shards(narratives: Path, images: Path, out: Path, shard_size: int) -> list[str]:
    from pipelines.extract_alps import run

    quiet(run, ["--input", str(narratives), "--images", str(images), "--output", str(out),
                "--shard-size", str(shard_size), "--text-encoder", "minilm",
                "--runner", "FnApiRunner"])  # fmt: skip
    return shard_urls(out)


def epoch_rate(loader: Iterable[Any]) -> float:
    """Samples per second of one whole epoch (worker start-up included)."""
    n, start = 0, time.perf_counter()
    for _, docs in loader:
        n += len(docs)
    return n / (time.perf_counter() - start)


def best_rates(loaders: list[Iterable[Any]], epochs: int) -> list[float]:
    """The best epoch rate of each loader, after a warm-up epoch each. Epochs are interleaved
    (A B C A B C ...), so that a slow spell of this shared machine hits every loader alike."""
    for loader in loaders:
        epoch_rate(loader)
    best = [0.0] * len(loaders)
    for _ in range(epochs):
        for i, loader in enumerate(loaders):
            best[i] = max(best[i], epoch_rate(loader))
    return best


def raw_collate(batch: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, list[Any]]:
    """Images stacked by torch's default_collate (in shared memory inside a worker), documents
    kept as a list: the same batch shape as alp_dataset.loader.collate."""
    return default_collate([image for image, _ in batch]), [doc for _, doc in batch]


def decode_rles(doc: dict[str, Any]) -> dict[str, Any]:
    """A COCO sample's instances.json with its RLE masks decoded (pycocotools, no checks)."""
    rles = [
        {"size": i["rle"]["size"], "counts": i["rle"]["counts"].encode("ascii")}
        for i in doc["instances"]
        if i.get("rle")
    ]
    return {**doc, "masks": mask_utils.decode(rles) if rles else None}  # (H, W, N) uint8


def raw_loader(urls: list[str], json_name: str, workers: int, batch: int) -> DataLoader[Any]:
    dataset = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode("torchrgb8")
        .to_tuple("jpg;jpeg;png", json_name)
    )
    if json_name == "instances.json":
        dataset = dataset.map_tuple(None, decode_rles)
    return DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=raw_collate)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--n-images", type=int, default=320, help="images of the synthetic world")
    parser.add_argument("--shards", type=int, default=8, help="about this many shards")
    parser.add_argument("--image-size", type=int, default=512, help="LSJ output side, px")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (best counts)")
    parser.add_argument("--png", action="store_true", help="keep the world's PNG images")
    parser.add_argument("--no-alps", action="store_true", help="skip the ALP shards")
    parser.add_argument(
        "--num-workers", default="0,2", help="DataLoader worker counts, comma-separated"
    )
    args = flags.parse_args(parser)
    worker_counts = [int(n) for n in args.num_workers.split(",") if n.strip()]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        instances, images, narratives = make_world(root, args.n_images, jpeg=not args.png)
        shard_size = -(-args.n_images // args.shards)
        kinds: list[tuple[str, list[str], str, Callable[..., Any]]] = [
            ("COCO", build_coco_shards(instances, images, root / "coco", shard_size),
             "instances.json", CocoShardDataset),
        ]  # fmt: skip
        if not args.no_alps:
            urls = build_alp_shards(narratives, images, root / "alps", shard_size)
            kinds.append(("ALP", urls, "alps.json", AlpShardDataset))
        setup = time.perf_counter() - t0
        fmt = "JPEG q90" if not args.png else "PNG"
        print(
            f"{args.n_images} images 640 x 480 ({fmt}), ~{shard_size} per shard, batch "
            f"{args.batch_size}, LSJ to {args.image_size} x {args.image_size}; torch threads in "
            f"the main process {torch.get_num_threads()}, 1 per worker; setup {setup:.0f} s"
        )
        rows = []
        transform = TrainTransform(size=args.image_size)
        for name, urls, json_name, dataset_type in kinds:
            for workers in worker_counts:
                # The world's images share one size, so batches stack even without a transform.
                loaders = [
                    raw_loader(urls, json_name, workers, args.batch_size),
                    make_loader(dataset_type(urls, seed=0), batch_size=args.batch_size,
                                num_workers=workers),
                    make_loader(dataset_type(urls, transform=transform, seed=0),
                                batch_size=args.batch_size, num_workers=workers),
                ]  # fmt: skip
                if dataset_type is CocoShardDataset:
                    loaders.append(
                        make_loader(AllMasksCocoDataset(urls, transform=transform, seed=0),
                                    batch_size=args.batch_size, num_workers=workers)
                    )  # fmt: skip
                raw, plain, lsj, *before = best_rates(loaders, args.epochs)
                rows.append((name, workers, raw, plain, lsj, before[0] if before else None))
        header = (
            "shards", "workers", "raw wds", "dataset", "dataset + LSJ", "LSJ / raw",
            "LSJ / dataset", "LSJ, all masks", "all masks / raw", "speed-up",
        )  # fmt: skip
        print(f"| {' | '.join(header)} |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, workers, raw, plain, lsj, eager in rows:
            tail = (
                f"{eager:.1f} | {eager / raw:.2f} | {lsj / eager:.2f}x"
                if eager is not None
                else "- | - | -"
            )
            print(
                f"| {name} | {workers} | {raw:.1f} | {plain:.1f} | {lsj:.1f} | {lsj / raw:.2f} "
                f"| {lsj / plain:.2f} | {tail} |"
            )


if __name__ == "__main__":
    main()
