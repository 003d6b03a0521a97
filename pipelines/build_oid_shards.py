"""Open Images annotations + images -> WebDataset shards in the COCO shards' format and conventions.

    beam run pipelines/build_oid_shards.py \\
        --classes challenge-2019-classes-description-segmentable.csv \\
        --hierarchy challenge-2019-label300-segmentable-hierarchy.json \\
        --masks validation-annotations-object-segmentation.csv \\
        --mask-dir validation-masks-0.zip --mask-dir validation-masks-1.zip ... \\
        --labels validation-annotations-human-imagelabels-boxable.csv \\
        --boxes validation-annotations-bbox.csv \\
        --images oid/validation --output out/oid_val --keep-empty-images
    # Table 3's box oracles: boxes (no masks) of the training images
    beam run pipelines/build_oid_shards.py --classes ... --boxes train-annotations-bbox.csv \\
        --images oid/train --output out/oid_train_boxes

Stages (labelled composites, the work in `pipelines.oid`'s pure functions)::

    ReadMasks / ReadBoxes / ReadLabels   each file once, by one worker: rows checked, classes
                                         selected; mask files listed and looked up
                                         | dead letters | counts
    BuildSamples    per ImageID: find the image file, read its header; mask PNGs -> RLE at the
                    image's size; boxes merged with masks; labels -> instances.json | dead letters
    WriteShards     shards/shard-NNNNNN.tar, WriteDeadLetters dead_letters/*.jsonl
    WriteManifest   manifest.json, last, with counts that add up (oid_shards.manifest_problems)

The writers, the output-directory check and the launcher are those of the COCO and ALP jobs
(`pipelines.writers`, `pipelines.io`, `pipelines.launcher`). The layout is in
docs/open_images.md; its names live in `alp_dataset.oid_shards`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from alp_dataset.class_splits import SPLIT_NAMES
from alp_dataset.coco_shards import BOXES_FOR, MASK_CLASSES, SPLIT_ALL
from alp_dataset.oid_classes import format_matches, split_from_csv
from alp_dataset.oid_shards import (
    DEAD_LETTER_REASONS,
    OID_SHARDS_FORMAT,
    OID_SHARDS_VERSION,
    manifest_problems,
)
from alp_dataset.open_images import OpenImagesFormatError, parse_hierarchy, read_class_descriptions
from alp_dataset.schema import ALPS_DIR, DEAD_LETTERS_DIR, PHRASES_DIR, SHARDS_DIR
from pipelines import launcher, writers
from pipelines import manifest as m
from pipelines.io import OutputExists, StreamDamaged, prepare_output, read_head
from pipelines.local_workers import LOCAL_RUNNERS
from pipelines.mask_files import MaskStore
from pipelines.oid import OidFormatError, OidSelection, read_header, select_oid_classes
from pipelines.oid_stages import DEAD, FILES, BuildSampleFn, ReadCsv, read_text
from pipelines.options import (
    add_dead_letter_limit_flag,
    add_help_beam_flag,
    add_runner_flag,
    alp_version,
    positive_int,
)
from pipelines.spill import spill_folder
from pipelines.writers import WriteManifest

PROG = "beam run pipelines/build_oid_shards.py"
OUTPUTS = (SHARDS_DIR, DEAD_LETTERS_DIR)
DESCRIPTION = """\
Turn Open Images annotations (segmentation masks, boxes, image-level labels) and their images into
WebDataset shards in the format of the COCO shards: one sample per image with its instances (box,
class, group-of flag, compressed RLE mask or none) and its verified positive and negative labels.
Bad rows become dead letters, and manifest.json accounts for every row and every mask file.
"""

EPILOG = """\
Beam options: every standard Apache Beam pipeline option is accepted as well (see --help-beam).
Output under --output: shards/, dead_letters/ and manifest.json (written last); docs/open_images.md.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flag = parser.add_argument
    flag(
        "--classes",
        metavar="CSV",
        help="(required) class descriptions: LabelName,DisplayName, no header (e.g. "
        "challenge-2019-classes-description-segmentable.csv); rows of other classes are "
        "counted as not selected",
    )
    flag(
        "--hierarchy",
        metavar="JSON",
        help="class hierarchy (e.g. challenge-2019-label300-segmentable-hierarchy.json), "
        "recorded in the manifest for the evaluation",
    )
    flag(
        "--masks",
        metavar="CSV",
        help="instance segmentation CSV (MaskPath,ImageID,LabelName,BoxID,BoxXMin,...); needs "
        "--mask-dir",
    )
    flag(
        "--mask-dir",
        action="append",
        default=[],
        metavar="DIR_OR_ZIP",
        help="a folder or a .zip of the mask PNGs; repeat for more (the first holding a name wins)",
    )
    flag(
        "--labels",
        metavar="CSV",
        help="human-verified image-level labels (ImageID,Source,LabelName,Confidence): "
        "Confidence 1 present, 0 verified absent",
    )
    flag(
        "--boxes",
        metavar="CSV",
        help="boxes (ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,...): "
        "merged into the mask of the same box; the others become box-only instances (the box "
        "oracles' training data)",
    )
    flag("--images", metavar="ROOT", help="(required) folder of <ImageID>.jpg (or .jpeg, .png)")
    flag("--output", metavar="DIR", help="(required) output directory")
    flag(
        "--class-split",
        default=SPLIT_ALL,
        metavar="SPLIT",
        help="class split: 'all' (every class of --classes is a base class) or a CSV of Open "
        "Images classes (class descriptions: base classes by the shipped COCO correspondence; "
        "or display_name,mid,coco_name); default: %(default)s",
    )
    flag(
        "--mask-classes",
        default="all",
        choices=MASK_CLASSES,
        help="which part of the split keeps its masks; default: %(default)s",
    )
    flag(
        "--boxes-for",
        default="all",
        choices=BOXES_FOR,
        help="which classes keep boxes: those keeping masks, every class of the split, or every "
        "class of --classes; default: %(default)s",
    )
    flag(
        "--keep-empty-images",
        action="store_true",
        help="also write images left with no kept instance; give it for evaluation shards (the "
        "detections on them meet negative labels)",
    )
    flag(
        "--shard-size",
        type=positive_int,
        default=1000,
        metavar="N",
        help="about N images per shard; default: %(default)s",
    )
    flag(
        "--dead-letter-rows-per-file",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="about N dead letters per JSONL file; default: %(default)s",
    )
    flag(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --output (shards/, dead_letters/, manifest.json only)",
    )
    add_runner_flag(parser)
    add_dead_letter_limit_flag(parser, "rows and images")
    add_help_beam_flag(parser)
    return parser


