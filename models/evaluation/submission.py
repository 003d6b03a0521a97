"""Detections as files others read: the Open Images challenge's instance-segmentation submission
CSV, and COCO's results JSON.

    write_oid_submission("run/submission.csv", detections, images={7: ("000a1249af2bc5f0", 480,
                         640)}, label_names={18: "/m/0bt9lr"})
    write_coco_results("run/results.json", detections, image_ids={7: 7})

The submission CSV (Kaggle's Open Images 2019 instance segmentation track; the encoding of
tensorflow/models' challenge_evaluation.md) has the header ``ImageID,ImageWidth,ImageHeight,
PredictionString``, one row per image (images without detections too, with an empty string);
PredictionString is ``LabelName Confidence EncodedMask`` triples joined by spaces, and
EncodedMask is the mask's COCO RLE counts string, zlib-compressed, then base64-encoded.
`read_oid_submission` reads such a file back (its checks name the row and the field).
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from alp_dataset.coco_shards import RleError, rle_counts
from models.evaluation.records import ImageDetections, Rle, image_detections

__all__ = [
    "SUBMISSION_COLUMNS",
    "decode_challenge_mask",
    "encode_challenge_mask",
    "read_oid_submission",
    "write_coco_results",
    "write_oid_submission",
]

SUBMISSION_COLUMNS = ("ImageID", "ImageWidth", "ImageHeight", "PredictionString")


def encode_challenge_mask(rle: Mapping[str, Any]) -> str:
    """A compressed COCO RLE as the challenge encodes it: zlib (level 9) of the counts string,
    then base64."""
    counts = rle["counts"]
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    return base64.b64encode(zlib.compress(raw, zlib.Z_BEST_COMPRESSION)).decode("ascii")


def decode_challenge_mask(text: str, height: int, width: int) -> Rle:
    """The inverse of `encode_challenge_mask`, checked: ValueError when the text is not base64 of
    zlib data, or its runs do not cover the (height, width) image."""
    try:
        counts = zlib.decompress(base64.b64decode(text, validate=True)).decode("ascii")
        covered = int(rle_counts(counts).sum())
    except (binascii.Error, zlib.error, UnicodeDecodeError, RleError) as exc:
        raise ValueError(f"not an encoded mask: {exc}") from None
    if covered != height * width:
        raise ValueError(f"the mask's runs cover {covered} pixels, the image {height * width}")
    return {"size": [height, width], "counts": counts}


def write_oid_submission(
    path: str | Path,
    detections: Iterable[ImageDetections | Mapping[str, Any]],
    *,
    images: Mapping[int, tuple[str, int, int]],
    label_names: Mapping[int, str],
) -> int:
    """Write the challenge submission CSV; returns the number of predictions written.

    ``images``: image id -> (Open Images ImageID, height, width), every image of the evaluation
    (one row each, in ImageID order); ``label_names``: category id -> LabelName. Detections of a
    category without a LabelName raise KeyError; masks are needed.
    """
    by_image: dict[int, ImageDetections] = {}
    for record in detections:
        det = image_detections(record)
        by_image[det.image_id] = det
    unknown = sorted(set(by_image) - set(images))
    if unknown:
        raise KeyError(f"detections name images {unknown[:5]} that `images` does not hold")
    count = 0
    rows = []
    for image_id, (oid_id, height, width) in sorted(images.items(), key=lambda kv: kv[1][0]):
        det = by_image.get(image_id)
        parts: list[str] = []
        if det is not None and len(det.scores):
            if det.masks is None:
                raise ValueError(f"detections of image {oid_id}: masks are needed")
            order = np.argsort(-det.scores, kind="stable")
            for k in order.tolist():
                category_id = int(det.category_ids[k])
                if category_id not in label_names:
                    raise KeyError(f"category {category_id} has no LabelName")
                mask = encode_challenge_mask(det.masks[k])
                parts += [label_names[category_id], f"{float(det.scores[k]):.6g}", mask]
                count += 1
        rows.append([oid_id, width, height, " ".join(parts)])
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SUBMISSION_COLUMNS)
        writer.writerows(rows)
    return count


def read_oid_submission(path: str | Path) -> dict[str, list[tuple[str, float, Rle]]]:
    """ImageID -> [(LabelName, confidence, RLE), ...] of a submission CSV; ValueError naming the
    line and field of anything that is not in the format."""
    out: dict[str, list[tuple[str, float, Rle]]] = {}
    with Path(path).open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if header != list(SUBMISSION_COLUMNS):
            raise ValueError(f"{path}: header {header}, expected {list(SUBMISSION_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            if len(row) != len(SUBMISSION_COLUMNS):
                raise ValueError(f"{where}: {len(row)} cells, expected {len(SUBMISSION_COLUMNS)}")
            image_id, width, height, predictions = row
            try:
                w, h = int(width), int(height)
            except ValueError:
                raise ValueError(f"{where}: ImageWidth / ImageHeight must be ints") from None
            tokens = predictions.split()
            if len(tokens) % 3:
                raise ValueError(
                    f"{where}, PredictionString: not LabelName Confidence Mask triples"
                )
            items = []
            for i in range(0, len(tokens), 3):
                try:
                    rle = decode_challenge_mask(tokens[i + 2], h, w)
                    items.append((tokens[i], float(tokens[i + 1]), rle))
                except ValueError as exc:
                    raise ValueError(f"{where}, PredictionString[{i // 3}]: {exc}") from None
            out[image_id] = items
    return out


def write_coco_results(
    path: str | Path,
    detections: Iterable[ImageDetections | Mapping[str, Any]],
    *,
    image_ids: Mapping[int, Any] | None = None,
) -> int:
    """Write COCO's results JSON (a list of {image_id, category_id, score, bbox [x, y, w, h],
    segmentation RLE}, what ``COCO.loadRes`` reads); returns the number of results.

    ``image_ids`` maps the evaluation's image ids to the ids to write (Open Images: the ImageID
    strings); by default they are written as they are. The box is the detector's own.
    """
    results = []
    for record in detections:
        det = image_detections(record)
        image_id = det.image_id if image_ids is None else image_ids[det.image_id]
        for k in np.argsort(-det.scores, kind="stable").tolist():
            x0, y0, x1, y1 = (float(v) for v in det.boxes_xyxy_px[k])
            result: dict[str, Any] = {
                "image_id": image_id,
                "category_id": int(det.category_ids[k]),
                "score": round(float(det.scores[k]), 6),
                "bbox": [round(v, 3) for v in (x0, y0, x1 - x0, y1 - y0)],
            }
            if det.masks is not None:
                rle = det.masks[k]
                result["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"]}
                result["area"] = float(mask_utils.area({**rle, "counts": rle["counts"].encode()}))
            results.append(result)
    Path(path).write_text(json.dumps(results, separators=(",", ":")) + "\n", encoding="utf-8")
    return len(results)
