"""COCO instances as pipeline records: the file's checks, class selection, and one image's sample.

Pure functions, no Beam: `pipelines/build_coco_shards.py` wraps them in DoFns. An entry of the
instances file ends up in exactly one place:

- an image: a shard sample, an image without kept instances (counted), or a dead letter;
- an annotation: an instance of its image's sample (``"mask"`` or ``"box"``), not selected (its
  class is not kept; counted), or a dead letter.

Reason codes and the sample layout: `alp_dataset.coco_shards`.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alp_dataset.class_splits import get_coco_split
from alp_dataset.coco_shards import (
    BOXES_FOR,
    COCO_SHARDS_FORMAT,
    COCO_SHARDS_VERSION,
    MASK_CLASSES,
    SOURCE_BOX,
    SOURCE_MASK,
    SPLIT_ALL,
    RleError,
    coco_sample_key,
    instances_json_bytes,
    segmentation_to_rle,
)
from alp_dataset.schema import IMAGE_EXTENSIONS
from pipelines.input_kinds import COCO_INSTANCES, HEAD_BYTES, LOCNAR_JSONL, kind_of


class CocoFormatError(ValueError):
    """The instances file is not COCO instances JSON (checked before the pipeline starts)."""


def _locnar_instead(source: str) -> CocoFormatError:
    return CocoFormatError(
        f"{source} looks like {LOCNAR_JSONL} (one narrative per line), not {COCO_INSTANCES}: "
        f"curate it with pipelines/extract_alps.py --input {source}"
    )


def load_instances(data: bytes, source: str) -> Any:
    """The JSON document of an instances file's bytes; CocoFormatError naming ``source`` when
    they are not JSON, and saying so when they are Localized Narratives instead."""
    try:
        doc = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        if kind_of(data[:HEAD_BYTES]) == LOCNAR_JSONL:
            raise _locnar_instead(source) from None
        raise CocoFormatError(f"{source} is not JSON ({type(exc).__name__}: {exc})") from None
    # A one-line LocNar file is valid JSON: an object with a narrative's keys.
    if isinstance(doc, dict) and "images" not in doc and kind_of(data[:HEAD_BYTES]) == LOCNAR_JSONL:
        raise _locnar_instead(source)
    return doc


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _raw(entry: Any) -> str:
    return json.dumps(entry, sort_keys=True, ensure_ascii=False, allow_nan=True)


def check_instances(doc: Any, source: str) -> dict[int, str]:
    """The categories (id -> name) of a COCO instances document; CocoFormatError if it is none.

    Images and annotations are only checked to be lists here: a bad entry among them becomes a
    dead letter in the pipeline, while bad categories make every annotation meaningless.
    """
    if not isinstance(doc, dict):
        raise CocoFormatError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise CocoFormatError(f"{source}: {key!r} must be a list of objects")
    categories: dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        where = f"{source}: categories[{i}]"
        if not (isinstance(cat, dict) and _is_int(cat.get("id"))):
            raise CocoFormatError(f"{where}: expected an object with an int 'id'")
        name = cat.get("name")
        if not (isinstance(name, str) and name):
            raise CocoFormatError(f"{where}: expected a non-empty string 'name'")
        if cat["id"] in categories:
            raise CocoFormatError(f"{where}: id {cat['id']} repeats")
        if name in categories.values():
            raise CocoFormatError(f"{where}: name {name!r} repeats")
        categories[cat["id"]] = name
    if not categories:
        raise CocoFormatError(f"{source}: no categories")
    return categories


@dataclass(frozen=True)
class ClassSelection:
    """Which classes keep masks, which keep boxes only, and which are left out."""

    mask: frozenset[str]
    box_only: frozenset[str]
    not_selected: frozenset[str]
    split_not_in_file: tuple[str, ...] = ()  # classes of the split no category of the file has

    def source_of(self, class_name: str) -> str | None:
        """ "mask", "box", or None for a class that is not kept."""
        if class_name in self.mask:
            return SOURCE_MASK
        if class_name in self.box_only:
            return SOURCE_BOX
        return None

    def to_json(self) -> dict[str, list[str]]:
        return {
            "mask": sorted(self.mask),
            "box_only": sorted(self.box_only),
            "not_selected": sorted(self.not_selected),
            "split_not_in_file": sorted(self.split_not_in_file),
        }


def select_classes(
    names: Iterable[str],
    *,
    split: str | None = None,
    base: frozenset[str] | None = None,
    novel: frozenset[str] = frozenset(),
    mask_classes: str,
    boxes_for: str,
) -> ClassSelection:
    """The classes of the file (``names``) divided as --class-split (or --base-classes /
    --novel-classes), --mask-classes and --boxes-for ask.

    The split is either named, ``split`` (a split of `alp_dataset.class_splits`, or ``"all"``:
    every class of the file is a base class), or given by its classes, ``base`` and ``novel``
    (a custom split; no novel class when ``novel`` is empty). Classes of the split that no
    category of the file has are listed in ``split_not_in_file``. Raises ValueError for an unknown
    choice, for a split given both ways or neither, for novel classes without base classes, for
    a class that is both base and novel, or when no class of the file belongs to the split.
    """
    if mask_classes not in MASK_CLASSES:
        raise ValueError(f"mask_classes {mask_classes!r}: expected one of {list(MASK_CLASSES)}")
    if boxes_for not in BOXES_FOR:
        raise ValueError(f"boxes_for {boxes_for!r}: expected one of {list(BOXES_FOR)}")
    in_file = frozenset(names)
    if split is not None and (base is not None or novel):
        raise ValueError(f"split {split!r} and base / novel classes given together: choose one way")
    if split == SPLIT_ALL:
        base, novel = in_file, frozenset()
    elif split is not None:
        s = get_coco_split(split)  # a CSV of Open Images classes: its COCO classes
        base, novel = frozenset(s.base), frozenset(s.novel)
    elif not base:
        raise ValueError(
            "no split: expected a split name or at least one base class"
            + (f" (novel classes {sorted(novel)} need base classes)" if novel else "")
        )
    else:
        both = sorted(base & novel)
        if both:
            raise ValueError(f"classes {both} are both base and novel classes")
    what = f"split {split!r}" if split is not None else "the base and novel classes"
    split_classes = base | novel
    if not in_file & split_classes:
        raise ValueError(
            f"no category of the instances file is a class of {what} "
            f"(file: {sorted(in_file)[:5]}...; split: {sorted(split_classes)[:5]}...)"
        )
    wanted = {"base": base, "novel": novel, "all": split_classes}[mask_classes]
    mask = wanted & in_file
    boxes = {"mask-classes": mask, "split-classes": split_classes, "all": in_file}[boxes_for]
    box_only = (boxes & in_file) - mask
    if not mask | box_only:
        raise ValueError(
            f"--mask-classes {mask_classes} --boxes-for {boxes_for} keep no class of the file "
            f"in {what}"
        )
    return ClassSelection(
        mask=mask,
        box_only=box_only,
        not_selected=in_file - mask - box_only,
        split_not_in_file=tuple(sorted(split_classes - in_file)),
    )


@dataclass(frozen=True)
class ImageEntry:
    id: int
    file_name: str
    width: int
    height: int
    extension: str  # lower case, one of IMAGE_EXTENSIONS
    raw: str  # the entry as JSON, for dead letters

    @property
    def key(self) -> str:
        return coco_sample_key(self.id)


@dataclass(frozen=True)
class AnnotationEntry:
    id: int
    image_id: int
    category_id: int
    class_name: str
    source: str  # "mask" or "box"
    box_xyxy_px: tuple[float, float, float, float]
    area: float | None  # COCO's, when given
    iscrowd: bool
    segmentation: Any  # as in the file; converted only for "mask" instances
    raw: str


@dataclass(frozen=True)
class CocoDeadLetter:
    """An image or annotation entry that became no sample or instance, and why."""

    kind: str  # "image" or "annotation"
    id: int | None
    image_id: int | None
    reason: str
    field: str
    message: str
    raw: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "image_id": self.image_id,
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
            "raw": self.raw,
        }

    def sort_key(self) -> tuple[Any, ...]:
        return (self.kind, self.id is None, self.id or 0, self.reason, self.raw)

    def part_key(self) -> str:
        """What chooses the dead letter's file (hashed)."""
        return f"{self.kind}\n{self.id}\n{self.raw}"


