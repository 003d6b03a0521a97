"""COCO instance annotations + images -> WebDataset shards with boxes, class names and RLE masks.

    beam run pipelines/build_coco_shards.py --instances annotations/instances_train2017.json \\
        --images coco/train2017 --output out/coco_voc_base --split coco_voc --mask-classes base
    # MaskX R-CNN (Hu et al., Sec. 4.1): boxes for every class of the split, masks for A only
    beam run pipelines/build_coco_shards.py ... --split coco_voc --boxes-for split-classes

Stages (labelled composites, the work in `pipelines.coco`'s pure functions)::

    ReadInstances     the instances file, once -> images, annotations (checked, class selected)
                      | dead letters | not-selected counts
    BuildSamples      per image: check the file's header, polygons / RLE -> one compressed RLE
                      -> instances.json | dead letters
    WriteShards       shards/shard-NNNNNN.tar, WriteDeadLetters dead_letters/*.jsonl
    WriteManifest     manifest.json, last, with counts that add up

Same conventions as `pipelines/extract_alps.py`: deterministic shard assignment (hash of the
sample key), samples sorted by key, files written under a temporary name then renamed,
FileSystems paths (gs://, s3://), a second run into the same directory refused without
--overwrite, FnApiRunner by default. The layout is documented in docs/coco_shards.md and its
names live in `alp_dataset.coco_shards`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions
from apache_beam.runners.runner import PipelineState
from PIL import Image

from alp_dataset.class_splits import SPLIT_NAMES
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
from alp_dataset.schema import (
    ALPS_DIR,
    DEAD_LETTERS_DIR,
    MANIFEST_NAME,
    PHRASES_DIR,
    SHARDS_DIR,
    part_name,
    shard_name,
)
from pipelines import manifest as m
from pipelines.coco import (
    NOT_SELECTED,
    AnnotationEntry,
    ClassSelection,
    CocoDeadLetter,
    CocoFormatError,
    build_sample,
    check_instances,
    rejected_annotations,
    select_classes,
    split_entries,
)
from pipelines.io import join, read_bytes, write_atomic, write_bytes_atomic
from pipelines.options import (
    add_help_beam_flag,
    add_runner_flag,
    alp_version,
    positive_int,
    print_beam_help,
    unknown_beam_args,
)
from pipelines.writers import GroupIntoParts, WriteManifest, _add_member, stable_hash

PROG = "beam run pipelines/build_coco_shards.py"
OUTPUTS = (SHARDS_DIR, DEAD_LETTERS_DIR)
UNCOMPRESSED = CompressionTypes.UNCOMPRESSED

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
classes of a split and, when asked, boxes for more classes (MaskX R-CNN's setting). Bad entries
become dead letters, and manifest.json accounts for every image and annotation.
"""

EPILOG = """\
Beam options: every standard Apache Beam pipeline option is accepted as well (see --help-beam),
e.g. --direct_num_workers 2 --direct_running_mode multi_processing; DataflowRunner with --project,
--region, --temp_location. The output bytes do not depend on the runner or the worker count.

Output under --output: shards/shard-NNNNNN.tar, dead_letters/*.jsonl and manifest.json (written
last; see docs/coco_shards.md).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--instances", metavar="FILE", help="(required) COCO instances JSON (local, gs://, s3://)"
    )
    parser.add_argument(
        "--images", metavar="ROOT", help="(required) folder holding each image's file_name"
    )
    parser.add_argument("--output", metavar="DIR", help="(required) output directory")
    parser.add_argument(
        "--split",
        default=SPLIT_ALL,
        choices=(*SPLIT_NAMES, SPLIT_ALL),
        help="class split (alp_dataset.class_splits); 'all': every category of the file is a "
        "base class; default: %(default)s",
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
    add_help_beam_flag(parser)
    return parser


def build_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that, with the input file, determine the output (recorded in the manifest)."""
    names = (
        "instances",
        "images",
        "split",
        "mask_classes",
        "boxes_for",
        "keep_empty_images",
        "shard_size",
        "dead_letter_rows_per_file",
    )
    return {name: getattr(args, name) for name in names}


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

    def __init__(self, categories: Mapping[int, str], selection: ClassSelection) -> None:
        self.categories = dict(categories)
        self.selection = selection

    def process(self, path: str) -> Iterator[Any]:
        doc = json.loads(read_bytes(path))
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
        for name, n in sorted(stats.items()):
            yield m.stat(name, n)


