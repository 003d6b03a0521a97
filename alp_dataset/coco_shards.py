"""COCO instance shards: the layout `pipelines/build_coco_shards.py` writes and
`alp_dataset.datasets.CocoShardDataset` reads, and the RLE functions both sides share.

Output directory of one run (documented field by field in ``docs/coco_shards.md``)::

    shards/shard-NNNNNN.tar                   WebDataset, one sample per image with an instance
    dead_letters/part-NNNNN-of-MMMMM.jsonl    DEAD_LETTER_FIELDS, one line per rejected entry
    manifest.json                             MANIFEST_KEYS; written last

Members of a sample: ``<key>.instances.json`` (SAMPLE_FIELDS, instances INSTANCE_FIELDS), then
``<key>.<jpg|jpeg|png>``, the image file's bytes. The key is the COCO image id, zero-padded to 12
digits as COCO's file names are, so that sorting keys sorts ids.

Masks are COCO run-length encodings with ``counts`` as a string (pycocotools' compressed form,
JSON-safe). pycocotools decodes an RLE without checking that its runs add up to the image, and
writes past its buffer when they do not; so every RLE that comes from a file goes through
`rle_counts`, a Python reading of the same format, before pycocotools sees it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from alp_dataset.schema import DEAD_LETTERS_DIR, MANIFEST_NAME, SHARDS_DIR

__all__ = [
    "BOXES_FOR",
    "COCO_SHARDS_FORMAT",
    "COCO_SHARDS_VERSION",
    "DEAD_LETTERS_DIR",
    "DEAD_LETTER_FIELDS",
    "DEAD_LETTER_REASONS",
    "INSTANCE_FIELDS",
    "MANIFEST_KEYS",
    "MANIFEST_NAME",
    "MASK_CLASSES",
    "SAMPLE_FIELDS",
    "SAMPLE_INSTANCES",
    "SHARDS_DIR",
    "SOURCE_BOX",
    "SOURCE_MASK",
    "SPLIT_ALL",
    "RleError",
    "coco_sample_key",
    "decode_masks",
    "encode_mask",
    "instances_json_bytes",
    "manifest_problems",
    "rle_counts",
    "segmentation_to_rle",
]

COCO_SHARDS_FORMAT = "alp.coco_shards"
POLYGON_MARGIN = 1.0  # polygon coordinates may lie this many image sizes outside the image
COCO_SHARDS_VERSION = "1.0"

SAMPLE_INSTANCES = "instances.json"  # member extension: <key>.instances.json

SOURCE_MASK = "mask"  # the instance has its mask
SOURCE_BOX = "box"  # box only (MaskX R-CNN's classes without masks)

SPLIT_ALL = "all"  # --split all: every category of the file is a base class
MASK_CLASSES = ("base", "novel", "all")  # --mask-classes: which part of the split keeps masks
# --boxes-for: which instances are kept at all. "mask-classes": only those with masks (the ALP
# paper's COCO side, novel classes come from ALPs); "split-classes": boxes for every class of the
# split (MaskX R-CNN: boxes for A ∪ B, masks for A); "all": every category of the file.
BOXES_FOR = ("mask-classes", "split-classes", "all")

SAMPLE_FIELDS: Mapping[str, str] = {
    "format": f'"{COCO_SHARDS_FORMAT}"',
    "schema_version": "COCO_SHARDS_VERSION",
    "image_id": "COCO image id (int)",
    "file_name": "the image's file_name in the instances file",
    "width": "image width in pixels, as the instances file says (the image's header agrees)",
    "height": "image height in pixels",
    "instances": "kept instances (INSTANCE_FIELDS), sorted by annotation_id",
    "dead_annotations": "annotations of this image that became dead letters (0 for a clean image)",
}

INSTANCE_FIELDS: Mapping[str, str] = {
    "annotation_id": "COCO annotation id (int)",
    "category_id": "COCO category id (int)",
    "class_name": "the category's name",
    "box_xyxy_px": "(x0, y0, x1, y1) in pixels from COCO's [x, y, w, h], clipped to the image",
    "area": "COCO's area (mask pixels; box area for a box without one)",
    "iscrowd": "COCO's iscrowd, as a bool",
    "has_mask": "whether rle holds the instance's mask",
    "rle": "{size: [height, width], counts: str}: compressed COCO RLE, or null",
    "source": f'"{SOURCE_MASK}" (has its mask) or "{SOURCE_BOX}" (box only)',
}

DEAD_LETTER_FIELDS: Mapping[str, str] = {
    "kind": '"image" or "annotation"',
    "id": "the entry's id, or null when it has none that is an int",
    "image_id": "the image the entry belongs to (an image's own id), or null",
    "reason": "reason code (DEAD_LETTER_REASONS)",
    "field": 'path of the offending field ("bbox[2]"); "" for the whole entry',
    "message": "what was found and what was expected",
    "raw": "the entry as JSON (sorted keys)",
}

DEAD_LETTER_REASONS: Mapping[str, str] = {
    # images
    "bad_image": "not an object, or id / file_name / width / height missing or of a wrong type",
    "duplicate_image_id": "an earlier image entry has this id",
    "unsupported_image_type": "file_name does not end in .jpg, .jpeg or .png",
    "image_missing": "no file at --images/<file_name>",
    "image_unreadable": "the file is not an image PIL can read",
    "image_size_mismatch": "the file's width and height differ from the entry's",
    # annotations
    "bad_annotation": "not an object, or a field missing or of a wrong type",
    "duplicate_annotation_id": "an earlier annotation has this id",
    "unknown_image": "image_id names no image of the file",
    "unknown_category": "category_id names no category of the file",
    "bad_box": "bbox not 4 finite numbers with positive width and height inside the image",
    "bad_segmentation": "a mask was wanted but the segmentation gives none (see message)",
    "image_rejected": "the annotation was wanted but its image became a dead letter",
}

MANIFEST_KEYS: Mapping[str, str] = {
    "format": f'"{COCO_SHARDS_FORMAT}"',
    "schema_version": "COCO_SHARDS_VERSION",
    "alp_version": "version of the alp package that wrote the run",
    "options": "the options that, with the input files, determine the output",
    "inputs": "{path, size_bytes} of the instances file",
    "classes": "{mask, box_only, not_selected, split_not_in_file}: class names, sorted",
    "counts": "images, annotations, dead letters; see manifest_problems for their identities",
    "files": "{shards, dead_letters}: lists of {path (relative), rows}",
}


class RleError(ValueError):
    """A segmentation or RLE that gives no valid mask; ``field`` names where, as in dead letters."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def coco_sample_key(image_id: int) -> str:
    """The sample key of a COCO image: its id zero-padded to 12 digits ("000000000139")."""
    return f"{image_id:012d}"