NOT_SELECTED = "not_selected"  # the outcome of an annotation whose class is not kept


def _safe_file_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def parse_image(entry: Any) -> ImageEntry | CocoDeadLetter:
    """An ``images[i]`` entry, checked (not the file: that is `check_image_file`)."""
    raw = _raw(entry)
    image_id = entry.get("id") if isinstance(entry, dict) else None
    image_id = image_id if _is_int(image_id) else None

    def dead(reason: str, field: str, message: str) -> CocoDeadLetter:
        return CocoDeadLetter("image", image_id, image_id, reason, field, message, raw)

    if not isinstance(entry, dict):
        return dead("bad_image", "", f"expected an object, got {type(entry).__name__}")
    if image_id is None:
        return dead("bad_image", "id", f"expected an int, got {entry.get('id')!r}")
    name = entry.get("file_name")
    if not (isinstance(name, str) and name and _safe_file_name(name)):
        return dead("bad_image", "file_name", f"expected a relative path, got {name!r}")
    for key in ("width", "height"):
        v = entry.get(key)
        if not (_is_int(v) and v > 0):
            return dead("bad_image", key, f"expected a positive int, got {v!r}")
    extension = posixpath.splitext(name)[1][1:].lower()
    if extension not in IMAGE_EXTENSIONS:
        return dead(
            "unsupported_image_type",
            "file_name",
            f"{name!r}: expected one of {['.' + e for e in IMAGE_EXTENSIONS]}",
        )
    return ImageEntry(image_id, name, entry["width"], entry["height"], extension, raw)