OPTION_NAMES = ("classes", "hierarchy", "masks", "mask_dir", "labels", "boxes", "images", "split",
                "mask_classes", "boxes_for", "keep_empty_images", "shard_size",
                "dead_letter_rows_per_file")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Manifest and pipeline


MASK_FILE_COUNTS = ("total", "referenced", "not_selected", "unreferenced", "shadowed")
BOX_ROW_COUNTS = ("total", "box", "with_mask", "group_of", "not_selected", "dead_letters")
LABEL_ROW_COUNTS = ("total", "positive", "negative", "not_selected", "dead_letters")


def build_manifest(
    stats: Mapping[str, int], files: Iterable[tuple[str, str, int]], about: Mapping[str, Any]
) -> dict[str, Any]:
    """The manifest (alp_dataset.oid_shards.MANIFEST_KEYS); RuntimeError if counts do not add up."""
    s = dict(stats)

    def group(name: str, keys: Sequence[str]) -> dict[str, int]:
        return {k: s.get(f"oid.{name}.{k}", 0) for k in keys}

    listed: dict[str, list[dict[str, Any]]] = {SHARDS_DIR: [], DEAD_LETTERS_DIR: []}
    for kind, path, rows in sorted(files):
        listed[kind].append({"path": path, "rows": rows})
    by_reason = {r: s.get(DEAD + r, 0) for r in DEAD_LETTER_REASONS}
    containers = about["mask_containers"]
    manifest = {
        "format": OID_SHARDS_FORMAT,
        "schema_version": OID_SHARDS_VERSION,
        **{k: v for k, v in about.items() if k != "mask_containers"},
        "mask_files": {
            "containers": containers,
            **group("mask_files", MASK_FILE_COUNTS),
        },
        "counts": {
            "images": group("images", ("total", "samples", "without_instances", "dead_letters")),
            "mask_rows": group("mask_rows", ("total", "mask", "not_selected", "dead_letters")),
            "box_rows": group("box_rows", BOX_ROW_COUNTS),
            "label_rows": group("label_rows", LABEL_ROW_COUNTS),
            "dead_letters": {"total": sum(by_reason.values()), "by_reason": by_reason},
        },
        "files": listed,
    }
    if not containers:  # no --masks: nothing listed
        manifest["mask_files"]["total"] = 0
    problems = manifest_problems(manifest)
    if problems:
        raise RuntimeError("manifest counts do not add up: " + "; ".join(problems))
    return manifest


