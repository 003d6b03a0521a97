"""COCO instance annotations + images -> WebDataset shards with boxes, class names and RLE masks.

    beam run pipelines/build_coco_shards.py --instances annotations/instances_train2017.json \\
        --images coco/train2017 --output out/coco_voc_base --class-split coco_voc \\
        --mask-classes base
    # MaskX R-CNN (Hu et al., Sec. 4.1): boxes for every class of the split, masks for A only
    beam run pipelines/build_coco_shards.py ... --class-split coco_voc --boxes-for split-classes
    # The same with a split given as its classes: boxes for A ∪ B, masks for A = circle, square
    beam run pipelines/build_coco_shards.py ... --base-classes circle,square \\
        --novel-classes triangle,star --boxes-for split-classes

Stages (labelled composites, the work in `pipelines.coco`'s pure functions)::

    ReadInstances     the instances file, once -> images, annotations (checked, class selected)
                      | dead letters | not-selected counts
    BuildSamples      per image: check the file's header, polygons / RLE -> one compressed RLE
                      -> instances.json | dead letters
    WriteShards       shards/shard-NNNNNN.tar, WriteDeadLetters dead_letters/*.jsonl
    WriteManifest     manifest.json, last, with counts that add up

The writers, the output-directory check and the launcher are `pipelines/extract_alps.py`'s own
(`pipelines.writers`, `pipelines.io`, `pipelines.launcher`): deterministic shard assignment (hash
of the sample key), samples sorted by key, files written under a temporary name then renamed,
FileSystems paths (gs://, s3://), a second run into the same directory refused without
--overwrite, FnApiRunner by default. The layout is documented in docs/coco_shards.md and its
names live in `alp_dataset.coco_shards`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from alp_dataset.class_splits import SPLIT_NAMES, is_split_file
from alp_dataset.coco_shards import (
    BOXES_FOR,
    COCO_SHARDS_FORMAT,
    COCO_SHARDS_VERSION,
    DEAD_LETTER_REASONS,
    MASK_CLASSES,
    SAMPLE_INSTANCES,
    SOURCE_MASK,
    SPLIT_ALL,
    manifest_problems,
)
from alp_dataset.oid_classes import format_matches, split_from_csv
from alp_dataset.schema import ALPS_DIR, DEAD_LETTERS_DIR, PHRASES_DIR, SHARDS_DIR
from pipelines import launcher, progress, writers
from pipelines import manifest as m
from pipelines.coco import (
    NOT_SELECTED,
    AnnotationEntry,
    ClassSelection,
    CocoDeadLetter,
    CocoFormatError,
    build_sample,
    check_instances,
    load_instances,
    rejected_annotations,
    select_classes,
    split_entries,
)
from pipelines.io import (
    OutputExists,
    StreamDamaged,
    is_file,
    join,
    open_raw,
    prepare_output,
    read_input,
)
from pipelines.local_workers import LOCAL_RUNNERS
from pipelines.options import (
    add_dead_letter_limit_flag,
    add_help_beam_flag,
    add_quiet_flag,
    add_runner_flag,
    alp_version,
    class_list,
    positive_int,
)
from pipelines.spill import spill_folder
from pipelines.writers import WriteManifest

PROG = "beam run pipelines/build_coco_shards.py"
OUTPUTS = (SHARDS_DIR, DEAD_LETTERS_DIR)

# Statistics (summed into the manifest's counts; also Beam counters under namespace "alp").
IMAGES = "coco.images"
SAMPLES = "coco.samples"
WITHOUT_INSTANCES = "coco.images_without_instances"
IMAGES_DEAD = "coco.images_dead"
ANNOTATIONS = "coco.annotations"
INSTANCES_MASK = "coco.instances_mask"
INSTANCES_BOX = "coco.instances_box"
INSTANCES_CROWD = "coco.instances_crowd"
NOT_SELECTED_STAT = "coco.annotations_not_selected"
ANNOTATIONS_DEAD = "coco.annotations_dead"
DEAD = "coco.dead_letters."  # + reason

DESCRIPTION = """\
Turn COCO instance annotations and their images into WebDataset shards: one sample per image with
its instances (box, class name, compressed RLE mask or none), keeping masks only for the chosen
classes of a split (a named one, or base / novel class lists) and, when asked, boxes for more
classes (MaskX R-CNN's setting). Bad entries become dead letters, and manifest.json accounts for
every image and annotation.
"""

EPILOG = """\
Beam options: every standard Apache Beam pipeline option is accepted as well (see --help-beam),
e.g. --direct_num_workers 2 --direct_running_mode multi_processing; DataflowRunner with --project,
--region, --temp_location. The output bytes do not depend on the runner or the worker count.

Output under --output: shards/shard-NNNNNN.tar, dead_letters/*.jsonl and manifest.json (written
last; see docs/coco_shards.md).
"""


def _split_spec(text: str) -> str:
    if text in (*SPLIT_NAMES, SPLIT_ALL) or is_split_file(text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected one of {[*SPLIT_NAMES, SPLIT_ALL]} or the path of a .csv file"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--instances",
        metavar="FILE",
        help="(required) COCO instances JSON (local, gs://, s3://; .gz and other compressions by "
        "extension)",
    )
    parser.add_argument(
        "--images", metavar="ROOT", help="(required) folder holding each image's file_name"
    )
    parser.add_argument("--output", metavar="DIR", help="(required) output directory")
    parser.add_argument(
        "--class-split",
        default=None,
        type=_split_spec,
        metavar="SPLIT",
        help=f"class split: {', '.join(SPLIT_NAMES)} (alp_dataset.class_splits), a CSV of Open "
        "Images classes (base = the COCO classes they come from), or 'all': every category of "
        f"the file is a base class; default: {SPLIT_ALL} (unless --base-classes gives the split)",
    )
    parser.add_argument(
        "--base-classes",
        type=class_list,
        default=None,
        metavar="A,B",
        help="a custom split instead of --class-split: its base class names, comma-separated (as "
        "python -m models.evaluate takes them); alone, the split has no novel class; "
        "default: none",
    )
    parser.add_argument(
        "--novel-classes",
        type=class_list,
        default=None,
        metavar="C,D",
        help="the custom split's novel class names, comma-separated (needs --base-classes; no "
        "class may be in both); default: none",
    )
    parser.add_argument(
        "--mask-classes",
        default="base",
        choices=MASK_CLASSES,
        help="which part of the split keeps its masks; default: %(default)s",
    )
    parser.add_argument(
        "--boxes-for",
        default="mask-classes",
        choices=BOXES_FOR,
        help="which instances are kept: only those of the mask classes (the ALP paper's COCO "
        "side), every class of the split with masks only for the mask classes (MaskX R-CNN: "
        "boxes for A and B, masks for A), or every category of the file; default: %(default)s",
    )
    parser.add_argument(
        "--keep-empty-images",
        action="store_true",
        help="also write images left with no kept instance (pure negatives); by default they are "
        "counted and left out",
    )
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        default=1000,
        metavar="N",
        help="about N images per shard (ceil(samples / N) shards); default: %(default)s",
    )
    parser.add_argument(
        "--dead-letter-rows-per-file",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="about N dead letters per JSONL file; default: %(default)s",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --output (only shards/, dead_letters/ and manifest.json "
        "are removed); without it such a directory is refused",
    )
    add_runner_flag(parser)
    add_dead_letter_limit_flag(parser, "entries (images, and annotations of kept classes)")
    add_quiet_flag(parser)
    add_help_beam_flag(parser)
    return parser


def build_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that, with the input file, determine the output (recorded in the manifest)."""
    names = (
        "instances",
        "images",
        "split",
        "base_classes",
        "novel_classes",
        "mask_classes",
        "boxes_for",
        "keep_empty_images",
        "shard_size",
        "dead_letter_rows_per_file",
    )
    # The manifest keeps the key "split" for --class-split (the format of docs/coco_shards.md).
    options = {name: getattr(args, "class_split" if name == "split" else name) for name in names}
    for name in ("base_classes", "novel_classes"):
        if options[name] is not None:
            options[name] = list(options[name])  # as given: the manifest says what was asked
    return options


def resolve_split(args: argparse.Namespace) -> str | None:
    """Check --class-split against --base-classes / --novel-classes and fill in the defaults: the
    split's name ('all' when nothing was given), or None for a custom split (then
    ``args.novel_classes`` is a tuple, empty for no novel class). UsageError when they clash."""
    if args.novel_classes is not None and args.base_classes is None:
        raise launcher.UsageError(
            f"--novel-classes {','.join(args.novel_classes)} needs --base-classes"
        )
    if args.base_classes is None:
        args.class_split = SPLIT_ALL if args.class_split is None else args.class_split
        return args.class_split
    if args.class_split is not None:
        raise launcher.UsageError(
            f"--class-split {args.class_split} and --base-classes / --novel-classes both choose "
            "the classes: give one of them"
        )
    if args.novel_classes is None:
        args.novel_classes = ()
    return None


# ---------------------------------------------------------------------------------------------
# Reading the instances file


def _dead_stats(letters: Iterable[CocoDeadLetter]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for letter in letters:
        counts[DEAD + letter.reason] += 1
        counts[IMAGES_DEAD if letter.kind == "image" else ANNOTATIONS_DEAD] += 1
    return counts


class ReadInstancesFn(beam.DoFn):
    """path -> images (id, ImageEntry), annotations (image id, AnnotationEntry), dead letters,
    dead-annotation counts per image (image id, 1), stats.

    The file is read once, by one worker: checking an annotation needs every image and category
    of the file. The heavy work (masks, image files) is per image, after the grouping.
    """

    def __init__(
        self,
        categories: Mapping[int, str],
        selection: ClassSelection,
        progress_folder: str | None = None,
    ) -> None:
        self.categories = dict(categories)
        self.selection = selection
        self.progress_folder = progress_folder

    def process(self, path: str) -> Iterator[Any]:
        doc = load_instances(read_input(path), path)
        stats: Counter[str] = Counter()
        stats[IMAGES] = len(doc["images"])
        stats[ANNOTATIONS] = len(doc["annotations"])
        images: set[int] = set()
        dead: list[CocoDeadLetter] = []
        for kind, entry in split_entries(doc, self.categories, self.selection):
            if kind == "image":
                images.add(entry.id)
                yield pvalue.TaggedOutput("images", (entry.id, entry))
            elif kind == "annotation":
                yield pvalue.TaggedOutput("annotations", (entry.image_id, entry))
            elif kind == NOT_SELECTED:
                stats[NOT_SELECTED_STAT] += 1
            else:
                dead.append(entry)
                yield pvalue.TaggedOutput("dead", entry)
        for letter in dead:
            if letter.kind == "annotation" and letter.image_id in images:
                yield pvalue.TaggedOutput("dead_counts", (letter.image_id, 1))
        stats.update(_dead_stats(dead))
        # Image entries rejected here are done: progress counts every entry of the file.
        n_dead_images = sum(letter.kind == "image" for letter in dead)
        progress.advance(self.progress_folder, progress.IMAGES_BUILT, n_dead_images)
        progress.flush(self.progress_folder)
        for name, n in sorted(stats.items()):
            yield m.stat(name, n)


class ReadInstances(beam.PTransform):
    def __init__(
        self,
        path: str,
        categories: Mapping[int, str],
        selection: ClassSelection,
        progress_folder: str | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self.fn = ReadInstancesFn(categories, selection, progress_folder)

    def expand(self, p: pvalue.PBegin) -> pvalue.DoOutputsTuple:
        return (
            p
            | "InstancesFile" >> beam.Create([self.path])
            | "Split"
            >> beam.ParDo(self.fn).with_outputs(
                "images", "annotations", "dead_counts", "dead", m.STATS
            )
        )


# ---------------------------------------------------------------------------------------------
# One sample per image


@dataclass(frozen=True)
class CocoSample:
    key: str
    instances_json: bytes
    image: tuple[str, str]  # (path, extension): checked, read when the shard is written

    def members(self) -> dict[str, bytes]:
        return {SAMPLE_INSTANCES: self.instances_json}


def check_image_file(path: str, width: int, height: int) -> tuple[str, str] | None:
    """(reason, message) when the file is missing, unreadable or of another size; else None.

    Only the header is read (PIL opens lazily); the bytes are read once, when the shard is written.
    A folder or FIFO of that name is unreadable, and never opened (a FIFO would block).
    """
    if not FileSystems.exists(path):
        return "image_missing", f"no file {path}"
    if not is_file(path):
        return "image_unreadable", f"{path} is not a file"
    try:
        with open_raw(path) as f, Image.open(f) as image:
            size = image.size
    except Exception as exc:  # PIL raises several types for files that are no image
        return "image_unreadable", f"{path}: {type(exc).__name__}: {exc}"
    if size != (width, height):
        return (
            "image_size_mismatch",
            f"{path} is {size[0]} x {size[1]}, the entry {width} x {height}",
        )
    return None


class BuildSampleFn(beam.DoFn):
    """(image id, {image, annotations, dead_counts}) -> CocoSample | dead letters, stats; images
    and the instances kept are counted as they go (`pipelines.progress`)."""

    def __init__(
        self, images_root: str, keep_empty: bool, progress_folder: str | None = None
    ) -> None:
        self.images_root = images_root
        self.keep_empty = keep_empty
        self.progress_folder = progress_folder

    def finish_bundle(self) -> None:
        progress.flush(self.progress_folder)

    def process(self, element: tuple[int, Mapping[str, Iterable[Any]]]) -> Iterator[Any]:
        progress.advance(self.progress_folder, progress.IMAGES_BUILT)
        _, grouped = element
        (image,) = list(grouped["image"])  # split_entries keeps one entry per id
        annotations: list[AnnotationEntry] = list(grouped["annotations"])
        path = join(self.images_root, image.file_name)
        problem = check_image_file(path, image.width, image.height)
        if problem is not None:
            reason, message = problem
            letters = [
                CocoDeadLetter(
                    "image", image.id, image.id, reason, "file_name", message, image.raw
                ),
                *rejected_annotations(image, annotations),
            ]
            yield from (pvalue.TaggedOutput("dead", letter) for letter in letters)
            for name, n in _dead_stats(letters).items():
                yield m.stat(name, n)
            return
        outcome = build_sample(
            image,
            annotations,
            keep_empty=self.keep_empty,
            earlier_dead=sum(grouped["dead_counts"]),
        )
        yield from (pvalue.TaggedOutput("dead", letter) for letter in outcome.dead_letters)
        for name, n in _dead_stats(outcome.dead_letters).items():
            yield m.stat(name, n)
        progress.advance(self.progress_folder, progress.INSTANCES_BUILT, len(outcome.instances))
        n_mask = sum(i["source"] == SOURCE_MASK for i in outcome.instances)
        yield m.stat(INSTANCES_MASK, n_mask)
        yield m.stat(INSTANCES_BOX, len(outcome.instances) - n_mask)
        yield m.stat(INSTANCES_CROWD, sum(i["iscrowd"] for i in outcome.instances))
        if outcome.instances_json is None:
            yield m.stat(WITHOUT_INSTANCES)
            return
        yield CocoSample(image.key, outcome.instances_json, (path, image.extension))


class BuildSamples(beam.PTransform):
    def __init__(
        self, images_root: str, keep_empty: bool, progress_folder: str | None = None
    ) -> None:
        super().__init__()
        self.fn = BuildSampleFn(images_root, keep_empty, progress_folder)

    def expand(self, per_image: Mapping[str, pvalue.PCollection]) -> pvalue.DoOutputsTuple:
        grouped = per_image | "GroupByImage" >> beam.CoGroupByKey()
        return grouped | "Build" >> beam.ParDo(self.fn).with_outputs(
            "dead", m.STATS, main="samples"
        )


# ---------------------------------------------------------------------------------------------
# Files


def build_manifest(
    stats: Mapping[str, int], files: Iterable[tuple[str, str, int]], about: Mapping[str, Any]
) -> dict[str, Any]:
    """The manifest (keys: alp_dataset.coco_shards.MANIFEST_KEYS); RuntimeError if counts do not
    add up, since a manifest marks a run as complete."""
    s = dict(stats)
    listed: dict[str, list[dict[str, Any]]] = {SHARDS_DIR: [], DEAD_LETTERS_DIR: []}
    for kind, path, rows in sorted(files):
        listed[kind].append({"path": path, "rows": rows})
    by_reason = {r: s.get(DEAD + r, 0) for r in DEAD_LETTER_REASONS}
    manifest = {
        "format": COCO_SHARDS_FORMAT,
        "schema_version": COCO_SHARDS_VERSION,
        **about,
        "counts": {
            "images": {
                "total": s.get(IMAGES, 0),
                "samples": s.get(SAMPLES, 0),
                "without_instances": s.get(WITHOUT_INSTANCES, 0),
                "dead_letters": s.get(IMAGES_DEAD, 0),
            },
            "annotations": {
                "total": s.get(ANNOTATIONS, 0),
                "mask": s.get(INSTANCES_MASK, 0),
                "box": s.get(INSTANCES_BOX, 0),
                "crowd": s.get(INSTANCES_CROWD, 0),
                "not_selected": s.get(NOT_SELECTED_STAT, 0),
                "dead_letters": s.get(ANNOTATIONS_DEAD, 0),
            },
            "dead_letters": {"total": sum(by_reason.values()), "by_reason": by_reason},
        },
        "files": listed,
    }
    problems = manifest_problems(manifest)
    if problems:
        raise RuntimeError("manifest counts do not add up: " + "; ".join(problems))
    return manifest


def build_pipeline(
    p: beam.Pipeline,
    args: argparse.Namespace,
    categories: Mapping[int, str],
    selection: ClassSelection,
    about: Mapping[str, Any],
    progress_folder: str | None = None,
    spill_folder: str | None = None,
) -> None:
    """Add the conversion's stages to ``p``; ``spill_folder``: for a local run, where the
    writers group their rows into files through the disk (`pipelines.spill`)."""
    out = args.output
    spilled = None if spill_folder is None else writers.Spilled(spill_folder)
    read = p | "ReadInstances" >> ReadInstances(
        args.instances, categories, selection, progress_folder
    )
    per_image = {
        "image": read["images"],
        "annotations": read["annotations"],
        "dead_counts": read["dead_counts"],
    }
    built = per_image | "BuildSamples" >> BuildSamples(
        args.images, args.keep_empty_images, progress_folder
    )
    shards = built.samples | "WriteShards" >> writers.write_shards(
        out,
        args.shard_size,
        samples_stat=SAMPLES,
        progress_folder=progress_folder,
        spilled=spilled,
    )
    dead = (read["dead"], built["dead"]) | "AllDeadLetters" >> beam.Flatten()
    dead_files = dead | "WriteDeadLetters" >> writers.write_dead_letters(
        out, args.dead_letter_rows_per_file, spilled=spilled
    )
    files = (shards.files, dead_files.files) | "AllFiles" >> beam.Flatten()
    stats = (
        read[m.STATS],
        built[m.STATS],
        shards[m.STATS],
        dead_files[m.STATS],
    ) | "AllStats" >> beam.Flatten()
    _ = (files, stats) | "WriteManifest" >> WriteManifest(out, about, build_manifest)


# ---------------------------------------------------------------------------------------------
# The output directory and the launcher


def format_summary(manifest: Mapping[str, Any], *, out_dir: str, seconds: float) -> str:
    c = manifest["counts"]
    images, anns, dead = c["images"], c["annotations"], c["dead_letters"]
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(dead["by_reason"].items()) if n)
    rows = [
        ("images", f"{images['total']:,}", ""),
        ("  samples", f"{images['samples']:,}", f"{len(manifest['files']['shards'])} shard(s)"),
        ("  without kept instances", f"{images['without_instances']:,}", ""),
        ("  dead letters", f"{images['dead_letters']:,}", ""),
        ("annotations", f"{anns['total']:,}", ""),
        ("  with mask", f"{anns['mask']:,}", ""),
        ("  box only", f"{anns['box']:,}", ""),
        ("  class not selected", f"{anns['not_selected']:,}", ""),
        ("  dead letters", f"{anns['dead_letters']:,}", ""),
        ("dead letters", f"{dead['total']:,}", reasons),
        ("wall time", f"{seconds:.1f} s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    body = [f"{n:<{width}}  {v:>{value_width}}  {note}".rstrip() for n, v, note in rows]
    options = manifest["options"]
    split = (
        f"split {options['split']}"
        if options.get("split") is not None
        else f"base classes {', '.join(options['base_classes'])}; "
        f"novel classes {', '.join(options['novel_classes']) or 'none'}"
    )
    title = f"COCO shards -> {out_dir}  ({split})"
    return "\n".join([title, "-" * max(len(line) for line in body), *body])


def progress_stages(n_images: int) -> tuple[progress.Stage, ...]:
    """The progress lines of a local run over ``n_images`` image entries."""
    return (
        progress.Stage(
            "images",
            "images checked",
            (progress.IMAGES_BUILT,),
            total=n_images,
            parts=((progress.INSTANCES_BUILT, "instances kept"),),
        ),
        progress.Stage("writing shards", "images written", (progress.SAMPLES_WRITTEN,)),
    )


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> int:
    """Run the pipeline; returns the exit status (pipelines.launcher: 0 when the run completed)."""
    parser = build_parser()
    try:
        args, options = launcher.parse_args(parser, argv, PROG)
    except launcher.UsageError as exc:
        return launcher.usage_error(exc)
    if args.instances is None or args.images is None or args.output is None:
        parser.error("--instances, --images and --output are required")
    try:
        split = resolve_split(args)
    except launcher.UsageError as exc:
        return launcher.usage_error(exc)
    try:
        # Everything that can fail before any work is checked here; the output is cleared last.
        matched = FileSystems.match([args.instances])[0].metadata_list
        if len(matched) != 1:
            raise FileNotFoundError(f"--instances {args.instances!r} matches {len(matched)} files")
        size = matched[0].size_in_bytes
        if not FileSystems.exists(args.images):
            raise FileNotFoundError(f"--images {args.images!r}: no such folder")
        # The launcher reads the file only for its categories; the pipeline reads it again, so
        # that the job graph never carries the annotations.
        doc = load_instances(read_input(args.instances), args.instances)
        categories = check_instances(doc, args.instances)
        n_images = len(doc["images"])
        if split is not None and is_split_file(split):  # which OID classes the COCO ones serve
            print(format_matches(split_from_csv(split), source=split), file=sys.stderr)
        selection = select_classes(
            categories.values(),
            split=split,
            base=None if split is not None else frozenset(args.base_classes),
            novel=frozenset(args.novel_classes or ()),
            mask_classes=args.mask_classes,
            boxes_for=args.boxes_for,
        )
        prepare_output(
            args.output,
            overwrite=args.overwrite,
            outputs=OUTPUTS,
            foreign=(ALPS_DIR, PHRASES_DIR),
            foreign_kind="an ALP curation run",
        )
    except (OSError, StreamDamaged, CocoFormatError, OutputExists, ValueError) as exc:
        return launcher.usage_error(exc)
    about = {
        "alp_version": alp_version(),
        "options": build_options(args),
        "inputs": [{"path": matched[0].path, "size_bytes": size}],
        "classes": selection.to_json(),
    }
    local = args.runner in LOCAL_RUNNERS
    with (
        spill_folder(local) as spill,
        launcher.progress_lines(
            "build_coco_shards", progress_stages(n_images), show=local and not args.quiet
        ) as folder,
    ):
        finished = launcher.execute(
            lambda p: build_pipeline(p, args, categories, selection, about, folder, spill),
            options,
            args,
            save_main_session=save_main_session,
        )
    if finished is None:
        return launcher.EXIT_FAILED
    manifest = finished.manifest
    print(format_summary(manifest, out_dir=args.output, seconds=finished.seconds))
    c = manifest["counts"]
    entries = c["images"]["total"] + c["annotations"]["total"] - c["annotations"]["not_selected"]
    return launcher.report_dead_letters(
        entries,
        c["dead_letters"]["total"],
        unit="entries (images, and annotations of kept classes)",
        by_reason=c["dead_letters"]["by_reason"],
        limit=args.fail_on_dead_letters,
        hints=lambda: (
            [f"is --images {args.images} the folder of {args.instances}'s images?"]
            if c["dead_letters"]["by_reason"].get("image_missing")
            else []
        ),
    )


if __name__ == "__main__":
    # Run the module imported under its package name, so that its DoFns and records pickle by
    # reference (pipelines.build_coco_shards.X) for worker processes, not as __main__.X.
    from pipelines import build_coco_shards

    sys.exit(build_coco_shards.run())
