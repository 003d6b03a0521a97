"""Look at a curation run: a text summary, or one image drawn with its traces and ALPs.

Usage::

    python -m alp_dataset.inspect OUT [--top N] [--bins B]
    python -m alp_dataset.inspect OUT --render IMAGE_ID --images ROOT --output x.png
        [--dataset-id D] [--narratives FILE.jsonl] [--ground-truth instances.json]

The summary gives the manifest's counts (input lines, dead letters and records by reason, ALPs,
unique phrases), the most frequent phrases and a text histogram of ALP box areas. ``--render``
draws the image with each narrative's mouse trace, each ALP box and its phrase, and, with
``--ground-truth`` (COCO instances JSON), the ground-truth boxes and masks (``alp_dataset.render``).
Traces are read from the narrative files the ALP table names (``source_file``, ``source_line``),
or from ``--narratives``. A relative ``source_file`` is relative to the folder the run was
started in, which is not recorded: it is looked up from the working directory, then from the
output directory (where manifest.json is) and each folder above it, so ``--render`` works from
any folder when the narratives stayed beside the output. When a file is found nowhere, the
command fails, naming the paths it tried and ``--narratives``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl
from PIL import Image

from alp_curation import flags
from alp_curation.streams import open_checked
from alp_dataset.coco_shards import RleError, decode_masks, segmentation_to_rle
from alp_dataset.query import AlpStore, alps_of_image, phrase_frequencies
from alp_dataset.render import AlpBox, GtInstance, Trace, render_alps
from alp_dataset.schema import IMAGE_EXTENSIONS

__all__ = [
    "area_histogram",
    "find_image_file",
    "format_histogram",
    "load_ground_truth",
    "load_traces",
    "main",
    "render_image",
    "summary",
]

BAR = "▇"


class InspectError(ValueError):
    """A request the run cannot answer (unknown image, missing file); the message says why."""


# ---------------------------------------------------------------------------------------------
# Summary


def area_histogram(store: AlpStore, bins: int = 10) -> pl.DataFrame:
    """ALP box areas (fraction of the image area) in ``bins`` equal bins over [0, 1].

    Returns lo, hi, n_alps for every bin (empty bins included); the last bin holds area 1.
    """
    if bins < 1:
        raise ValueError(f"area_histogram: bins must be >= 1, got {bins}")
    box = pl.col("box_xyxy_norm")
    area = (box.arr.get(2) - box.arr.get(0)) * (box.arr.get(3) - box.arr.get(1))
    counts = (
        store.alps.select((area * bins).floor().clip(0, bins - 1).cast(pl.Int64).alias("bin"))
        .group_by("bin")
        .agg(pl.len().cast(pl.Int64).alias("n_alps"))
        .collect()
    )
    every_bin = pl.DataFrame({"bin": np.arange(bins, dtype=np.int64)})
    return (
        every_bin.join(counts, on="bin", how="left")
        .with_columns(
            (pl.col("bin") / bins).alias("lo"),
            ((pl.col("bin") + 1) / bins).alias("hi"),
            pl.col("n_alps").fill_null(0),
        )
        .select("lo", "hi", "n_alps")
    )


def format_histogram(histogram: pl.DataFrame, width: int = 40) -> list[str]:
    """One line per bin: ``[0.1, 0.2)  ▇▇▇▇▇▇▇  52``; bars scaled so the largest is ``width``."""
    top = max(1, int(histogram["n_alps"].max() or 0))
    lines = []
    rows = histogram.rows(named=True)
    for i, row in enumerate(rows):
        close = "]" if i == len(rows) - 1 else ")"
        n = int(row["n_alps"])
        bar = BAR * math.ceil(width * n / top) if n else ""
        lines.append(
            f"  [{row['lo']:.2f}, {row['hi']:.2f}{close}  {bar:<{width}}  {n:>{len(str(top))}}"
        )
    return lines


def _reasons(by_reason: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1]) if v)


def summary(store: AlpStore, *, top: int = 10, bins: int = 10) -> str:
    """The text the command prints for a run: counts, top phrases, box area histogram."""
    m = store.manifest
    c = m["counts"]
    files = m["files"]
    records = c["records"]
    rows: list[tuple[str, Any, str]] = [
        ("input lines", c["input_lines"], f"{len(m.get('inputs', []))} file(s)"),
        ("dead letters", c["dead_letters"]["total"], _reasons(c["dead_letters"]["by_reason"])),
        ("records", records["total"], ""),
        ("  with ALPs", records["with_alps"], ""),
        (
            "  without ALPs",
            records["without_alps"]["total"],
            _reasons(records["without_alps"]["by_reason"]),
        ),
        ("ALPs", c["alps"], f"in {c['shards']['samples']} image(s), {len(files['alps'])} file(s)"),
        (
            "phrases not kept",
            c["phrases_dropped"]["total"],
            _reasons(c["phrases_dropped"]["by_reason"]),
        ),
        ("unique phrases", c["unique_phrases"], f"{len(files['phrases'])} file(s)"),
        ("shard samples", c["shards"]["samples"], f"{len(files['shards'])} shard(s)"),
    ]
    tagger = m.get("tagger", {}).get("resolved", "?")
    out = [
        f"ALP run {store.root}",
        f"  schema {m['schema_version']} (alp {m.get('alp_version', '?')}), tagger {tagger}, "
        f"t_p {store.temporal_padding:g} s",
        f"  encoder {store.encoder_id}, {store.embedding_dim}-d",
        "",
    ]
    width = max(len(str(v)) for _, v, _ in rows)
    out += [f"{name:<18}{value:>{width}}   {note}".rstrip() for name, value, note in rows]

    frequent = phrase_frequencies(store).head(top).collect()
    out += ["", f"top {frequent.height} phrases"]
    if frequent.height:
        name_width = max(24, *(len(p) for p in frequent["phrase"]))
        out.append(f"  {'phrase':<{name_width}}  {'ALPs':>7}  {'images':>7}")
        out += [
            f"  {row['phrase']:<{name_width}}  {row['n_alps']:>7}  {row['n_images']:>7}"
            for row in frequent.rows(named=True)
        ]
    out += ["", f"box area (fraction of the image area), {c['alps']} ALPs"]
    out += format_histogram(area_histogram(store, bins))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Reading what a picture needs


def find_image_file(root: Path, dataset_id: str, image_id: str) -> Path:
    """``ROOT/<dataset_id>/<image_id>.<ext>`` or ``ROOT/<image_id>.<ext>``, as the shards look."""
    tried = [
        folder / f"{image_id}.{ext}"
        for folder in (root / dataset_id, root)
        for ext in IMAGE_EXTENSIONS
    ]
    for path in tried:
        if path.is_file():
            return path
    raise InspectError(
        f"no image file for {dataset_id}/{image_id} under {root}; tried "
        + ", ".join(str(p) for p in tried)
    )


def _open_binary(path: Path) -> IO[bytes]:
    """A narratives file as the pipeline reads it: decompressed by extension and checked
    (a damaged stream raises `alp_curation.streams.StreamDamaged`, a ValueError)."""
    return io.BufferedReader(open_checked(path.open("rb"), str(path)))  # type: ignore[arg-type]


def _line_at(path: Path, number: int) -> bytes | None:
    """Line ``number`` (1-based) of a text file, .gz and the like read as such; None past its
    end."""
    with _open_binary(path) as f:
        return next(itertools.islice(f, number - 1, number), None)


def _trace_of(line: bytes, where: str) -> tuple[Trace | None, str | None]:
    """(trace, None) for a narrative line with a trace, else (None, why not)."""
    from alp_curation.locnar import InvalidRecord, parse_record

    try:
        record = parse_record(line)
    except InvalidRecord as exc:
        return None, f"{where}: not a valid narrative ({exc})"
    if not record.traces:
        return None, f"{where}: narrative {record.key} has no trace"
    segments = tuple((s.x, s.y, s.t) for s in record.traces)
    return Trace(annotator_id=record.annotator_id, segments=segments), None


def _record_key(line: bytes) -> tuple[Any, Any, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    return obj.get("dataset_id"), obj.get("image_id"), obj.get("annotator_id")


def locate_source(
    source_file: str, search_roots: Sequence[Path] = ()
) -> tuple[Path | None, list[Path]]:
    """(the file, the paths tried) for an ALP's ``source_file``: as it is (absolute, or from
    the working directory), then under each of ``search_roots`` when relative; (None, tried)
    when none is a file."""
    path = Path(source_file)
    tried = [path]
    if not path.is_absolute():
        tried += [root / path for root in search_roots]
    tried = list(dict.fromkeys(tried))
    for candidate in tried:
        if candidate.is_file():
            return candidate, tried
    return None, tried


def load_traces(
    alps: pl.DataFrame, narratives: Path | None = None, search_roots: Sequence[Path] = ()
) -> tuple[list[Trace], list[str]]:
    """Traces of the narratives behind ``alps`` (rows of one image): (traces, notes).

    From ``narratives`` when given (every narrative of the image there), else from each ALP's
    ``source_file`` at ``source_line``, found by `locate_source` (``search_roots``: where a
    relative path is looked up after the working directory). A source file found nowhere is an
    InspectError naming the paths tried and ``--narratives``; a line that is not the narrative
    the ALP names, or has no valid trace, gives a note instead of a trace.
    """
    dataset_id, image_id = alps["dataset_id"][0], alps["image_id"][0]
    found: list[tuple[Trace | None, str | None]] = []
    if narratives is not None:
        needle = json.dumps(image_id).encode()
        with _open_binary(narratives) as f:
            for number, line in enumerate(f, start=1):
                # A substring test first: almost every line is about another image.
                if needle not in line:
                    continue
                key = _record_key(line)
                if key is not None and key[:2] == (dataset_id, image_id):
                    found.append(_trace_of(line, f"{narratives}:{number}"))
        if not found:
            found.append((None, f"no narrative of {dataset_id}/{image_id} in {narratives}"))
    else:
        sources = alps.select("annotator_id", "source_file", "source_line").unique(
            maintain_order=True
        )
        located = {
            name: locate_source(name, search_roots) for name in sources["source_file"].unique()
        }
        lost = {name: tried for name, (path, tried) in sorted(located.items()) if path is None}
        if lost:
            listed = "; ".join(
                f"{name} (tried {', '.join(str(p) for p in tried)})" for name, tried in lost.items()
            )
            raise InspectError(
                f"the narratives of {dataset_id}/{image_id} cannot be found: {listed}. Give the "
                "narratives file with --narratives FILE.jsonl"
            )
        for annotator_id, source_file, source_line in sources.iter_rows():
            where = f"trace of annotator {annotator_id}: {source_file}:{source_line}"
            path = located[source_file][0]
            assert path is not None  # every lost file raised above
            line = _line_at(path, source_line)
            if line is None:
                found.append((None, f"{where}: no such line"))
            elif _record_key(line) != (dataset_id, image_id, annotator_id):
                found.append((None, f"{where}: holds another narrative"))
            else:
                found.append(_trace_of(line, where))
    traces = [trace for trace, _ in found if trace is not None]
    notes = [note for _, note in found if note is not None]
    return traces, notes


def _coco_image(instances: Mapping[str, Any], image_id: str) -> Mapping[str, Any] | None:
    """The COCO image entry of a LocNar image id: by file name stem, else by numeric id."""
    for entry in instances.get("images", []):
        if Path(entry.get("file_name", "")).stem == image_id:
            return entry
    if image_id.isdigit():
        for entry in instances.get("images", []):
            if entry.get("id") == int(image_id):
                return entry
    return None


def _decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """The (H, W) mask of a COCO segmentation, checked as the shards check it before
    pycocotools sees it (which writes past its buffer for runs that do not cover the image);
    None for none, or one that gives no valid mask."""
    if not segmentation:
        return None
    try:
        rle = segmentation_to_rle(segmentation, height, width)
    except RleError:
        return None
    return np.ascontiguousarray(decode_masks([rle], height, width)[0])  # (H, W)


def load_ground_truth(path: Path, image_id: str) -> tuple[list[GtInstance], list[str]]:
    """GT instances of ``image_id`` in a COCO instances file: (instances, notes)."""
    instances = json.loads(path.read_text(encoding="utf-8"))
    entry = _coco_image(instances, image_id)
    if entry is None:
        return [], [f"no image {image_id} in {path}"]
    names = {c["id"]: c["name"] for c in instances.get("categories", [])}
    out = []
    for ann in instances.get("annotations", []):
        if ann.get("image_id") != entry["id"]:
            continue
        x, y, w, h = ann["bbox"]
        mask = _decode_mask(ann.get("segmentation"), entry["height"], entry["width"])
        name = names.get(ann["category_id"], str(ann["category_id"]))
        out.append(GtInstance(name=name, box_xyxy_px=(x, y, x + w, y + h), mask=mask))
    return out, []


def _image_rows(store: AlpStore, image_id: str, dataset_id: str | None) -> pl.DataFrame:
    """The ALP rows of one image; InspectError naming a few images that have ALPs when none."""
    alps = alps_of_image(store, image_id, dataset_id).collect()
    if alps.height == 0:
        images = store.alps.select("dataset_id", "image_id").unique()
        n_images = images.select(pl.len()).collect().item()
        examples = images.sort("dataset_id", "image_id").head(5).collect()
        shown = ", ".join(f"{image} (dataset {d})" for d, image in examples.iter_rows())
        where = f" of dataset {dataset_id!r}" if dataset_id is not None else ""
        raise InspectError(
            f"image {image_id!r}{where} has no ALP in {store.root}; {n_images} image(s) have, "
            f"e.g. {shown}"
        )
    datasets = alps["dataset_id"].unique().sort().to_list()
    if len(datasets) > 1:
        raise InspectError(
            f"image {image_id!r} is in several datasets of this run ({', '.join(datasets)}); "
            "choose one with --dataset-id"
        )
    return alps


def render_image(
    store: AlpStore,
    image_id: str,
    *,
    images: Path | None,
    dataset_id: str | None = None,
    narratives: Path | None = None,
    ground_truth: Path | None = None,
    image_size: int = 768,
) -> Image.Image:
    """The picture of one image of the run (see ``alp_dataset.render.render_alps``)."""
    rows = _image_rows(store, image_id, dataset_id)
    dataset_id = rows["dataset_id"][0]
    notes: list[str] = []
    gt: list[GtInstance] = []
    if ground_truth is not None:
        gt, gt_notes = load_ground_truth(ground_truth, image_id)
        notes += gt_notes
    if images is not None:
        image = Image.open(find_image_file(images, dataset_id, image_id))
        image.load()
    else:
        height, width = gt[0].mask.shape if gt and gt[0].mask is not None else (512, 512)
        image = Image.new("RGB", (width, height), (96, 96, 96))
        notes.append("no image drawn: --images not given")
    output = Path(store.root).resolve()  # where manifest.json is
    traces, trace_notes = load_traces(rows, narratives, [output, *output.parents])
    notes += trace_notes
    alps = [
        AlpBox(
            annotator_id=r["annotator_id"],
            alp_index=r["alp_index"],
            phrase=r["phrase"],
            box_xyxy_norm=tuple(r["box_xyxy_norm"]),
            t_start=r["t_start"],
            t_end=r["t_end"],
            n_points=r["n_points"],
        )
        for r in rows.rows(named=True)
    ]
    n_narratives = rows.select("annotator_id", "source_file", "source_line").n_unique()
    title = f"{dataset_id}/{image_id}: {len(alps)} ALP(s) from {n_narratives} narrative(s)"
    return render_alps(
        image,
        alps,
        traces=traces,
        temporal_padding=store.temporal_padding,
        ground_truth=gt,
        title=title,
        notes=notes,
        size=image_size,
    )


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m alp_dataset.inspect",
        description="Summarise a curation run's output directory, or draw one of its images with "
        "its mouse traces, ALP boxes and phrases.",
        formatter_class=flags.HelpFormatter,
    )
    parser.add_argument("dir", metavar="DIR", help="output directory of pipelines/extract_alps.py")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="phrases listed")
    parser.add_argument("--bins", type=int, default=10, metavar="B", help="histogram bins")
    draw = parser.add_argument_group("drawing one image")
    draw.add_argument("--render", metavar="IMAGE_ID", help="draw this image instead of summarising")
    draw.add_argument(
        "--images",
        type=Path,
        metavar="ROOT",
        help="image folder, as the pipeline's --images: ROOT/<dataset_id>/<image_id>.<ext> or "
        "ROOT/<image_id>.<ext>",
    )
    draw.add_argument("--output", type=Path, metavar="PNG", help="where to write the picture")
    draw.add_argument("--dataset-id", metavar="D", help="dataset of the image, when ids repeat")
    draw.add_argument(
        "--narratives",
        type=Path,
        metavar="FILE",
        help="LocNar JSONL(.gz) to read traces from; default: the files the ALPs name, looked "
        "up from the working directory, then from DIR and each folder above it",
    )
    draw.add_argument(
        "--ground-truth",
        type=Path,
        metavar="JSON",
        help="COCO instances JSON: draw GT boxes and masks",
    )
    draw.add_argument(
        "--image-size", type=int, default=768, metavar="PX", help="long side of the drawn image"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = flags.parse_args(parser, argv)
    if args.render is None and args.output is not None:
        parser.error("--output needs --render IMAGE_ID")
    if args.render is not None and args.output is None:
        parser.error("--render needs --output x.png")
    try:
        store = AlpStore.open(args.dir)
        if args.render is None:
            print(summary(store, top=args.top, bins=args.bins))
            return 0
        picture = render_image(
            store,
            args.render,
            images=args.images,
            dataset_id=args.dataset_id,
            narratives=args.narratives,
            ground_truth=args.ground_truth,
            image_size=args.image_size,
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        picture.save(args.output)
    except (InspectError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({picture.width}x{picture.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
