"""The synthetic world's annotations in Open Images' file formats, for the Open Images path's tests
and benchmarks (`pipelines/build_oid_shards.py`, the challenge evaluation) without the real files.

    paths = write_oid_world("out/oid_world", 200, seed=0)
    # paths.classes, paths.hierarchy, paths.masks, paths.mask_zips, paths.labels, paths.boxes,
    # paths.images: the files of docs/open_images.md, in their real layouts

What is fabricated, and how:

- label ids ``/m/0`` + 6 hex digits of a hash of the class name; DisplayNames capitalised
  ("Circle"); one extra parent class, "Polygon", over square, triangle and diamond, in a small
  hierarchy JSON whose root ("Entity") is no class, as in the real file;
- ImageIDs: 16 hex digits of a hash of (seed, index); images as ``images/<ImageID>.png``;
- objects of a class drawn once in an image get a mask PNG (at ``mask_scale`` times the image
  size, as the real masks come at their own resolution), a segmentation row and a box row with
  the same box; a class drawn twice or more becomes one group-of box around them all (IsGroupOf
  1, no masks), as Open Images annotates crowds;
- masks in zips named by the first hex digit of the ImageID (``validation-masks-0.zip``, ...);
- image-level labels: a positive row per class present (a second row from another source for
  every third image), a negative row (Confidence 0) for one class that is absent.

Bytes are deterministic: fixed zip timestamps, stored members, PNGs from fixed pixels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from alp_dataset.synthetic.records import SyntheticObject, SyntheticSample
from alp_dataset.synthetic.shapes import DEFAULT_CLASSES, check_classes
from alp_dataset.synthetic.world import make_world

__all__ = ["OidWorldPaths", "oid_image_id", "oid_label_name", "write_oid_world"]

PARENT_CLASS = "polygon"
PARENT_CHILDREN = ("square", "triangle", "diamond")
ROOT_LABEL = "/m/0synth"
SPLIT_NAME = "validation"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class OidWorldPaths:
    root: Path
    classes: Path  # class descriptions, no header
    hierarchy: Path
    masks: Path  # segmentation CSV
    mask_zips: tuple[Path, ...]
    labels: Path  # human-verified image-level labels
    boxes: Path
    images: Path
    counts: dict[str, int]  # rows written per file, group-of boxes, images


def _hex(text: str, digits: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:digits]


def oid_label_name(class_name: str) -> str:
    """The fabricated Open Images label id of a synthetic class ("/m/0" + 6 hex digits)."""
    return f"/m/0{_hex('class:' + class_name, 6)}"


def oid_image_id(seed: int, index: int) -> str:
    """The fabricated ImageID of sample ``index`` (16 hex digits)."""
    return _hex(f"image:{seed}:{index}", 16)


def _display(class_name: str) -> str:
    return class_name.capitalize()


def _norm(v: float) -> str:
    return f"{v:.6f}"


def _box_cells(box_px: tuple[float, float, float, float], w: int, h: int) -> list[str]:
    x0, y0, x1, y1 = box_px  # -> XMin, XMax, YMin, YMax
    return [_norm(x0 / w), _norm(x1 / w), _norm(y0 / h), _norm(y1 / h)]


def _mask_png(obj: SyntheticObject, scale: float) -> bytes:
    mask = Image.fromarray(obj.mask.astype(np.uint8) * 255)
    size = (max(1, round(obj.image_width * scale)), max(1, round(obj.image_height * scale)))
    if size != mask.size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    out = io.BytesIO()
    mask.convert("1").save(out, format="PNG")
    return out.getvalue()


def _hierarchy(classes: Sequence[str]) -> dict[str, object]:
    children = [c for c in PARENT_CHILDREN if c in classes]
    top = [c for c in classes if c not in children]
    nodes: list[dict[str, object]] = [{"LabelName": oid_label_name(c)} for c in top]
    if children:
        nodes.append(
            {
                "LabelName": oid_label_name(PARENT_CLASS),
                "Subcategory": [{"LabelName": oid_label_name(c)} for c in children],
            }
        )
    return {"LabelName": ROOT_LABEL, "Subcategory": nodes}


def _write_csv(path: Path, header: Sequence[str] | None, rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def write_oid_world(
    out_dir: str | Path,
    n_images: int,
    *,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    image_size: tuple[int, int] = (256, 256),
    mask_scale: float = 0.75,
    start: int = 0,
) -> OidWorldPaths:
    """Write samples start .. start + n_images - 1 of the world as Open Images files."""
    from alp_dataset.open_images import BOX_COLUMNS, IMAGE_LABEL_COLUMNS, SEGMENTATION_COLUMNS

    classes = check_classes(tuple(classes))
    if PARENT_CLASS in classes:
        raise ValueError(f"classes: {PARENT_CLASS!r} is the fabricated parent class")
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    listed = [*classes, PARENT_CLASS] if set(PARENT_CHILDREN) & set(classes) else [*classes]
    _write_csv(root / "classes.csv", None, [[oid_label_name(c), _display(c)] for c in listed])
    hierarchy = root / "hierarchy.json"
    hierarchy.write_text(json.dumps(_hierarchy(classes), indent=1) + "\n", encoding="utf-8")
    masks_rows: list[list[str]] = []
    box_rows: list[list[str]] = []
    label_rows: list[list[str]] = []
    zips: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    group_of = 0
    sample: SyntheticSample
    for sample in make_world(n_images, seed=seed, classes=classes, image_size=image_size,
                             start=start):  # fmt: skip
        image_id = oid_image_id(seed, sample.index)
        Image.fromarray(sample.render()).save(root / "images" / f"{image_id}.png", compress_level=1)
        w, h = sample.width, sample.height
        by_class: dict[str, list[SyntheticObject]] = defaultdict(list)
        for obj in sample.objects:
            by_class[obj.class_name].append(obj)
        for name, objects in by_class.items():
            label = oid_label_name(name)
            if len(objects) > 1:  # a group-of box, no masks
                x0 = min(o.box_xyxy_px[0] for o in objects)
                y0 = min(o.box_xyxy_px[1] for o in objects)
                x1 = max(o.box_xyxy_px[2] for o in objects)
                y1 = max(o.box_xyxy_px[3] for o in objects)
                cells = _box_cells((x0, y0, x1, y1), w, h)
                box_rows.append([image_id, "xclick", label, "1", *cells, "0", "0", "1", "0", "0"])
                group_of += 1
                continue
            (obj,) = objects
            cells = _box_cells(obj.box_xyxy_px, w, h)
            box_id = _hex(f"box:{image_id}:{obj.object_id}", 8)
            mask_path = f"{image_id}_{label.replace('/', '')}_{box_id}.png"
            zips[image_id[0]].append((mask_path, _mask_png(obj, mask_scale)))
            iou = f"{0.6 + 0.4 * obj.visible_fraction:.5f}"
            masks_rows.append([mask_path, image_id, label, box_id, *cells, iou, ""])
            occluded = "1" if obj.visible_fraction < 1 else "0"
            box_rows.append([image_id, "xclick", label, "1", *cells, occluded, "0", "0", "0", "0"])
        for n, name in enumerate(sorted(by_class)):
            label_rows.append([image_id, "verification", oid_label_name(name), "1"])
            if sample.index % 3 == 0 and n == 0:
                label_rows.append([image_id, "crowdsource-verification", oid_label_name(name), "1"])
        absent = [c for c in classes if c not in by_class]
        if absent:
            pick = absent[sample.index % len(absent)]
            label_rows.append([image_id, "verification", oid_label_name(pick), "0"])
    masks = root / f"{SPLIT_NAME}-annotations-object-segmentation.csv"
    _write_csv(masks, SEGMENTATION_COLUMNS, masks_rows)
    labels = root / f"{SPLIT_NAME}-annotations-human-imagelabels-boxable.csv"
    _write_csv(labels, IMAGE_LABEL_COLUMNS, label_rows)
    boxes = root / f"{SPLIT_NAME}-annotations-bbox.csv"
    _write_csv(boxes, BOX_COLUMNS, box_rows)
    zip_paths = []
    for first in sorted(zips):
        path = root / f"{SPLIT_NAME}-masks-{first}.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
            for name, data in sorted(zips[first]):
                z.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), data)
        zip_paths.append(path)
    counts = {
        "images": n_images,
        "mask_rows": len(masks_rows),
        "box_rows": len(box_rows),
        "group_of": group_of,
        "label_rows": len(label_rows),
        "negative_labels": sum(r[3] == "0" for r in label_rows),
        "classes": len(listed),
    }
    return OidWorldPaths(
        root, root / "classes.csv", hierarchy, masks, tuple(zip_paths), labels, boxes,
        root / "images", counts,
    )  # fmt: skip