def build_pipeline(
    p: beam.Pipeline,
    args: argparse.Namespace,
    selection: OidSelection,
    store: MaskStore,
    about: Mapping[str, Any],
    spill_folder: str | None = None,
) -> None:
    """Add the conversion's stages to ``p``; ``spill_folder``: for a local run, where the
    writers group their rows into files through the disk (`pipelines.spill`)."""
    out = args.output
    spilled = None if spill_folder is None else writers.Spilled(spill_folder)
    reads = {}
    for kind, (flag, _, _) in FILES.items():
        path = getattr(args, flag)
        if path is not None:
            fn_store = store if kind == "mask_row" else None
            reads[flag] = p | f"Read{flag.title()}" >> ReadCsv(kind, path, selection, fn_store)
    empty = p | "NoRows" >> beam.Create([])
    per_image = {
        flag: reads[flag]["rows"] if flag in reads else empty
        for flag in ("masks", "boxes", "labels")
    }
    dead_counts = [r["dead_counts"] for r in reads.values()]
    per_image["dead_counts"] = dead_counts | "AllDeadCounts" >> beam.Flatten()
    fn = BuildSampleFn(args.images, selection, store, args.keep_empty_images)
    built = (
        per_image
        | "GroupByImage" >> beam.CoGroupByKey()
        | "BuildSamples" >> beam.ParDo(fn).with_outputs("dead", m.STATS, main="samples")
    )
    shards = built.samples | "WriteShards" >> writers.write_shards(
        out, args.shard_size, samples_stat="oid.images.samples", spilled=spilled
    )
    dead = [r["dead"] for r in reads.values()] + [built["dead"]]
    dead_files = (
        dead
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters"
        >> writers.write_dead_letters(out, args.dead_letter_rows_per_file, spilled=spilled)
    )
    files = (shards.files, dead_files.files) | "AllFiles" >> beam.Flatten()
    stats = [r[m.STATS] for r in reads.values()]
    stats += [built[m.STATS], shards[m.STATS], dead_files[m.STATS]]
    all_stats = stats | "AllStats" >> beam.Flatten()
    _ = (files, all_stats) | "WriteManifest" >> WriteManifest(out, about, build_manifest)


