"""Open Images instance shards: the layout `pipelines/build_oid_shards.py` writes, read by
`alp_dataset.datasets.CocoShardDataset` like COCO shards (documented in ``docs/open_images.md``).

Output directory of one run, as for COCO (`alp_dataset.coco_shards`)::

    shards/shard-NNNNNN.tar                   WebDataset, one sample per image
    dead_letters/part-NNNNN-of-MMMMM.jsonl    DEAD_LETTER_FIELDS, one line per rejected row / image
    manifest.json                             MANIFEST_KEYS; written last

A sample's members are ``<key>.instances.json`` (SAMPLE_FIELDS, instances INSTANCE_FIELDS: the
COCO instance fields and more, so COCO readers read it unchanged) and the image file's bytes. The
key is the Open Images ImageID (16 hex digits), so sorting keys sorts ids. Masks are compressed
COCO RLEs of the image's size: each mask PNG, whatever its own size, is resized to the image with
nearest-neighbour sampling (`mask_png_to_rle`).

Group-of instances are written with ``iscrowd`` true as well as ``is_group_of``: COCO readers
leave crowds out of training and make them ignored regions / group-of instances in evaluation,
which is what Open Images' group-of boxes are.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from alp_dataset.coco_shards import RleError, encode_mask, rle_counts

__all__ = [
    "DEAD_LETTER_FIELDS",
    "DEAD_LETTER_KINDS",
    "DEAD_LETTER_REASONS",
    "INSTANCE_FIELDS",
    "MANIFEST_KEYS",
    "OID_SHARDS_FORMAT",
    "OID_SHARDS_VERSION",
    "SAMPLE_FIELDS",
    "box_norm_to_px",
    "manifest_problems",
    "mask_png_to_rle",
]

OID_SHARDS_FORMAT = "alp.oid_shards"
OID_SHARDS_VERSION = "1.0"

SAMPLE_FIELDS: Mapping[str, str] = {
    "format": f'"{OID_SHARDS_FORMAT}"',
    "schema_version": "OID_SHARDS_VERSION",
    "image_id": "the Open Images ImageID (str)",
    "file_name": "the image file's name under --images",
    "width": "image width in pixels, from the image file",
    "height": "image height in pixels",
    "instances": "kept instances (INSTANCE_FIELDS), sorted by (csv, row)",
    "image_labels": "{positive, negative}: LabelNames verified present / absent, sorted",
    "dead_annotations": "rows of this image that became dead letters (0 for a clean image)",
}

INSTANCE_FIELDS: Mapping[str, str] = {
    "annotation_id": "1-based position of the instance in the sample (int)",
    "category_id": "1-based position of the class in the --classes file (int)",
    "class_name": "the class's DisplayName",
    "label_name": "the class's LabelName (/m/...)",
    "box_xyxy_px": "(x0, y0, x1, y1) in pixels from the normalised box, clipped to the image",
    "area": "mask pixels; box area for a box without one",
    "iscrowd": "is_group_of, under COCO's name",
    "is_group_of": "the box file's IsGroupOf (false for a mask without a box row)",
    "has_mask": "whether rle holds the instance's mask",
    "rle": "{size: [height, width], counts: str}: compressed COCO RLE, or null",
    "source": '"mask" (has its mask) or "box" (box only)',
    "csv": '"masks" or "boxes": the file of the row the instance comes from',
    "row": "line number of that row (the header is line 1)",
    "box_id": "the segmentation file's BoxID, or null",
    "box_row": "line number of the boxes file's row merged into a mask instance, or null",
    "predicted_iou": "the segmentation file's PredictedIoU, or null",
    "is_occluded": "IsOccluded of the box row (null: unknown or no box row); likewise below",
    "is_truncated": "IsTruncated",
    "is_depiction": "IsDepiction",
    "is_inside": "IsInside",
}

DEAD_LETTER_KINDS = ("image", "mask_row", "box_row", "label_row")

DEAD_LETTER_FIELDS: Mapping[str, str] = {
    "kind": " / ".join(f'"{k}"' for k in DEAD_LETTER_KINDS),
    "id": "the row's line number in its file (rows), or null (images)",
    "image_id": "the ImageID of the row or image, or null when it has none",
    "reason": "reason code (DEAD_LETTER_REASONS)",
    "field": 'the offending column ("BoxXMin"); "" for the whole row',
    "message": "what was found and what was expected",
    "raw": "the row as it is in the file (images: the ImageID)",
}

DEAD_LETTER_REASONS: Mapping[str, str] = {
    # rows of any file
    "bad_row": "not the file's number of cells, or a cell missing or not of its form",
    "bad_image_id": "ImageID is not a name of letters, digits, '_' and '-'",
    "bad_box": "box coordinates not 0 <= min < max <= 1",
    "image_rejected": "the row's image became a dead letter",
    # segmentation rows
    "duplicate_mask_path": "an earlier row names this MaskPath",
    "mask_missing": "no file of that name in any --mask-dir folder or zip",
    "mask_unreadable": "the file is not an image PIL can read",
    "empty_mask": "the mask has no pixel set once resized to the image",
    # image-level label rows
    "bad_confidence": "Confidence is not 0 or 1 (machine-generated labels are not verified)",
    # images
    "image_missing": "no <ImageID>.jpg, .jpeg or .png under --images",
    "image_unreadable": "the file is not an image PIL can read",
}

MANIFEST_KEYS: Mapping[str, str] = {
    "format": f'"{OID_SHARDS_FORMAT}"',
    "schema_version": "OID_SHARDS_VERSION",
    "alp_version": "version of the alp package that wrote the run",
    "options": "the options that, with the input files, determine the output",
    "inputs": "{role, path, size_bytes} of each input file",
    "classes": "{kept: [{category_id, label_name, display_name, source}], mask, box_only, "
    "not_selected, split_not_in_file}",
    "hierarchy": "the --hierarchy as {root, parents}, or null",
    "mask_files": "{containers: [{path, files}], total, referenced, not_selected, "
    "unreferenced, shadowed}",
    "counts": "images, mask_rows, box_rows, label_rows, dead letters (manifest_problems)",
    "files": "{shards, dead_letters}: lists of {path (relative), rows}",
}


def box_norm_to_px(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """Open Images' (XMin, XMax, YMin, YMax) in [0, 1] -> (x0, y0, x1, y1) pixels."""
    x_min, x_max, y_min, y_max = box
    return (x_min * width, y_min * height, x_max * width, y_max * height)


