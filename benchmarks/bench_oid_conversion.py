"""Conversion rate of pipelines/build_oid_shards.py on one core, on a synthetic Open Images export.

    python benchmarks/bench_oid_conversion.py --n-images 2000

Writes the synthetic world in Open Images format (`alp_dataset.synthetic.oid_export`: masks in
zips at 3/4 of the image size, boxes, verified labels), then converts it as a user would: the
pipeline in a subprocess pinned to one CPU (``sched_setaffinity``), FnApiRunner, one worker.
Also times the per-image work alone (`pipelines.oid.build_sample`: mask PNG -> resize -> RLE, box
merge, JSON) in this process, to tell the pipeline's fixed costs from the per-row ones. Prints
one table: rows, wall seconds, mask rows per second.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from alp_curation import flags
from alp_dataset.open_images import SEGMENTATION_COLUMNS, read_class_descriptions
from alp_dataset.synthetic.oid_export import write_oid_world
from pipelines.mask_files import MaskStore
from pipelines.oid import (
    ImageFile,
    MaskRow,
    build_sample,
    parse_row,
    read_header,
    read_rows,
    select_oid_classes,
)


def _pin_to_one_core() -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def run_pipeline(world, out: Path) -> float:  # type: ignore[no-untyped-def]
    cmd = [
        sys.executable, "-m", "pipelines.build_oid_shards", "--runner", "FnApiRunner",
        "--direct_num_workers", "1", "--classes", str(world.classes),
        "--hierarchy", str(world.hierarchy), "--masks", str(world.masks),
        *[a for z in world.mask_zips for a in ("--mask-dir", str(z))],
        "--labels", str(world.labels), "--boxes", str(world.boxes),
        "--images", str(world.images), "--output", str(out), "--overwrite",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=_pin_to_one_core, env=env, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"build_oid_shards failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def time_build_sample(world, size: tuple[int, int]) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Seconds of `build_sample` over every image (masks read from the zips), mask rows."""
    classes = read_class_descriptions(world.classes.read_text(), "classes")
    selection = select_oid_classes(classes, None)
    store = MaskStore([str(z) for z in world.mask_zips])
    listing = store.list()
    text = world.masks.read_text()
    index, width = read_header(text, SEGMENTATION_COLUMNS, "masks")
    rows: dict[str, list[MaskRow]] = defaultdict(list)
    for line, raw, cells in read_rows(text, "masks"):
        row = parse_row("mask_row", line, raw, cells, index, width, selection)
        assert isinstance(row, MaskRow)
        rows[row.image_id].append(replace(row, member=listing.members[row.mask_path]))
    with world.boxes.open() as f:
        n_images = len({r["ImageID"] for r in csv.DictReader(f)})
    _pin_to_one_core()
    start = time.perf_counter()
    for image_id, mask_rows in rows.items():
        build_sample(
            ImageFile(image_id, f"{image_id}.png", *size),
            mask_rows,
            [],
            [],
            selection=selection,
            read_mask=lambda r: store.read(*r.member),
            keep_empty=True,
        )
    assert len(rows) <= n_images
    return time.perf_counter() - start, sum(len(v) for v in rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--n-images", type=int, default=2000, help="images of the export")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--image-size", default="256x256", help="image WIDTHxHEIGHT")
    parser.add_argument(
        "--work-dir", type=Path, help="keep inputs and outputs here (default: a temporary folder)"
    )
    args = flags.parse_args(parser)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="alp-bench-oid-"))
    start = time.perf_counter()
    size = tuple(int(v) for v in args.image_size.split("x"))
    assert len(size) == 2, "--image-size: WIDTHxHEIGHT"
    world = write_oid_world(work / "world", args.n_images, seed=args.seed, image_size=size)
    print(f"export: {args.n_images} images in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    wall = run_pipeline(world, work / "out")
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    c = manifest["counts"]
    # A tenth of the images once more: the difference cancels the fixed costs (start-up, graph).
    small_n = max(1, args.n_images // 10)
    small = write_oid_world(work / "world_small", small_n, seed=args.seed, image_size=size)
    small_wall = run_pipeline(small, work / "out_small")
    small_rows = json.loads((work / "out_small" / "manifest.json").read_text())["counts"]
    marginal = (c["mask_rows"]["total"] - small_rows["mask_rows"]["total"]) / (wall - small_wall)
    alone, n_masks = time_build_sample(world, size)
    shard_bytes = sum(p.stat().st_size for p in (work / "out" / "shards").glob("*.tar"))
    print(
        f"build_oid_shards on a synthetic Open Images export: {c['images']['total']:,} images "
        f"({size[0]} x {size[1]}, masks at 3/4 of that in {len(world.mask_zips)} zips), one CPU"
    )
    print(f"{'rows':<44} {'mask':>7} {'box':>7} {'label':>7}")
    print(
        f"{'':<44} {c['mask_rows']['total']:>7,} {c['box_rows']['total']:>7,} "
        f"{c['label_rows']['total']:>7,}"
    )
    print(f"{'run':<44} {'wall s':>7} {'mask rows/s':>12}")
    print(f"{'whole pipeline (FnApiRunner, 1 worker, 1 CPU)':<44} {wall:>7.1f} "
          f"{c['mask_rows']['total'] / wall:>12.1f}")  # fmt: skip
    print(f"{'marginal (' + str(args.n_images) + ' minus ' + str(small_n) + ' images)':<44} "
          f"{wall - small_wall:>7.1f} {marginal:>12.1f}")  # fmt: skip
    print(f"{'per-image stage alone (build_sample, 1 CPU)':<44} {alone:>7.1f} "
          f"{n_masks / alone:>12.1f}")  # fmt: skip
    print(f"shards: {shard_bytes / 2**20:.1f} MiB, dead letters {c['dead_letters']['total']}")


if __name__ == "__main__":
    main()
