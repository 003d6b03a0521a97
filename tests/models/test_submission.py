"""Tests for models/evaluation/submission.py: the challenge's mask encoding by hand, the
submission CSV read back, and COCO results JSON as pycocotools loads and scores it."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from alp_dataset.coco_shards import encode_mask
from models.evaluation import coco_metrics
from models.evaluation.submission import (
    SUBMISSION_COLUMNS,
    decode_challenge_mask,
    encode_challenge_mask,
    read_oid_submission,
    write_coco_results,
    write_oid_submission,
)


def test_challenge_mask_encoding_by_hand() -> None:
    # Column-major pixels of [[0, 1], [1, 1]]: 0, 1, 1, 1 -> runs (1 zero, 3 ones) -> "13".
    mask = np.array([[0, 1], [1, 1]], dtype=bool)
    rle = encode_mask(mask)
    assert rle["counts"] == "13"
    text = encode_challenge_mask(rle)
    assert zlib.decompress(base64.b64decode(text)) == b"13"
    back = decode_challenge_mask(text, 2, 2)
    assert np.array_equal(mask_utils.decode({**back, "counts": back["counts"].encode()}), mask)
    with pytest.raises(ValueError, match="cover 4 pixels, the image 9"):
        decode_challenge_mask(text, 3, 3)
    with pytest.raises(ValueError, match="not an encoded mask"):
        decode_challenge_mask("not base64!", 2, 2)
    with pytest.raises(ValueError, match="not an encoded mask"):
        decode_challenge_mask(base64.b64encode(b"not zlib").decode(), 2, 2)


def _detections() -> list[dict]:
    a = np.zeros((4, 6), bool)
    a[1:3, 1:4] = True
    b = np.zeros((4, 6), bool)
    b[0:4, 4:6] = True
    return [
        {
            "image_id": 1,
            "boxes_xyxy_px": np.array([[1.0, 1.0, 4.0, 3.0], [4.0, 0.0, 6.0, 4.0]]),
            "scores": np.array([0.25, 0.75]),
            "category_ids": np.array([18, 3]),
            "masks": np.stack([a, b]),
        }
    ]


def test_submission_csv_rows_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    images = {1: ("000a1249af2bc5f0", 4, 6), 2: ("0000000000000002", 8, 8)}
    n = write_oid_submission(
        path, _detections(), images=images, label_names={18: "/m/0bt9lr", 3: "/m/01g317"}
    )
    assert n == 2
    rows = list(csv.reader(path.open(newline="")))
    assert rows[0] == list(SUBMISSION_COLUMNS)
    # One row per image, sorted by ImageID; an image without detections has an empty string.
    assert [r[:3] for r in rows[1:]] == [
        ["0000000000000002", "8", "8"],
        ["000a1249af2bc5f0", "6", "4"],
    ]
    assert rows[1][3] == ""
    tokens = rows[2][3].split(" ")
    assert tokens[0::3] == ["/m/01g317", "/m/0bt9lr"]  # highest score first
    assert tokens[1::3] == ["0.75", "0.25"]
    back = read_oid_submission(path)
    assert back["0000000000000002"] == []
    (label, score, rle), _ = back["000a1249af2bc5f0"]
    assert (label, score) == ("/m/01g317", 0.75)
    assert rle == encode_mask(_detections()[0]["masks"][1])


def test_submission_needs_label_names_and_known_images(tmp_path: Path) -> None:
    images = {1: ("000a1249af2bc5f0", 4, 6)}
    with pytest.raises(KeyError, match="category 18 has no LabelName"):
        write_oid_submission(tmp_path / "s.csv", _detections(), images=images, label_names={3: "x"})
    with pytest.raises(KeyError, match="images"):
        write_oid_submission(tmp_path / "s.csv", _detections(), images={}, label_names={})


def test_read_submission_names_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("ImageID,ImageWidth,ImageHeight,PredictionString\nabc,6,4,/m/01 0.5\n")
    with pytest.raises(ValueError, match="line 2, PredictionString: not LabelName"):
        read_oid_submission(path)
    path.write_text("ImageID,ImageWidth,ImageHeight,PredictionString\nabc,6,4,/m/01 0.5 eJzz\n")
    with pytest.raises(ValueError, match=r"line 2, PredictionString\[0\]"):
        read_oid_submission(path)


def test_coco_results_json_scores_as_coco_metrics_do(tmp_path: Path) -> None:
    dets = _detections()
    gt = {
        "images": [{"id": 1, "height": 4, "width": 6}],
        "categories": [{"id": 3, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "bbox": [1, 1, 3, 2], "area": 6.0,
             "iscrowd": 0, "segmentation": encode_mask(dets[0]["masks"][0])},
        ],
    }  # fmt: skip
    path = tmp_path / "results.json"
    assert write_coco_results(path, dets) == 2
    results = json.loads(path.read_text())
    assert [r["score"] for r in results] == [0.75, 0.25]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(path)), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = coco_metrics(gt, dets, base_category_ids=[3, 18], novel_category_ids=[])
    assert evaluator.stats[0] == pytest.approx(ours["segm"]["all"]["AP"])
    renamed = tmp_path / "renamed.json"
    write_coco_results(renamed, dets, image_ids={1: "000a1249af2bc5f0"})
    assert {r["image_id"] for r in json.loads(renamed.read_text())} == {"000a1249af2bc5f0"}
