"""Command line: write a synthetic world to a folder.

Usage: python -m alp_dataset.synthetic --output DIR --n-images N --seed S [--no-images]
    [--open-images]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from alp_curation import flags
from alp_dataset.synthetic.export import write_world
from alp_dataset.synthetic.oid_export import write_oid_world
from alp_dataset.synthetic.shapes import DEFAULT_CLASSES


def _image_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '320x240' -> (320, 240) as (width, height)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(
        f"expected SIZE or WIDTHxHEIGHT (e.g. 256, 320x240), got {text!r}"
    )


class _NoSuchImagesFlag(argparse.Action):
    """``--images`` is no flag here (the PNGs are written unless --no-images); without this,
    `alp_curation.flags` would read it as the old spelling of --n-images."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("there is no --images: the PNGs are written unless --no-images is given")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m alp_dataset.synthetic",
        description=(
            "Write a deterministic synthetic world: images of shapes, COCO instance masks, "
            "Localized-Narratives-style narratives (caption, timed utterances, mouse traces) and "
            "the ground truth of which phrase names which object."
        ),
        epilog=(
            "Files written: narratives.jsonl (LocNar JSON lines), instances.json (COCO "
            "instances, category ids = 1-based positions in the full class list), "
            "ground_truth.jsonl (per narrative: each named object, its phrase, char span, box and "
            "speaking time), images/<image_id>.png."
        ),
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="output folder (created if missing; files are overwritten)",
    )
    parser.add_argument(
        "--n-images", type=int, required=True, metavar="N", help="number of images to make"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="world seed: same seed, same bytes in every file (default: 0)",
    )
    parser.add_argument(
        "--start",
        type=int,
        default=0,
        metavar="I",
        help="index of the first image; image i depends only on (seed, i) (default: 0)",
    )
    parser.add_argument(
        "--no-images",
        action="store_true",
        help="skip the PNGs (narratives, instances and ground truth are still written; fast)",
    )
    parser.add_argument("--images", nargs=0, action=_NoSuchImagesFlag, help=argparse.SUPPRESS)
    parser.add_argument(
        "--image-size",
        type=_image_size,
        default=(256, 256),
        metavar="SIZE",
        help="image size in pixels: one number for square images or WIDTHxHEIGHT (default: 256)",
    )
    parser.add_argument(
        "--annotators-per-image",
        type=int,
        default=1,
        metavar="K",
        help="narratives per image, each by a different annotator (default: 1)",
    )
    flags.add_class_list(
        parser,
        "--classes",
        default=DEFAULT_CLASSES,
        help="comma-separated shape classes to draw from (default: all: "
        + ",".join(DEFAULT_CLASSES)
        + ")",
    )
    parser.add_argument(
        "--open-images",
        action="store_true",
        help="also write the annotations in Open Images' formats to DIR/open_images/ (class "
        "descriptions, hierarchy, segmentation CSV + mask zips, labels, boxes, images named "
        "by ImageID; alp_dataset.synthetic.oid_export)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = flags.parse_args(parser, argv)
    began = time.perf_counter()
    try:
        paths = write_world(
            args.output,
            args.n_images,
            seed=args.seed,
            images=not args.no_images,
            classes=tuple(args.classes),
            image_size=args.image_size,
            annotators_per_image=args.annotators_per_image,
            start=args.start,
            progress=not args.quiet,
        )
        oid = None
        if args.open_images:
            oid = write_oid_world(
                Path(args.output) / "open_images",
                args.n_images,
                seed=args.seed,
                classes=tuple(args.classes),
                image_size=args.image_size,
                start=args.start,
            )
    except ValueError as exc:  # bad option values: say which, like argparse does
        parser.error(str(exc))
    n_narratives = args.n_images * args.annotators_per_image
    seconds = time.perf_counter() - began
    print(f"wrote {args.n_images} images, {n_narratives} narratives in {seconds:.1f} s")
    print(f"  narratives    {paths.narratives}")
    print(f"  instances     {paths.instances}  (COCO, RLE masks)")
    print(f"  ground truth  {paths.ground_truth}")
    print(f"  images        {paths.images if paths.images else '(not written: --no-images)'}")
    if oid is not None:
        print(f"  Open Images   {oid.root}  (classes.csv, hierarchy.json, *-masks-*.zip, CSVs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
