"""Open Images annotations as pipeline records: row checks, class selection, one image's sample.

Pure functions, no Beam: `pipelines/build_oid_shards.py` wraps them in DoFns. Every input ends up
in exactly one place:

- a segmentation row: an instance with its mask, not selected (its class keeps no masks), or a
  dead letter;
- a box row: merged into the mask instance of the same image, class and box (the challenge's
  join of boxes and masks), a box-only instance, not selected, or a dead letter;
- an image-level label row: a positive or negative label of its image, not selected, or a dead
  letter (several rows may verify one label: Open Images has a row per verification source);
- an image (an ImageID of a kept row): a sample, an image without kept instances (counted), or a
  dead letter, whose rows then become ``image_rejected`` dead letters.

Reason codes and the sample layout: `alp_dataset.oid_shards`.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pycocotools import mask as mask_utils

from alp_dataset.class_splits import ClassSplit
from alp_dataset.coco_shards import (
    BOXES_FOR,
    MASK_CLASSES,
    SOURCE_BOX,
    SOURCE_MASK,
    RleError,
    instances_json_bytes,
)
from alp_dataset.oid_shards import (
    OID_SHARDS_FORMAT,
    OID_SHARDS_VERSION,
    box_norm_to_px,
    mask_png_to_rle,
)
from alp_dataset.open_images import LABEL_NAME_PATTERN, OidClass, csv_lines

NOT_SELECTED = "not_selected"
IMAGE_ID_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,64}")
BOX_FLAGS = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
BOX_TOLERANCE = 1e-6  # normalised coordinates may overshoot [0, 1] by rounding


class OidFormatError(ValueError):
    """An input file that is not the Open Images file it was given as (checked before any work)."""


def column_index(header: Sequence[str], columns: Sequence[str], source: str) -> dict[str, int]:
    """Column name -> cell index of a CSV header that holds every name of ``columns`` (other
    columns are allowed: v6's train boxes add XClick1X...); OidFormatError otherwise."""
    cells = [c.strip() for c in header]
    missing = [c for c in columns if c not in cells]
    if missing:
        raise OidFormatError(
            f"{source}: the header lacks {missing} (expected the columns {','.join(columns)}; "
            f"found {','.join(cells)[:200]})"
        )
    return {c: cells.index(c) for c in columns}


def read_header(text: str, columns: Sequence[str], source: str) -> tuple[dict[str, int], int]:
    """(column -> cell index, number of cells) of the first line of a CSV file's text."""
    first = next(iter(text.removeprefix("\ufeff").splitlines()), "")
    cells = next(csv.reader([first]), [])
    return column_index(cells, columns, source), len(cells)


@dataclass(frozen=True)
class KeptClass:
    category_id: int  # 1-based position in the --classes file
    label_name: str
    display_name: str
    source: str  # "mask" or "box"


@dataclass(frozen=True)
class OidSelection:
    """The classes of the --classes file that are kept (with masks or boxes only), and the rest."""

    kept: Mapping[str, KeptClass]  # label name -> class
    not_selected: tuple[str, ...]  # label names
    split_not_in_file: tuple[str, ...] = ()  # display names of the split missing from --classes

    def source_of(self, label_name: str) -> str | None:
        kept = self.kept.get(label_name)
        return kept.source if kept else None

    def to_json(self) -> dict[str, Any]:
        kept = sorted(self.kept.values(), key=lambda k: k.category_id)
        return {
            "kept": [
                {
                    "category_id": k.category_id,
                    "label_name": k.label_name,
                    "display_name": k.display_name,
                    "source": k.source,
                }
                for k in kept
            ],
            "mask": sorted(k.display_name for k in kept if k.source == SOURCE_MASK),
            "box_only": sorted(k.display_name for k in kept if k.source == SOURCE_BOX),
            "not_selected": sorted(self.not_selected),
            "split_not_in_file": sorted(self.split_not_in_file),
        }


def select_oid_classes(
    classes: Sequence[OidClass],
    split: ClassSplit | None,
    *,
    mids: Mapping[str, str] | None = None,
    mask_classes: str = "all",
    boxes_for: str = "all",
) -> OidSelection:
    """The classes of the file divided as --split, --mask-classes and --boxes-for ask.

    ``split`` None: every class of the file is a base class. Split classes are found by
    DisplayName; where the split gives a mid (``mids``), it must be the file's. Raises ValueError
    for an unknown choice, a mid that disagrees, or a selection that keeps no class.
    """
    if mask_classes not in MASK_CLASSES:
        raise ValueError(f"mask_classes {mask_classes!r}: expected one of {list(MASK_CLASSES)}")
    if boxes_for not in BOXES_FOR:
        raise ValueError(f"boxes_for {boxes_for!r}: expected one of {list(BOXES_FOR)}")
    names = {c.display_name for c in classes}
    if split is None:
        base, novel = names, set()
    else:
        base, novel = set(split.base), set(split.novel)
    for c in classes:
        mid = (mids or {}).get(c.display_name)
        if mid and mid != c.label_name:
            raise ValueError(
                f"class {c.display_name!r}: the split gives mid {mid}, --classes {c.label_name}"
            )
    masks = {"base": base, "novel": novel, "all": base | novel}[mask_classes] & names
    boxes = {"mask-classes": masks, "split-classes": base | novel, "all": names}[boxes_for]
    kept: dict[str, KeptClass] = {}
    not_selected = []
    for position, c in enumerate(classes, start=1):
        if c.display_name in masks:
            kept[c.label_name] = KeptClass(position, c.label_name, c.display_name, SOURCE_MASK)
        elif c.display_name in boxes:
            kept[c.label_name] = KeptClass(position, c.label_name, c.display_name, SOURCE_BOX)
        else:
            not_selected.append(c.label_name)
    if not kept:
        raise ValueError(
            f"--mask-classes {mask_classes} --boxes-for {boxes_for} keep no class of --classes "
            f"(split {split.name if split else 'all'})"
        )
    return OidSelection(kept, tuple(not_selected), tuple(sorted((base | novel) - names)))


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class OidDeadLetter:
    """A row or an image that became no instance, label or sample, and why."""

    kind: str  # alp_dataset.oid_shards.DEAD_LETTER_KINDS
    id: int | None  # line number of a row
    image_id: str | None
    reason: str
    field: str
    message: str
    raw: str

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "id", "image_id", "reason", "field",
                                              "message", "raw")}  # fmt: skip

    def sort_key(self) -> tuple[Any, ...]:
        return (self.kind, self.id is None, self.id or 0, self.reason, self.raw)

    def part_key(self) -> str:
        return f"{self.kind}\n{self.id}\n{self.raw}"