class ReadInstances(beam.PTransform):
    def __init__(self, path: str, categories: Mapping[int, str], selection: ClassSelection) -> None:
        super().__init__()
        self.path = path
        self.fn = ReadInstancesFn(categories, selection)

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
    image_path: str
    extension: str


def check_image_file(path: str, width: int, height: int) -> tuple[str, str] | None:
    """(reason, message) when the file is missing, unreadable or of another size; else None.

    Only the header is read (PIL opens lazily); the bytes are read once, when the shard is written.
    """
    if not FileSystems.exists(path):
        return "image_missing", f"no file {path}"
    try:
        with FileSystems.open(path, compression_type=UNCOMPRESSED) as f, Image.open(f) as image:
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
    """(image id, {image, annotations, dead_counts}) -> CocoSample | dead letters, stats."""

    def __init__(self, images_root: str, keep_empty: bool) -> None:
        self.images_root = images_root
        self.keep_empty = keep_empty

    def process(self, element: tuple[int, Mapping[str, Iterable[Any]]]) -> Iterator[Any]:
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
        n_mask = sum(i["source"] == SOURCE_MASK for i in outcome.instances)
        yield m.stat(INSTANCES_MASK, n_mask)
        yield m.stat(INSTANCES_BOX, len(outcome.instances) - n_mask)
        yield m.stat(INSTANCES_CROWD, sum(i["iscrowd"] for i in outcome.instances))
        if outcome.instances_json is None:
            yield m.stat(WITHOUT_INSTANCES)
            return
        yield CocoSample(image.key, outcome.instances_json, path, image.extension)


class BuildSamples(beam.PTransform):
    def __init__(self, images_root: str, keep_empty: bool) -> None:
        super().__init__()
        self.fn = BuildSampleFn(images_root, keep_empty)

    def expand(self, per_image: Mapping[str, pvalue.PCollection]) -> pvalue.DoOutputsTuple:
        grouped = per_image | "GroupByImage" >> beam.CoGroupByKey()
        return grouped | "Build" >> beam.ParDo(self.fn).with_outputs(
            "dead", m.STATS, main="samples"
        )


# ---------------------------------------------------------------------------------------------
# Files


def _sample_part(sample: CocoSample) -> int:
    return stable_hash(sample.key)


def _dead_letter_part(letter: CocoDeadLetter) -> int:
    return stable_hash(f"{letter.kind}\n{letter.id}\n{letter.raw}")


def _real(rows: Iterable[Any]) -> list[Any]:
    return [r for r in rows if r is not None]


class WriteShardFn(beam.DoFn):
    """((index, n), samples) -> shards/shard-index.tar; yields ("shards", path, samples)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, element: tuple[tuple[int, int], Iterable[Any]]) -> Iterator[Any]:
        (index, _), samples = element
        rows = sorted(_real(samples), key=lambda s: s.key)

        def write(f: Any) -> None:
            with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for s in rows:
                    _add_member(tar, f"{s.key}.{SAMPLE_INSTANCES}", s.instances_json)
                    with FileSystems.open(s.image_path, compression_type=UNCOMPRESSED) as img:
                        _add_member(tar, f"{s.key}.{s.extension}", img.read())

        name = shard_name(index)
        with m.timed("write"):
            write_atomic(join(self.out_dir, SHARDS_DIR, name), write)
        yield SHARDS_DIR, f"{SHARDS_DIR}/{name}", len(rows)
        yield m.stat(SAMPLES, len(rows))


class WriteDeadLettersFn(beam.DoFn):
    """((index, n), dead letters) -> dead_letters/part-index-of-n.jsonl, sorted."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, element: tuple[tuple[int, int], Iterable[Any]]) -> Iterator[Any]:
        (index, n), letters = element
        rows = sorted(_real(letters), key=CocoDeadLetter.sort_key)
        text = "".join(
            json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) + "\n" for r in rows
        )
        name = part_name(index, n, "jsonl")
        write_bytes_atomic(join(self.out_dir, DEAD_LETTERS_DIR, name), text.encode("utf-8"))
        yield DEAD_LETTERS_DIR, f"{DEAD_LETTERS_DIR}/{name}", len(rows)


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
) -> None:
    out = args.output
    read = p | "ReadInstances" >> ReadInstances(args.instances, categories, selection)
    per_image = {
        "image": read["images"],
        "annotations": read["annotations"],
        "dead_counts": read["dead_counts"],
    }
    built = per_image | "BuildSamples" >> BuildSamples(args.images, args.keep_empty_images)
    shards = (
        built.samples
        | "GroupShards" >> GroupIntoParts(args.shard_size, _sample_part)
        | "WriteShards" >> beam.ParDo(WriteShardFn(out)).with_outputs(m.STATS, main="files")
    )
    dead = (read["dead"], built["dead"]) | "AllDeadLetters" >> beam.Flatten()
    dead_files = (
        dead
        | "GroupDeadLetters" >> GroupIntoParts(args.dead_letter_rows_per_file, _dead_letter_part)
        | "WriteDeadLetters" >> beam.ParDo(WriteDeadLettersFn(out))
    )
    files = (shards.files, dead_files) | "AllFiles" >> beam.Flatten()
    stats = (read[m.STATS], built[m.STATS], shards[m.STATS]) | "AllStats" >> beam.Flatten()
    _ = (files, stats) | "WriteManifest" >> WriteManifest(out, about, build_manifest)