def rle_counts(counts: str) -> np.ndarray:
    """The runs (int64) of a compressed COCO RLE string: pycocotools' ``rleFrString``, checked.

    Each run is a group of 5-bit digits (chars offset by 48, low digit first, bit 0x20 = more
    digits follow, bit 0x10 of the last digit = negative); from the fourth run on, the value is a
    difference to the run two before. Vectorised: about 20 us for a COCO mask, against pycocotools'
    own reading, which has no checks. Raises RleError for a character outside the alphabet, a
    run cut short or too long, or a negative run.
    """
    try:
        digits = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise RleError("counts", "non-ASCII character") from None
    if digits.size == 0:
        return np.zeros(0, dtype=np.int64)
    if digits.min() < 0 or digits.max() >= 64:
        raise RleError("counts", "a character outside the RLE alphabet ('0' to 'o')")
    more = (digits & 0x20) != 0
    if more[-1]:
        raise RleError("counts", "ends inside a run")
    ends = np.flatnonzero(~more)  # last digit of each run
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 7:  # 35 bits: more than any image holds
        raise RleError("counts", "a run of more than 7 digits")
    position = np.arange(digits.size) - np.repeat(starts, lengths)  # digit index in its run
    values = np.bitwise_or.reduceat((digits & 0x1F) << (5 * position), starts)
    negative = (digits[ends] & 0x10) != 0
    values[negative] |= -1 << (5 * lengths[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # run i (i >= 3) adds run i - 2
    runs[2::2] = np.cumsum(values[2::2])
    if runs.min() < 0:
        raise RleError("counts", f"run {int(np.argmax(runs < 0))} is negative")
    return runs


def _check_size(size: Any, height: int, width: int, field: str) -> None:
    if list(size) != [height, width]:
        raise RleError(
            field, f"size {size} differs from the image's [height, width] {[height, width]}"
        )


def _compressed(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A COCO ``segmentation`` as one compressed RLE ``{size, counts: str}``.

    Accepts the three COCO forms: polygons (a list of flat [x0, y0, x1, y1, ...] lists; polygons
    of fewer than 3 points are left out, as detectron2 does, and the rest merged), uncompressed
    RLE (``counts`` a list of ints, crowd annotations) and compressed RLE (``counts`` a string).
    Polygon coordinates may lie up to one image size outside the image (`POLYGON_MARGIN`):
    pycocotools draws every edge point by point at 5x, so a coordinate of 1e8 costs it gigabytes
    and 1e9 crashes the process. Raises RleError (with the offending field) when no valid,
    non-empty mask results.
    """
    if isinstance(segmentation, list):
        polygons = []
        for i, poly in enumerate(segmentation):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                raise RleError(f"segmentation[{i}]", "expected a list of finite numbers")
            if len(poly) % 2:
                raise RleError(f"segmentation[{i}]", f"odd number of coordinates ({len(poly)})")
            for axis, size in (("x", width), ("y", height)):
                values = poly[0::2] if axis == "x" else poly[1::2]
                low, high = -POLYGON_MARGIN * size, (1 + POLYGON_MARGIN) * size
                if values and not low <= min(values) <= max(values) <= high:
                    raise RleError(
                        f"segmentation[{i}]",
                        f"{axis} coordinates span [{min(values):g}, {max(values):g}], beyond "
                        f"[{low:g}, {high:g}] (the image is {width} x {height})",
                    )
            if len(poly) >= 6:
                polygons.append([float(v) for v in poly])
        if not polygons:
            raise RleError("segmentation", "no polygon with 3 or more points")
        # frPyObjects reads a first polygon of exactly 4 numbers as a box: never one here.
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
            raise RleError("segmentation.size", f"expected [height, width] ints, got {size!r}")
        _check_size(size, height, width, "segmentation.size")
        if isinstance(counts, list):
            if not all(type(v) is int and v >= 0 for v in counts):
                raise RleError("segmentation.counts", "expected non-negative ints")
            runs = counts
        elif isinstance(counts, str):
            try:
                runs = rle_counts(counts)
            except RleError as exc:
                raise RleError("segmentation.counts", exc.message) from None
        else:
            raise RleError("segmentation.counts", f"expected a list or a string, got {counts!r}")
        covered = int(np.sum(runs))
        if covered != height * width:
            raise RleError(
                "segmentation.counts", f"runs cover {covered} pixels, the image {height * width}"
            )
        if isinstance(counts, list):  # checked first: pycocotools trusts the runs
            rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        else:
            rle = {"size": size, "counts": counts}
    else:
        raise RleError(
            "segmentation", f"expected polygons or an RLE, got {type(segmentation).__name__}"
        )
    out = _compressed(rle)
    if _rle_area(out) == 0:
        raise RleError("segmentation", "the mask is empty")
    return out


def _rle_area(rle: Mapping[str, Any]) -> int:
    return int(rle_counts(rle["counts"])[1::2].sum())


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A bool / uint8 (H, W) mask as a compressed RLE ``{size, counts: str}``."""
    if mask.ndim != 2:
        raise ValueError(f"encode_mask: expected a (H, W) mask, got shape {mask.shape}")
    return _compressed(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def decode_masks(rles: Sequence[Mapping[str, Any] | None], height: int, width: int) -> np.ndarray:
    """bool (N, H, W) masks of the RLEs; an all-False mask for each None.

    The array is a view of pycocotools' column-major output (strides (H * W, 1, H)), not a
    C-contiguous copy: transposing 0.3 M pixels per mask costs more than decoding it, and
    `alp_dataset.transforms` reads masks column-wise first anyway. Raises RleError when an RLE's
    size is not (height, width) or its runs do not cover the image exactly (so pycocotools never
    writes past its buffer).
    """
    have = [i for i, r in enumerate(rles) if r is not None]
    coded = []
    for i in have:
        rle = rles[i]
        assert rle is not None
        _check_size(rle["size"], height, width, f"instances[{i}].rle.size")
        counts = rle["counts"]
        if not isinstance(counts, str):
            raise RleError(f"instances[{i}].rle.counts", "expected a string")
        if int(rle_counts(counts).sum()) != height * width:
            raise RleError(f"instances[{i}].rle.counts", "runs do not cover the image")
        coded.append({"size": [height, width], "counts": counts.encode("ascii")})
    if len(have) == len(rles) and have:
        decoded = mask_utils.decode(coded)  # (H, W, N) uint8, column-major
    else:
        decoded = np.zeros((height, width, len(rles)), dtype=np.uint8, order="F")  # (H, W, N)
        if have:
            decoded[:, :, have] = mask_utils.decode(coded)
    return np.moveaxis(decoded.view(np.bool_), -1, 0)  # (N, H, W), values 0 / 1


def instances_json_bytes(document: Mapping[str, Any]) -> bytes:
    """A sample's instances.json: UTF-8 JSON with sorted keys, compact separators."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_problems(manifest: Mapping[str, Any]) -> list[str]:
    """The identities a COCO-shards manifest's counts break; [] for a sound manifest.

    Every image is a sample, an image without kept instances, or a dead letter; every
    annotation is a kept instance (mask or box), not selected (its class is not kept), or a dead
    letter; totals are the sums of their reasons; the files hold as many rows as the counts say.
    """
    problems: list[str] = []

    def check(name: str, left: int, right: int) -> None:
        if left != right:
            problems.append(f"{name}: {left} != {right}")

    c = manifest["counts"]
    images, annotations, dead = c["images"], c["annotations"], c["dead_letters"]
    check(
        "images.total = samples + without_instances + dead_letters",
        images["total"],
        images["samples"] + images["without_instances"] + images["dead_letters"],
    )
    check(
        "annotations.total = mask + box + not_selected + dead_letters",
        annotations["total"],
        annotations["mask"]
        + annotations["box"]
        + annotations["not_selected"]
        + annotations["dead_letters"],
    )
    check("dead_letters.total = sum(by_reason)", dead["total"], sum(dead["by_reason"].values()))
    check(
        "dead_letters.total = images + annotations dead letters",
        dead["total"],
        images["dead_letters"] + annotations["dead_letters"],
    )
    files = manifest["files"]
    check("rows in shards", sum(f["rows"] for f in files["shards"]), images["samples"])
    check("rows in dead_letters", sum(f["rows"] for f in files["dead_letters"]), dead["total"])
    return problems