@dataclass(frozen=True)
class MaskRow:
    line: int
    image_id: str
    label_name: str
    mask_path: str
    box_norm: tuple[float, float, float, float]  # XMin, XMax, YMin, YMax
    box_id: str
    predicted_iou: float | None
    raw: str
    member: tuple[int, str] | None = None  # (container, member) of its file, once found


@dataclass(frozen=True)
class BoxRow:
    line: int
    image_id: str
    label_name: str
    box_norm: tuple[float, float, float, float]
    flags: Mapping[str, bool | None]  # BOX_FLAGS -> value (None: -1, unknown)
    raw: str

    @property
    def is_group_of(self) -> bool:
        return bool(self.flags["IsGroupOf"])


@dataclass(frozen=True)
class LabelRow:
    line: int
    image_id: str
    label_name: str
    positive: bool
    raw: str


Cells = Mapping[str, str]


class _Bad(Exception):
    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.field, self.message = reason, field, message


def _number(cells: Cells, name: str, *, optional: bool = False) -> float | None:
    text = cells[name]
    if optional and text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise _Bad("bad_row", name, f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise _Bad("bad_row", name, f"expected a finite number, got {text!r}")
    return value


def _box(cells: Cells, names: Sequence[str]) -> tuple[float, float, float, float]:
    x_min, x_max, y_min, y_max = (_number(cells, n) for n in names)
    for lo, hi, lo_name in ((x_min, x_max, names[0]), (y_min, y_max, names[2])):
        assert lo is not None and hi is not None
        if not (-BOX_TOLERANCE <= lo < hi <= 1 + BOX_TOLERANCE):
            raise _Bad("bad_box", lo_name, f"expected 0 <= min < max <= 1, got {lo:g}, {hi:g}")
    clip = [min(max(v, 0.0), 1.0) for v in (x_min, x_max, y_min, y_max)]  # type: ignore[type-var]
    return (clip[0], clip[1], clip[2], clip[3])


def _flag(cells: Cells, name: str) -> bool | None:
    text = cells[name]
    if text in ("0", "1"):
        return text == "1"
    if text in ("-1", ""):
        return None
    raise _Bad("bad_row", name, f"expected 0, 1 or -1, got {text!r}")


def _common(cells: Cells) -> None:
    if not IMAGE_ID_PATTERN.fullmatch(cells["ImageID"]):
        raise _Bad("bad_image_id", "ImageID", f"{cells['ImageID']!r} is not an image id")
    if not LABEL_NAME_PATTERN.fullmatch(cells["LabelName"]):
        raise _Bad("bad_row", "LabelName", f"{cells['LabelName']!r} is not a label id (/m/...)")


def parse_row(
    kind: str,
    line: int,
    raw: str,
    cells: Sequence[str],
    index: Mapping[str, int],
    width: int,
    selection: OidSelection,
) -> MaskRow | BoxRow | LabelRow | OidDeadLetter | str:
    """One row of a segmentation ("mask_row"), box ("box_row") or label ("label_row") file:
    its record, a dead letter, or NOT_SELECTED. ``index``: column -> cell index (of the
    header); ``width``: the header's number of cells."""
    values = {name: cells[i].strip() for name, i in index.items() if i < len(cells)}
    image_id = values.get("ImageID") or None

    def dead(reason: str, field: str, message: str) -> OidDeadLetter:
        return OidDeadLetter(kind, line, image_id, reason, field, message, raw)

    if len(cells) != width:
        return dead("bad_row", "", f"{len(cells)} cells, the header has {width}")
    try:
        _common(values)
        label = values["LabelName"]
        source = selection.source_of(label)
        if source is None or (kind == "mask_row" and source != SOURCE_MASK):
            return NOT_SELECTED
        assert image_id is not None
        if kind == "mask_row":
            path = values["MaskPath"]
            if not (path.lower().endswith(".png") and "/" not in path and "\\" not in path):
                raise _Bad("bad_row", "MaskPath", f"expected a .png file name, got {path!r}")
            box = _box(values, ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax"))
            iou = _number(values, "PredictedIoU", optional=True)
            return MaskRow(line, image_id, label, path, box, values["BoxID"], iou, raw)
        if kind == "box_row":
            box = _box(values, ("XMin", "XMax", "YMin", "YMax"))
            flags = {name: _flag(values, name) for name in BOX_FLAGS}
            return BoxRow(line, image_id, label, box, flags, raw)
        confidence = _number(values, "Confidence")
        if confidence not in (0.0, 1.0):
            raise _Bad(
                "bad_confidence",
                "Confidence",
                f"expected 0 or 1 (human-verified labels), got {values['Confidence']!r}",
            )
        return LabelRow(line, image_id, label, confidence == 1.0, raw)
    except _Bad as bad:
        return dead(bad.reason, bad.field, bad.message)


def read_rows(text: str, source: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, line, cells) of every row after the header (`csv_lines`); a line with an
    unbalanced quote comes back with no cells, to become a ``bad_row`` dead letter."""
    lines = iter(text.removeprefix("\ufeff").splitlines())
    next(lines, None)
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            (_, _, cells), *_ = csv_lines(line)
        except ValueError:
            cells = []
        yield number, line, cells


# ---------------------------------------------------------------------------------------------
# One image


@dataclass(frozen=True)
class ImageFile:
    image_id: str
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class ImageOutcome:
    """What one image became: its instances.json (or None), dead letters and counts."""

    instances_json: bytes | None
    dead_letters: Sequence[OidDeadLetter]
    counts: Mapping[str, int]  # "mask", "box", "with_mask", "group_of", "positive", "negative"


def rejected_rows(
    image_id: str, message: str, rows: Iterable[MaskRow | BoxRow | LabelRow]
) -> list[OidDeadLetter]:
    """``image_rejected`` dead letters for the kept rows of an image that became a dead letter."""
    kinds = {MaskRow: "mask_row", BoxRow: "box_row", LabelRow: "label_row"}
    return [
        OidDeadLetter(kinds[type(r)], r.line, image_id, "image_rejected", "ImageID", message, r.raw)
        for r in rows
    ]


def _merge_key(label: str, box: tuple[float, ...]) -> tuple[Any, ...]:
    return (label, *(round(v, 6) for v in box))


def _instance(
    kept: KeptClass, box_norm: tuple[float, float, float, float], image: ImageFile
) -> dict[str, Any]:
    x0, y0, x1, y1 = box_norm_to_px(box_norm, image.width, image.height)
    return {
        "category_id": kept.category_id,
        "class_name": kept.display_name,
        "label_name": kept.label_name,
        "box_xyxy_px": [x0, y0, x1, y1],
        "area": (x1 - x0) * (y1 - y0),
        "iscrowd": False,
        "is_group_of": False,
        "has_mask": False,
        "rle": None,
        "source": SOURCE_BOX,
        "box_id": None,
        "box_row": None,
        "predicted_iou": None,
        **{_flag_key(f): None for f in BOX_FLAGS if f != "IsGroupOf"},
    }


def _flag_key(flag: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", flag).lower()  # IsOccluded -> is_occluded


def _set_box_flags(instance: dict[str, Any], row: BoxRow) -> None:
    for flag in BOX_FLAGS:
        instance[_flag_key(flag)] = row.flags[flag]
    instance["is_group_of"] = instance["iscrowd"] = row.is_group_of


def build_sample(
    image: ImageFile,
    mask_rows: Iterable[MaskRow],
    box_rows: Iterable[BoxRow],
    label_rows: Iterable[LabelRow],
    *,
    selection: OidSelection,
    read_mask: Callable[[MaskRow], bytes],
    keep_empty: bool,
    earlier_dead: int = 0,
) -> ImageOutcome:
    """The sample of an image whose file was found (module doc for where each row goes).

    A mask row whose PNG cannot be read or is empty is a dead letter; a box row matching a mask
    instance (same class, same box to 6 decimals) adds its flags to it, the first match only.
    Without ``keep_empty`` an image left with no instance gives no sample (counted).
    ``earlier_dead``: rows of the image rejected while reading the files, counted with the
    masks that fail here in the sample's ``dead_annotations``.
    """
    counts = dict.fromkeys(("mask", "box", "with_mask", "group_of", "positive", "negative"), 0)
    dead: list[OidDeadLetter] = []
    masked: list[tuple[MaskRow, dict[str, Any]]] = []
    for row in sorted(mask_rows, key=lambda r: r.line):
        try:
            rle = mask_png_to_rle(read_mask(row), image.width, image.height)
        except RleError as exc:
            reason = "mask_unreadable" if exc.field == "file" else "empty_mask"
            message = f"{row.mask_path}: {exc.message}"
            dead.append(
                OidDeadLetter(
                    "mask_row", row.line, image.image_id, reason, "MaskPath", message, row.raw
                )
            )
            continue
        instance = _instance(selection.kept[row.label_name], row.box_norm, image)
        instance.update(
            area=float(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})),
            has_mask=True, rle=rle, source=SOURCE_MASK, box_id=row.box_id or None,
            predicted_iou=row.predicted_iou, csv="masks", row=row.line,
        )  # fmt: skip
        masked.append((row, instance))
    open_masks = {}
    for row, instance in masked:
        open_masks.setdefault(_merge_key(row.label_name, row.box_norm), []).append(instance)
    box_only = []
    for row in sorted(box_rows, key=lambda r: r.line):
        waiting = open_masks.get(_merge_key(row.label_name, row.box_norm))
        if waiting:
            instance = waiting.pop(0)
            _set_box_flags(instance, row)
            instance["box_row"] = row.line
            counts["with_mask"] += 1
        else:
            instance = _instance(selection.kept[row.label_name], row.box_norm, image)
            _set_box_flags(instance, row)
            instance.update(csv="boxes", row=row.line)
            box_only.append(instance)
            counts["box"] += 1
        counts["group_of"] += row.is_group_of
    instances = [i for _, i in masked] + box_only
    counts["mask"] = len(masked)
    for n, instance in enumerate(instances, start=1):
        instance["annotation_id"] = n
    positive, negative = set(), set()
    for row in label_rows:
        (positive if row.positive else negative).add(row.label_name)
        counts["positive" if row.positive else "negative"] += 1
    if not instances and not keep_empty:
        return ImageOutcome(None, dead, counts)
    document = {
        "format": OID_SHARDS_FORMAT,
        "schema_version": OID_SHARDS_VERSION,
        "image_id": image.image_id,
        "file_name": image.file_name,
        "width": image.width,
        "height": image.height,
        "instances": instances,
        # Open Images has a row per verification source: a label verified both ways is
        # taken as present (the box annotators found it).
        "image_labels": {"positive": sorted(positive), "negative": sorted(negative - positive)},
        "dead_annotations": earlier_dead + len(dead),
    }
    return ImageOutcome(instances_json_bytes(document), dead, counts)