# ---------------------------------------------------------------------------------------------
# The output directory and the launcher


class OutputExists(RuntimeError):
    """--output holds an earlier run and --overwrite was not given (or holds an ALP run)."""


def prepare_output(out_dir: str, *, overwrite: bool) -> None:
    """Refuse a directory holding an earlier run, or remove that run's files (``overwrite``).

    A directory holding an ALP curation run (alps/, phrases/) is refused even with --overwrite:
    removing only the shards would leave a mix of two runs.
    """
    if any(FileSystems.exists(join(out_dir, d)) for d in (ALPS_DIR, PHRASES_DIR)):
        raise OutputExists(
            f"output directory {out_dir} holds an ALP curation run (alps/, phrases/); choose "
            "another --output"
        )
    manifest = join(out_dir, MANIFEST_NAME)
    found = [n for n in (MANIFEST_NAME, *OUTPUTS) if FileSystems.exists(join(out_dir, n))]
    if not found:
        return
    if not overwrite:
        raise OutputExists(
            f"output directory {out_dir} holds an earlier run ({', '.join(found)}); pass "
            "--overwrite to replace it, or choose another --output"
        )
    if FileSystems.exists(manifest):  # first: a half-removed run never looks complete
        FileSystems.delete([manifest])
    for name in OUTPUTS:
        if FileSystems.exists(join(out_dir, name)):
            FileSystems.delete([join(out_dir, name)])


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
    title = f"COCO shards -> {out_dir}  (split {manifest['options']['split']})"
    return "\n".join([title, "-" * max(len(line) for line in body), *body])


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> int:
    """Run the pipeline; returns the exit status (0 when the run completed)."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if args.help_beam:
        print_beam_help(PROG)  # exits
    if args.instances is None or args.images is None or args.output is None:
        parser.error("--instances, --images and --output are required")
    unknown = unknown_beam_args(beam_args)
    if unknown:
        print(
            f"error: unrecognized arguments: {' '.join(unknown)} (neither an option of this "
            "pipeline, see --help, nor a Beam pipeline option, see --help-beam)",
            file=sys.stderr,
        )
        return 2
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
        categories = check_instances(json.loads(read_bytes(args.instances)), args.instances)
        selection = select_classes(
            categories.values(),
            split=args.split,
            mask_classes=args.mask_classes,
            boxes_for=args.boxes_for,
        )
        prepare_output(args.output, overwrite=args.overwrite)
    except (OSError, CocoFormatError, OutputExists, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    about = {
        "alp_version": alp_version(),
        "options": build_options(args),
        "inputs": [{"path": matched[0].path, "size_bytes": size}],
        "classes": selection.to_json(),
    }
    options = PipelineOptions(beam_args)
    options.view_as(StandardOptions).runner = args.runner
    options.view_as(SetupOptions).save_main_session = save_main_session
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, args, categories, selection, about)
    state = pipeline.run().wait_until_finish()
    if state != PipelineState.DONE:
        print(f"error: the pipeline ended in state {state}", file=sys.stderr)
        return 1
    manifest = json.loads(read_bytes(join(args.output, MANIFEST_NAME)))
    print(format_summary(manifest, out_dir=args.output, seconds=time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    # Run the module imported under its package name, so that its DoFns and records pickle by
    # reference (pipelines.build_coco_shards.X) for worker processes, not as __main__.X.
    from pipelines import build_coco_shards

    sys.exit(build_coco_shards.run())
