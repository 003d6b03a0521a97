"""The COCO -> Open Images path end to end without the real files: the synthetic world exported in
Open Images format -> class CSV and split -> build_oid_shards -> a few training steps of FCOS-MO
-> models.evaluate with the hierarchy, the challenge submission and COCO results -> every count
checked against what the export wrote."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import alp_curation.torchvision_fix  # noqa: F401  (before any torchvision import)

import pytest
import torch

from alp_dataset.synthetic.oid_export import oid_label_name, write_oid_world
from models import evaluate, train
from models.evaluation.submission import read_oid_submission
from pipelines import build_oid_shards

N_IMAGES = 8
TINY = [
    "--backbone", "resnet_small", "--fpn-channels", "16", "--head-convs", "1", "--text-dim",
    "384", "--mask-channels", "8", "--image-size", "64", "--batch-size", "2", "--num-workers",
    "0", "--steps", "3", "--warmup-steps", "1", "--log-every", "1", "--checkpoint-every", "3",
    "--no-progress", "--text-encoder", "minilm", "--optimizer", "adamw", "--lr", "0.002",
]  # fmt: skip


def _quiet(fn, argv: list[str]) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = fn(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_class_csv_to_shards_to_training_to_challenge_evaluation(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    world = write_oid_world(tmp_path / "world", N_IMAGES, seed=5, image_size=(96, 96))
    # The split: the class descriptions file itself, written out by the user as an explicit list
    # with two base classes (the shapes are no COCO classes, so the shipped correspondence
    # would make every class novel).
    split = tmp_path / "split.csv"
    with world.classes.open() as f, split.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["display_name", "mid", "coco_name"])
        for mid, name in csv.reader(f):
            writer.writerow([name, mid, {"Circle": "sports ball", "Ring": "donut"}.get(name, "")])

    shards = tmp_path / "oid"
    status, _, err = _quiet(build_oid_shards.run, [
        "--runner", "FnApiRunner", "--classes", str(world.classes),
        "--hierarchy", str(world.hierarchy), "--masks", str(world.masks),
        *[a for z in world.mask_zips for a in ("--mask-dir", str(z))],
        "--labels", str(world.labels), "--boxes", str(world.boxes),
        "--images", str(world.images), "--output", str(shards), "--keep-empty-images",
        "--class-split", str(split), "--shard-size", "4",
    ])  # fmt: skip
    assert status == 0, err
    assert "2 base (from COCO)" in err  # what the split matched is printed
    manifest = json.loads((shards / "manifest.json").read_text())
    c, n = manifest["counts"], world.counts
    assert c["images"] == {"total": N_IMAGES, "samples": N_IMAGES, "without_instances": 0,
                           "dead_letters": 0}  # fmt: skip
    assert c["mask_rows"]["total"] == c["mask_rows"]["mask"] == n["mask_rows"]
    assert c["box_rows"]["with_mask"] + c["box_rows"]["box"] == n["box_rows"]
    assert c["label_rows"]["positive"] + c["label_rows"]["negative"] == n["label_rows"]

    run = tmp_path / "run"
    status, _, err = _quiet(train.main, [
        *TINY, "--shards", str(shards), "--class-split", str(split), "--output", str(run),
    ])  # fmt: skip
    assert status == 0, err
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]

    result_path, submission, results = (
        tmp_path / "eval.json",
        tmp_path / "sub.csv",
        tmp_path / "r.json",
    )
    status, table, err = _quiet(evaluate.main, [
        "--checkpoint", str(run / "last.pt"), "--shards", str(shards), "--class-split",
        str(split), "--image-size", "64", "--device", "cpu", "--output", str(result_path),
        "--submission", str(submission), "--detections", str(results),
    ])  # fmt: skip
    assert status == 0, err
    assert "OID mask AP50" in table and f"images: {N_IMAGES}" in table
    result = json.loads(result_path.read_text())
    assert result["num_images"] == N_IMAGES
    assert result["classes"]["base"] == ["Circle", "Ring"]
    per_class = {v["name"]: v for v in result["oid"]["per_class"].values()}
    # The hierarchy: Polygon has no instance of its own; its positives are its children's.
    with world.masks.open() as f:
        masked = [r["LabelName"] for r in csv.DictReader(f)]
    children = [oid_label_name(c) for c in ("square", "triangle", "diamond")]
    assert per_class["Polygon"]["num_gt"] == sum(m in children for m in masked) > 0
    assert per_class["Circle"]["num_gt"] == masked.count(oid_label_name("circle"))
    # Group-of boxes have no masks: ignored regions, never positives.
    assert sum(v["num_gt"] for v in per_class.values() if v["name"] != "Polygon") == len(masked)
    submitted = read_oid_submission(submission)
    assert len(submitted) == N_IMAGES
    labels = {label for items in submitted.values() for label, _, _ in items}
    assert labels <= {k["label_name"] for k in manifest["classes"]["kept"]}
    coco_results = json.loads(results.read_text())
    assert sum(len(v) for v in submitted.values()) == len(coco_results)
    assert {r["image_id"] for r in coco_results} <= set(submitted)