def _box(bbox: Any, width: int, height: int) -> tuple[float, float, float, float] | str:
    """COCO [x, y, w, h] -> (x0, y0, x1, y1) clipped to the image, or what is wrong with it."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"expected 4 finite numbers [x, y, w, h], got {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        return f"width and height must be positive, got {bbox!r}"
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if not (x1 > x0 and y1 > y0):
        return f"{bbox!r} lies outside the {width} x {height} image"
    return (x0, y0, x1, y1)


def parse_annotation(
    entry: Any,
    *,
    images: Mapping[int, ImageEntry],
    rejected_images: frozenset[int] | set[int],
    categories: Mapping[int, str],
    selection: ClassSelection,
) -> AnnotationEntry | CocoDeadLetter | str:
    """An ``annotations[i]`` entry: an AnnotationEntry, a dead letter, or NOT_SELECTED.

    Only what a kept instance uses is checked, and the class first: an annotation of a class that
    is not kept is not selected whatever its box.
    """
    raw = _raw(entry)
    ann_id = entry.get("id") if isinstance(entry, dict) else None
    ann_id = ann_id if _is_int(ann_id) else None
    image_id = entry.get("image_id") if isinstance(entry, dict) else None
    image_id = image_id if _is_int(image_id) else None

    def dead(reason: str, field: str, message: str) -> CocoDeadLetter:
        return CocoDeadLetter("annotation", ann_id, image_id, reason, field, message, raw)

    if not isinstance(entry, dict):
        return dead("bad_annotation", "", f"expected an object, got {type(entry).__name__}")
    for key, value in (("id", ann_id), ("image_id", image_id)):
        if value is None:
            return dead("bad_annotation", key, f"expected an int, got {entry.get(key)!r}")
    category_id = entry.get("category_id")
    if not _is_int(category_id):
        return dead("bad_annotation", "category_id", f"expected an int, got {category_id!r}")
    if category_id not in categories:
        return dead("unknown_category", "category_id", f"no category has id {category_id}")
    class_name = categories[category_id]
    source = selection.source_of(class_name)
    if source is None:
        return NOT_SELECTED
    image = images.get(image_id)
    if image is None:
        if image_id in rejected_images:
            return dead("image_rejected", "image_id", f"image {image_id} is a dead letter")
        return dead("unknown_image", "image_id", f"no image has id {image_id}")
    box = _box(entry.get("bbox"), image.width, image.height)
    if isinstance(box, str):
        return dead("bad_box", "bbox", box)
    iscrowd = entry.get("iscrowd", 0)
    if iscrowd not in (0, 1) or isinstance(iscrowd, float):
        return dead("bad_annotation", "iscrowd", f"expected 0 or 1, got {iscrowd!r}")
    area = entry.get("area")
    if area is not None and not (_is_number(area) and area >= 0):
        return dead("bad_annotation", "area", f"expected a number >= 0, got {area!r}")
    return AnnotationEntry(
        id=ann_id,
        image_id=image_id,
        category_id=category_id,
        class_name=class_name,
        source=source,
        box_xyxy_px=box,
        area=None if area is None else float(area),
        iscrowd=bool(iscrowd),
        segmentation=entry.get("segmentation"),
        raw=raw,
    )


def split_entries(
    doc: Mapping[str, Any], categories: Mapping[int, str], selection: ClassSelection
) -> Iterator[tuple[str, Any]]:
    """Every entry of a checked instances document, in file order, as one of:

    ("image", ImageEntry), ("annotation", AnnotationEntry), ("dead", CocoDeadLetter) or
    ("not_selected", annotation). The first image entry with an id wins; later ones and every
    repeated annotation id are dead letters.
    """
    images: dict[int, ImageEntry] = {}
    rejected: set[int] = set()
    for entry in doc["images"]:
        parsed = parse_image(entry)
        if isinstance(parsed, ImageEntry) and parsed.id in images:
            parsed = CocoDeadLetter(
                "image",
                parsed.id,
                parsed.id,
                "duplicate_image_id",
                "id",
                f"image {parsed.id} appears more than once",
                parsed.raw,
            )
        if isinstance(parsed, ImageEntry):
            images[parsed.id] = parsed
            yield "image", parsed
        else:
            if parsed.id is not None and parsed.reason != "duplicate_image_id":
                rejected.add(parsed.id)
            yield "dead", parsed
    rejected -= set(images)
    seen: set[int] = set()
    for entry in doc["annotations"]:
        parsed = parse_annotation(
            entry,
            images=images,
            rejected_images=rejected,
            categories=categories,
            selection=selection,
        )
        if isinstance(parsed, AnnotationEntry):
            if parsed.id in seen:
                parsed = CocoDeadLetter(
                    "annotation",
                    parsed.id,
                    parsed.image_id,
                    "duplicate_annotation_id",
                    "id",
                    f"annotation {parsed.id} appears more than once",
                    parsed.raw,
                )
            else:
                seen.add(parsed.id)
        if isinstance(parsed, AnnotationEntry):
            yield "annotation", parsed
        elif isinstance(parsed, CocoDeadLetter):
            yield "dead", parsed
        else:
            yield NOT_SELECTED, entry


def rejected_annotations(
    image: ImageEntry, annotations: Iterable[AnnotationEntry]
) -> list[CocoDeadLetter]:
    """Dead letters for the wanted annotations of an image that became a dead letter."""
    return [
        CocoDeadLetter(
            "annotation",
            a.id,
            a.image_id,
            "image_rejected",
            "image_id",
            f"image {image.id} ({image.file_name}) is a dead letter",
            a.raw,
        )
        for a in annotations
    ]


def instance_json(ann: AnnotationEntry, image: ImageEntry) -> dict[str, Any]:
    """An instance of a sample's instances.json; RleError when a wanted mask cannot be made."""
    rle = None
    if ann.source == SOURCE_MASK:
        if ann.segmentation is None:
            raise RleError("segmentation", "missing: a mask is wanted for this class")
        rle = segmentation_to_rle(ann.segmentation, image.height, image.width)
    x0, y0, x1, y1 = ann.box_xyxy_px
    area = ann.area if ann.area is not None else (x1 - x0) * (y1 - y0)
    return {
        "annotation_id": ann.id,
        "category_id": ann.category_id,
        "class_name": ann.class_name,
        "box_xyxy_px": [x0, y0, x1, y1],
        "area": area,
        "iscrowd": ann.iscrowd,
        "has_mask": rle is not None,
        "rle": rle,
        "source": ann.source,
    }


