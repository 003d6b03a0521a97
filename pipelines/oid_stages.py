"""The stages of `pipelines/build_oid_shards.py`: reading the three CSV files, building one
sample per image. Beam glue around `pipelines.oid`'s pure functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from PIL import Image

from alp_dataset.coco_shards import SAMPLE_INSTANCES
from alp_dataset.open_images import BOX_COLUMNS, IMAGE_LABEL_COLUMNS, SEGMENTATION_COLUMNS
from alp_dataset.schema import IMAGE_EXTENSIONS
from pipelines import manifest as m
from pipelines.io import is_file, join, open_raw
from pipelines.io import read_input as read_file_input
from pipelines.mask_files import MaskStore
from pipelines.oid import (
    NOT_SELECTED,
    ImageFile,
    MaskRow,
    OidDeadLetter,
    OidFormatError,
    OidSelection,
    build_sample,
    parse_row,
    read_header,
    read_rows,
    rejected_rows,
)

FILES = {  # dead-letter kind -> (flag, columns, manifest group)
    "mask_row": ("masks", SEGMENTATION_COLUMNS, "mask_rows"),
    "box_row": ("boxes", BOX_COLUMNS, "box_rows"),
    "label_row": ("labels", IMAGE_LABEL_COLUMNS, "label_rows"),
}
# Statistics (summed into the manifest; also Beam counters under namespace "alp"): "oid." +
# manifest group + "." + count ("oid.mask_rows.total"), "oid.dead." + reason.
DEAD = "oid.dead."

# ---------------------------------------------------------------------------------------------
# Reading the CSV files


def dead_stats(letters: Iterable[OidDeadLetter]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for letter in letters:
        counts[DEAD + letter.reason] += 1
        group = FILES[letter.kind][2] if letter.kind in FILES else "images"
        counts[f"oid.{group}.dead_letters"] += 1
    return counts


def read_text(path: str) -> str:
    try:
        return read_file_input(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OidFormatError(f"{path} is not UTF-8 text ({exc})") from None


class ReadCsvFn(beam.DoFn):
    """path -> rows (image id, record), dead letters, dead counts (image id, 1), stats.

    One worker reads the file (as the COCO job reads its instances file); the per-image work
    comes after the grouping. For the segmentation file it also lists the mask containers and
    looks up each row's file, so every file is accounted for in one place.
    """

    def __init__(self, kind: str, selection: OidSelection, store: MaskStore | None) -> None:
        self.kind = kind
        self.selection = selection
        self.store = store

    def process(self, path: str) -> Iterator[Any]:
        _, columns, group = FILES[self.kind]
        text = read_text(path)
        index, width = read_header(text, columns, path)
        stats: Counter[str] = Counter()
        listing = self.store.list() if self.store is not None else None
        seen: dict[str, int] = {}
        unselected: set[str] = set()
        for line, raw, cells in read_rows(text, path):
            stats[f"oid.{group}.total"] += 1
            parsed = parse_row(self.kind, line, raw, cells, index, width, self.selection)
            if parsed == NOT_SELECTED:
                stats[f"oid.{group}.not_selected"] += 1
                if self.kind == "mask_row":
                    unselected.add(cells[index["MaskPath"]].strip())
                continue
            if isinstance(parsed, MaskRow) and listing is not None:
                parsed = self._find(parsed, listing.members, seen)
            if isinstance(parsed, OidDeadLetter):
                stats.update(dead_stats([parsed]))
                yield pvalue.TaggedOutput("dead", parsed)
                if parsed.image_id and parsed.reason != "bad_image_id":
                    yield pvalue.TaggedOutput("dead_counts", (parsed.image_id, 1))
                continue
            yield pvalue.TaggedOutput("rows", (parsed.image_id, parsed))
        if listing is not None:
            members = set(listing.members)
            referenced = set(seen) & members
            not_selected = (unselected & members) - referenced
            stats["oid.mask_files.total"] = listing.total
            stats["oid.mask_files.referenced"] = len(referenced)
            stats["oid.mask_files.not_selected"] = len(not_selected)
            stats["oid.mask_files.unreferenced"] = len(members) - len(referenced | not_selected)
            stats["oid.mask_files.shadowed"] = listing.shadowed
        for name, n in sorted(stats.items()):
            yield m.stat(name, n)

    @staticmethod
    def _find(
        row: MaskRow, members: Mapping[str, tuple[int, str]], seen: dict[str, int]
    ) -> MaskRow | OidDeadLetter:
        def dead(reason: str, message: str) -> OidDeadLetter:
            return OidDeadLetter(
                "mask_row", row.line, row.image_id, reason, "MaskPath", message, row.raw
            )

        if row.mask_path in seen:
            return dead("duplicate_mask_path", f"line {seen[row.mask_path]} names this file")
        seen[row.mask_path] = row.line
        member = members.get(row.mask_path)
        if member is None:
            return dead("mask_missing", f"no {row.mask_path} in any --mask-dir")
        return replace(row, member=member)


class ReadCsv(beam.PTransform):
    def __init__(
        self, kind: str, path: str, selection: OidSelection, store: MaskStore | None = None
    ) -> None:
        super().__init__()
        self.path = path
        self.fn = ReadCsvFn(kind, selection, store)

    def expand(self, p: pvalue.PBegin) -> pvalue.DoOutputsTuple:
        return (
            p
            | "File" >> beam.Create([self.path])
            | "Rows" >> beam.ParDo(self.fn).with_outputs("rows", "dead", "dead_counts", m.STATS)
        )


# ---------------------------------------------------------------------------------------------
# One sample per image


@dataclass(frozen=True)
class OidSample:
    key: str
    instances_json: bytes
    image: tuple[str, str]  # (path, extension): read when the shard is written

    def members(self) -> dict[str, bytes]:
        return {SAMPLE_INSTANCES: self.instances_json}


def find_image(root: str, image_id: str) -> tuple[str, str] | None:
    """(path, extension) of <ImageID>.jpg, .jpeg or .png under ``root``, the first found."""
    for ext in IMAGE_EXTENSIONS:
        path = join(root, f"{image_id}.{ext}")
        if is_file(path):
            return path, ext
    return None


def image_size(path: str) -> tuple[int, int] | str:
    """(width, height) from the image file's header, or what is wrong with it."""
    try:
        with open_raw(path) as f, Image.open(f) as image:
            return image.size
    except Exception as exc:  # PIL raises several types for files that are no image
        return f"{path}: {type(exc).__name__}: {exc}"