def format_summary(manifest: Mapping[str, Any], *, out_dir: str, seconds: float) -> str:
    c = manifest["counts"]
    rows = [
        ("images", c["images"]),
        ("mask rows", c["mask_rows"]),
        ("box rows", c["box_rows"]),
        ("label rows", c["label_rows"]),
    ]
    lines = [f"Open Images shards -> {out_dir}  ({seconds:.1f} s)"]
    for name, counts in rows:
        parts = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total")
        lines.append(f"  {name:<10} {counts['total']:>9,}  ({parts})")
    reasons = ", ".join(f"{r} {n:,}" for r, n in c["dead_letters"]["by_reason"].items() if n)
    lines.append(
        f"  dead letters {c['dead_letters']['total']:,}" + (f": {reasons}" if reasons else "")
    )
    files = manifest["mask_files"]
    lines.append(
        f"  mask files {files['total']:,} (referenced {files['referenced']:,}, unreferenced "
        f"{files['unreferenced']:,})"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The launcher


def _check_inputs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """{role, path, size_bytes} of each input file; the CSV headers checked (OidFormatError)."""
    inputs = []
    for role in ("classes", "hierarchy", "masks", "labels", "boxes"):
        path = getattr(args, role)
        if path is None:
            continue
        matched = FileSystems.match([path])[0].metadata_list
        if len(matched) != 1:
            raise FileNotFoundError(f"--{role} {path!r} matches {len(matched)} files")
        inputs.append(
            {"role": role, "path": matched[0].path, "size_bytes": matched[0].size_in_bytes}
        )
    for flag, columns, _ in FILES.values():
        path = getattr(args, flag)
        if path is not None:
            head = read_head(path, 1 << 16).decode("utf-8", errors="replace")
            read_header(head, columns, f"--{flag} {path}")
    return inputs


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> int:
    """Run the pipeline; returns the exit status (pipelines.launcher: 0 when the run completed)."""
    parser = build_parser()
    try:
        args, options = launcher.parse_args(parser, argv, PROG)
    except launcher.UsageError as exc:
        return launcher.usage_error(exc)
    if args.classes is None or args.images is None or args.output is None:
        parser.error("--classes, --images and --output are required")
    if args.masks is None and args.boxes is None and args.labels is None:
        parser.error("give at least one of --masks, --boxes and --labels")
    if (args.masks is None) != (not args.mask_dir):
        parser.error("--masks and --mask-dir go together")
    try:
        inputs = _check_inputs(args)
        if not FileSystems.exists(args.images):
            raise FileNotFoundError(f"--images {args.images!r}: no such folder")
        classes = read_class_descriptions(read_text(args.classes), args.classes)
        hierarchy = None
        if args.hierarchy is not None:
            hierarchy = parse_hierarchy(json.loads(read_text(args.hierarchy)), args.hierarchy)
        split, mids = None, None
        if args.class_split != SPLIT_ALL:
            if args.class_split in SPLIT_NAMES:
                raise ValueError(
                    f"--class-split {args.class_split} names COCO classes; give a CSV of Open "
                    "Images classes or 'all'"
                )
            oid = split_from_csv(args.class_split)
            print(format_matches(oid, source=args.class_split), file=sys.stderr)
            split, mids = oid.split, oid.mids
        selection = select_oid_classes(
            classes, split, mids=mids, mask_classes=args.mask_classes, boxes_for=args.boxes_for
        )
        store = MaskStore(args.mask_dir)
        store.check()
        prepare_output(
            args.output,
            overwrite=args.overwrite,
            outputs=OUTPUTS,
            foreign=(ALPS_DIR, PHRASES_DIR),
            foreign_kind="an ALP curation run",
        )
    except (OSError, StreamDamaged, OidFormatError, OpenImagesFormatError, OutputExists) as exc:
        return launcher.usage_error(exc)
    except ValueError as exc:
        return launcher.usage_error(exc)
    listing = store.list() if args.masks is not None else None
    about = {
        "alp_version": alp_version(),
        # The manifest keeps the key "split" for --class-split (docs/open_images.md).
        "options": {
            name: getattr(args, "class_split" if name == "split" else name) for name in OPTION_NAMES
        },
        "inputs": inputs,
        "classes": selection.to_json(),
        "hierarchy": hierarchy.to_json() if hierarchy is not None else None,
        "mask_containers": [
            {"path": path, "files": n}
            for path, n in zip(
                store.containers, listing.files_per_container if listing else (), strict=True
            )
        ],
    }
    with spill_folder(args.runner in LOCAL_RUNNERS) as spill:
        finished = launcher.execute(
            lambda p: build_pipeline(p, args, selection, store, about, spill),
            options,
            args,
            save_main_session=save_main_session,
        )
    if finished is None:
        return launcher.EXIT_FAILED
    manifest = finished.manifest
    print(format_summary(manifest, out_dir=args.output, seconds=finished.seconds))
    c = manifest["counts"]
    groups = ("images", "mask_rows", "box_rows", "label_rows")
    entries = sum(c[g]["total"] - c[g].get("not_selected", 0) for g in groups)
    return launcher.report_dead_letters(
        entries,
        c["dead_letters"]["total"],
        unit="rows and images",
        by_reason=c["dead_letters"]["by_reason"],
        limit=args.fail_on_dead_letters,
        hints=lambda: (
            [f"is --images {args.images} the folder of the images (<ImageID>.jpg)?"]
            if c["dead_letters"]["by_reason"].get("image_missing")
            else []
        ),
    )


if __name__ == "__main__":
    # Run the module imported under its package name, so that its DoFns and records pickle by
    # reference (pipelines.build_oid_shards.X) for worker processes, not as __main__.X.
    from pipelines import build_oid_shards

    sys.exit(build_oid_shards.run())