@dataclass(frozen=True)
class ImageOutcome:
    """What one image became: a sample's instances.json (or None) and its dead letters."""

    instances_json: bytes | None
    instances: Sequence[dict[str, Any]]
    dead_letters: Sequence[CocoDeadLetter]


def build_sample(
    image: ImageEntry,
    annotations: Iterable[AnnotationEntry],
    *,
    keep_empty: bool,
    earlier_dead: int = 0,
) -> ImageOutcome:
    """The sample of an image whose file was found: its instances sorted by annotation id.

    An annotation whose mask cannot be made is a dead letter; the image keeps its other
    instances and counts its lost annotations (these and ``earlier_dead``, those rejected while
    reading the file) in ``dead_annotations``. Without ``keep_empty``, an image left with no
    instance gives no sample.
    """
    instances, dead = [], []
    for ann in sorted(annotations, key=lambda a: a.id):
        try:
            instances.append(instance_json(ann, image))
        except RleError as exc:
            dead.append(
                CocoDeadLetter(
                    "annotation",
                    ann.id,
                    ann.image_id,
                    "bad_segmentation",
                    exc.field,
                    exc.message,
                    ann.raw,
                )
            )
    if not instances and not keep_empty:
        return ImageOutcome(None, instances, dead)
    document = {
        "format": COCO_SHARDS_FORMAT,
        "schema_version": COCO_SHARDS_VERSION,
        "image_id": image.id,
        "file_name": image.file_name,
        "width": image.width,
        "height": image.height,
        "instances": instances,
        "dead_annotations": earlier_dead + len(dead),
    }
    return ImageOutcome(instances_json_bytes(document), instances, dead)
