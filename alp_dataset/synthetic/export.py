"""Files of a synthetic world: LocNar narratives, COCO instances, ground truth and images.

Bytes are deterministic: JSON with sorted keys and compact separators, floats rounded when the
records are made (so Python's shortest repr is fixed), PNGs from fixed pixels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from alp_dataset.synthetic.records import Narration, SyntheticObject, SyntheticSample
from alp_dataset.synthetic.shapes import DEFAULT_CLASSES, category_id, check_classes
from alp_dataset.synthetic.world import make_world

OBJECTS_PER_IMAGE_MAX = 10  # annotation id = index * 10 + object_id + 1, stable across runs


@dataclass(frozen=True)
class WorldPaths:
    root: Path
    narratives: Path  # LocNar JSONL, one line per narrative
    instances: Path  # COCO instances JSON
    ground_truth: Path  # JSONL, one line per narrative: its mentions
    images: Path | None  # folder of <image_id>.png, None when images were not written


def dumps(obj: Any) -> str:
    """Deterministic compact JSON."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def coco_image(sample: SyntheticSample) -> dict[str, Any]:
    return {
        "id": sample.index,
        "file_name": f"{sample.image_id}.png",
        "width": sample.width,
        "height": sample.height,
    }


def coco_annotation(sample: SyntheticSample, obj: SyntheticObject) -> dict[str, Any]:
    """COCO instance annotation; segmentation is RLE with counts as str (JSON-safe)."""
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    x0, y0, x1, y1 = obj.box_xyxy_px
    return {
        "id": sample.index * OBJECTS_PER_IMAGE_MAX + obj.object_id + 1,
        "image_id": sample.index,
        "category_id": obj.category_id,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": obj.area,
        "iscrowd": 0,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()},
    }


def coco_instances(
    samples: Iterable[SyntheticSample], classes: Sequence[str] = DEFAULT_CLASSES
) -> dict[str, Any]:
    """A COCO instances dict for the samples (all their objects)."""
    images, annotations = [], []
    for sample in samples:
        images.append(coco_image(sample))
        annotations.extend(coco_annotation(sample, obj) for obj in sample.objects)
    return _instances(images, annotations, classes, {})


def _instances(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    classes: Sequence[str],
    info: dict[str, Any],
) -> dict[str, Any]:
    return {
        "info": {"description": "ALP synthetic world", **info},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": category_id(c), "name": c, "supercategory": "shape"} for c in classes
        ],
    }


def ground_truth_record(sample: SyntheticSample, narration: Narration) -> dict[str, Any]:
    """One ground_truth.jsonl line: the record key fields of the narrative and its mentions."""
    return {
        "dataset_id": narration.narrative["dataset_id"],
        "image_id": sample.image_id,
        "annotator_id": narration.annotator_id,
        "mentions": [dict(vars(m)) for m in narration.mentions],
    }


def write_world(
    out_dir: str | Path,
    n_images: int,
    *,
    seed: int = 0,
    images: bool = True,
    classes: Sequence[str] = DEFAULT_CLASSES,
    image_size: tuple[int, int] = (256, 256),
    annotators_per_image: int = 1,
    start: int = 0,
    progress: bool = False,
) -> WorldPaths:
    """Write samples start .. start + n_images - 1 of the world to out_dir (created if needed)."""
    classes = check_classes(tuple(classes))
    # make_world checks its arguments now, so bad ones fail before anything is written.
    samples: Iterable[SyntheticSample] = make_world(
        n_images,
        seed=seed,
        classes=classes,
        image_size=image_size,
        annotators_per_image=annotators_per_image,
        start=start,
    )
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = WorldPaths(
        root=root,
        narratives=root / "narratives.jsonl",
        instances=root / "instances.json",
        ground_truth=root / "ground_truth.jsonl",
        images=root / "images" if images else None,
    )
    if paths.images is not None:
        paths.images.mkdir(exist_ok=True)
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, total=n_images, unit="image", desc="synthetic world")
    coco_images, coco_annotations = [], []
    with (
        paths.narratives.open("w", encoding="utf-8", newline="\n") as narratives,
        paths.ground_truth.open("w", encoding="utf-8", newline="\n") as truth,
    ):
        for sample in samples:
            for narration in sample.narrations:
                narratives.write(dumps(narration.narrative) + "\n")
                truth.write(dumps(ground_truth_record(sample, narration)) + "\n")
            coco_images.append(coco_image(sample))
            coco_annotations.extend(coco_annotation(sample, obj) for obj in sample.objects)
            if paths.images is not None:
                # Level 1: as small as the default on these noisy images, and four times faster.
                image = Image.fromarray(sample.render())
                image.save(paths.images / f"{sample.image_id}.png", compress_level=1)
    info = {"seed": seed, "image_size": list(image_size), "start": start}
    instances = _instances(coco_images, coco_annotations, classes, info)
    paths.instances.write_text(dumps(instances) + "\n", encoding="utf-8")
    return paths