class BuildSampleFn(beam.DoFn):
    """(image id, {masks, boxes, labels, dead_counts}) -> OidSample | dead letters, stats."""

    def __init__(
        self, images_root: str, selection: OidSelection, store: MaskStore, keep_empty: bool
    ) -> None:
        self.images_root = images_root
        self.selection = selection
        self.store = store
        self.keep_empty = keep_empty

    def teardown(self) -> None:
        self.store.close()

    def _reject(self, image_id: str, reason: str, message: str, rows: list[Any]) -> Iterator[Any]:
        image = OidDeadLetter("image", None, image_id, reason, "ImageID", message, image_id)
        letters = [image, *rejected_rows(image_id, f"image {image_id}: {reason}", rows)]
        yield from (pvalue.TaggedOutput("dead", letter) for letter in letters)
        for name, n in dead_stats(letters).items():
            yield m.stat(name, n)

    def process(self, element: tuple[str, Mapping[str, Iterable[Any]]]) -> Iterator[Any]:
        image_id, grouped = element
        masks, boxes, labels = (list(grouped[k]) for k in ("masks", "boxes", "labels"))
        if not (masks or boxes or labels):
            # Only rows rejected while reading name this id: no image of the run.
            return
        yield m.stat("oid.images.total")
        found = find_image(self.images_root, image_id)
        if found is None:
            message = f"no {image_id}.jpg, .jpeg or .png under {self.images_root}"
            yield from self._reject(image_id, "image_missing", message, masks + boxes + labels)
            return
        path, extension = found
        size = image_size(path)
        if isinstance(size, str):
            yield from self._reject(image_id, "image_unreadable", size, masks + boxes + labels)
            return
        outcome = build_sample(
            ImageFile(image_id, f"{image_id}.{extension}", *size),
            masks,
            boxes,
            labels,
            selection=self.selection,
            read_mask=lambda row: self.store.read(*row.member),
            keep_empty=self.keep_empty,
            earlier_dead=sum(grouped["dead_counts"]),
        )
        yield from (pvalue.TaggedOutput("dead", letter) for letter in outcome.dead_letters)
        for name, n in dead_stats(outcome.dead_letters).items():
            yield m.stat(name, n)
        c = outcome.counts
        for group, key in (("mask_rows", "mask"), ("box_rows", "box"), ("box_rows", "with_mask"),
                           ("box_rows", "group_of"), ("label_rows", "positive"),
                           ("label_rows", "negative")):  # fmt: skip
            yield m.stat(f"oid.{group}.{key}", c[key])
        if outcome.instances_json is None:
            yield m.stat("oid.images.without_instances")
            return
        yield OidSample(image_id, outcome.instances_json, (path, extension))