def mask_png_to_rle(data: bytes, width: int, height: int) -> dict[str, Any]:
    """A mask PNG (binary, any size) as a compressed RLE of the (height, width) image.

    Pixels > 0 are the mask. A mask of another size than the image is resized with nearest-
    neighbour sampling (Open Images' masks come at their own resolution). Raises RleError with
    field "file" for bytes PIL cannot read, "mask" for a mask left empty.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mask = image.convert("L")
    except Exception as exc:  # PIL raises several types for bytes that are no image
        raise RleError("file", f"not an image: {type(exc).__name__}: {exc}") from None
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    pixels = np.asarray(mask) > 0  # (H, W)
    if not pixels.any():
        raise RleError("mask", f"no pixel set in the {width} x {height} mask")
    rle = encode_mask(pixels)
    assert int(rle_counts(rle["counts"]).sum()) == width * height
    return rle


def _total(counts: Mapping[str, Any], *names: str) -> int:
    return sum(int(counts.get(n, 0)) for n in names)


def manifest_problems(manifest: Mapping[str, Any]) -> list[str]:
    """Why the manifest's counts do not add up (empty when they do):

    - images.total = samples + without_instances + dead_letters
    - mask_rows.total = mask + not_selected + dead_letters
    - box_rows.total = box + with_mask + not_selected + dead_letters
    - label_rows.total = positive + negative + not_selected + dead_letters
    - dead_letters.total = sum(by_reason) = the dead letters of images and rows
    - mask_files.total = referenced + not_selected + unreferenced + shadowed
    - the rows listed in files = images.samples and dead_letters.total
    """
    c = manifest["counts"]
    sums = {
        "images": ("samples", "without_instances", "dead_letters"),
        "mask_rows": ("mask", "not_selected", "dead_letters"),
        "box_rows": ("box", "with_mask", "not_selected", "dead_letters"),
        "label_rows": ("positive", "negative", "not_selected", "dead_letters"),
    }
    problems = []
    for group, parts in sums.items():
        total, parts_sum = c[group]["total"], _total(c[group], *parts)
        if total != parts_sum:
            problems.append(f"{group}.total {total} != {' + '.join(parts)} = {parts_sum}")
    dead = c["dead_letters"]
    by_reason = sum(dead["by_reason"].values())
    by_kind = sum(c[g]["dead_letters"] for g in sums)
    if not dead["total"] == by_reason == by_kind:
        problems.append(
            f"dead_letters.total {dead['total']}, sum of by_reason {by_reason}, sum over "
            f"images and rows {by_kind} differ"
        )
    files = manifest["mask_files"]
    parts = ("referenced", "not_selected", "unreferenced", "shadowed")
    if files["total"] != _total(files, *parts):
        problems.append(f"mask_files.total {files['total']} != {' + '.join(parts)}")
    if files["total"] != sum(k["files"] for k in files["containers"]):
        problems.append("mask_files.total differs from the files of its containers")
    listed = {k: sum(f["rows"] for f in v) for k, v in manifest["files"].items()}
    if listed.get("shards", 0) != c["images"]["samples"]:
        problems.append(f"shards hold {listed.get('shards', 0)} samples, counts say "
                        f"{c['images']['samples']}")  # fmt: skip
    if listed.get("dead_letters", 0) != dead["total"]:
        problems.append(
            f"dead-letter files hold {listed.get('dead_letters', 0)} rows, counts say "
            f"{dead['total']}"
        )
    return problems
