"""Tests for models/evaluate.py: ground truth in original pixels, an oracle model scoring ~100,
and the command line on a tiny random model over synthetic COCO shards."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from alp_dataset.synthetic import write_world
from models.architectures import ARCH_NAMES, ARCHITECTURES
from models.evaluate import (
    ORIGINAL_BOXES,
    ORIGINAL_MASKS,
    GroundTruthEvalTransform,
    eval_dataset,
    evaluate_model,
    main,
)
from pipelines import build_coco_shards

CLASSES = ("circle", "square", "triangle", "star")
BASE, NOVEL = ["circle", "square"], ["triangle", "star"]
N_IMAGES = 4


@dataclass(frozen=True)
class CocoRun:
    instances: dict[str, Any]  # the world's COCO instances file
    shards: list[str]


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory: pytest.TempPathFactory) -> CocoRun:
    """Four 96 x 64 synthetic images with masks for every class, in two shards."""
    root = tmp_path_factory.mktemp("eval_world")
    world = write_world(root / "world", N_IMAGES, seed=1, image_size=(96, 64), classes=CLASSES)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = build_coco_shards.run(
            [
                "--runner", "FnApiRunner", "--instances", str(world.instances),
                "--images", str(world.images), "--output", str(root / "coco"),
                "--split", "all", "--shard-size", "2",
            ]
        )  # fmt: skip
    assert status == 0
    shards = sorted(str(p) for p in (root / "coco" / "shards").glob("*.tar"))
    assert len(shards) == 2
    return CocoRun(json.loads(world.instances.read_text()), shards)


def test_ground_truth_transform_keeps_the_stored_annotations() -> None:
    from alp_dataset.transforms import Instances

    masks = torch.zeros(2, 30, 50, dtype=torch.bool)
    masks[0, 2:10, 3:20] = True
    boxes = torch.tensor([[3.0, 2.0, 20.0, 10.0], [0.0, 0.0, 5.0, 5.0]])
    target = {"instances": Instances(boxes, masks=masks)}
    image, out = GroundTruthEvalTransform(size=64)(
        torch.zeros(3, 30, 50, dtype=torch.uint8), target
    )
    assert image.shape == (3, 64, 64)
    assert torch.equal(out[ORIGINAL_BOXES], boxes)
    first, second = out[ORIGINAL_MASKS]
    assert second is None  # an empty mask: box only
    assert np.array_equal(mask_utils.decode(dict(first, counts=first["counts"].encode())), masks[0])


class OracleModel(torch.nn.Module):
    """Returns, image by image, the ground truth of the transformed targets as detections."""

    def __init__(self, targets: list[dict[str, Any]], class_names: list[str]) -> None:
        super().__init__()
        self.targets = list(targets)
        self.class_names = class_names

    def forward(self, images: torch.Tensor, *, class_embeddings: torch.Tensor) -> list[dict]:
        out = []
        for _ in range(len(images)):
            t = self.targets.pop(0)
            n = len(t["boxes_xyxy_px"])
            masks = torch.zeros(n, 1, *images.shape[-2:])  # (K, 1, H_pad, W_pad)
            masks[:, 0, : t["masks"].shape[1], : t["masks"].shape[2]] = t["masks"].float()
            labels = [self.class_names.index(p) for p in t["phrases"]]
            out.append(
                {
                    "boxes_xyxy_px": t["boxes_xyxy_px"],
                    "scores": torch.linspace(1.0, 0.5, n),
                    "labels": torch.tensor(labels, dtype=torch.int64),
                    "masks": masks,
                }
            )
        return out


def test_oracle_scores_full_marks_and_gt_is_in_original_pixels(coco_run: CocoRun) -> None:
    # 100 is not a multiple of 128: the batch is padded, and the geometry still maps back.
    dataset = eval_dataset(coco_run.shards, size=100)
    targets = [t for _, t in dataset]
    class_names = [*BASE, *NOVEL]
    oracle = OracleModel(targets, class_names)
    result = evaluate_model(
        oracle,
        dataset,
        class_names,
        BASE,
        NOVEL,
        class_embeddings=torch.zeros(4, 8),
        device="cpu",
        batch_size=3,
        progress=False,
    )
    assert result["num_images"] == N_IMAGES
    for subset in ("all", "base", "novel"):
        s = result["summary"][subset]
        if result["coco"]["segm"][subset]["num_gt"] == 0:
            continue
        assert s["box_AP"] == pytest.approx(1.0, abs=1e-6)
        assert s["mask_AP50"] == s["oid_mask_AP50"] == pytest.approx(1.0)
        assert s["mask_AP"] > 0.8  # masks go 96 x 64 -> 100 x 67 (nearest) -> back (bilinear)
    # The category ids came from the shards, and every instance of the world was counted.
    world_ids = {c["name"]: c["id"] for c in coco_run.instances["categories"]}
    assert result["category_ids"] == {n: world_ids[n] for n in result["category_ids"]}
    n_gt = sum(result["oid"]["per_class"][c]["num_gt"] for c in result["oid"]["per_class"])
    assert n_gt == len(coco_run.instances["annotations"])


def test_ground_truth_equals_the_world_annotations(coco_run: CocoRun) -> None:
    by_id = {a["id"]: a for a in coco_run.instances["annotations"]}
    seen = 0
    for _, target in eval_dataset(coco_run.shards, size=64):
        for j, ann_id in enumerate(target["annotation_ids"].tolist()):
            want = by_id[ann_id]
            x0, y0, x1, y1 = target[ORIGINAL_BOXES][j].tolist()
            assert [x0, y0, x1 - x0, y1 - y0] == pytest.approx(want["bbox"], abs=1e-4)
            got = target[ORIGINAL_MASKS][j]
            assert got["size"] == [64, 96]
            stored = want["segmentation"]
            assert mask_utils.iou([got], [stored], [0])[0][0] == pytest.approx(1.0)
            seen += 1
    assert seen == len(by_id)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_command_line_writes_json_and_prints_a_table(
    arch: str,
    coco_run: CocoRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    save_tiny_checkpoint: Callable[..., Path],
) -> None:
    torch.set_num_threads(1)
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt.pt", arch)
    out = tmp_path / "eval" / "results.json"
    # A fixed-class detector (MaskX R-CNN) is asked for its own classes only.
    fixed = ARCHITECTURES[arch].fixed_classes
    novel = "triangle,star" if fixed else "triangle,star,dragon"
    status = main(
        [
            "--checkpoint", str(checkpoint),
            "--shards", coco_run.shards[0], "--shards", coco_run.shards[1],
            "--base-classes", "circle,square", "--novel-classes", novel,
            "--size", "128", "--batch-size", "2", "--limit", "3",
            "--score-threshold", "0.01", "--nms-threshold", "0.6",
            "--out", str(out), "--device", "cpu",
        ]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    for word in ("mask AP", "box AP50", "OID mask AP50", "all", "base", "novel"):
        assert word in printed
    result = json.loads(out.read_text())
    assert result["num_images"] == 3
    absent = result["classes"]["absent"]
    if not fixed:
        assert "dragon" in printed and "dragon" in absent  # (the first 3 images may lack
        # some shape classes too)
    assert set(result["category_ids"]) == set(CLASSES) - set(absent)
    assert result["text_encoder"] == "minilm"
    for subset in ("all", "base", "novel"):
        values = result["summary"][subset]
        assert set(values) == {"mask_AP", "mask_AP50", "box_AP", "box_AP50", "oid_mask_AP50"}
        for value in values.values():
            assert value is None or 0.0 <= value <= 1.0
        for iou_type in ("segm", "bbox"):
            assert {"AP", "AP50", "AP75", "num_gt"} <= set(result["coco"][iou_type][subset])
    assert result["coco"]["segm"]["all"]["num_gt"] > 0
    if fixed:  # a class the checkpoint does not have is a usage error naming its classes
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "--checkpoint",
                    str(checkpoint),
                    "--shards",
                    coco_run.shards[0],
                    "--base-classes",
                    "circle",
                    "--novel-classes",
                    "dragon",
                    "--device",
                    "cpu",
                ]
            )
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "['dragon'] are not classes of this checkpoint" in err and "circle" in err


def test_command_line_rejects_bad_class_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--checkpoint", "x", "--shards", "y"],  # neither --split nor classes
        ["--checkpoint", "x", "--shards", "y", "--split", "coco_voc", "--base-classes", "a"],
        ["--checkpoint", "x", "--shards", "y", "--base-classes", "a", "--novel-classes", "a"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "both base and novel" in capsys.readouterr().err


def test_help_names_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--checkpoint", "--shards", "--split", "--base-classes", "--novel-classes", "--size",
        "--batch-size", "--limit", "--nms-threshold", "--score-threshold", "--out", "--device",
    ):  # fmt: skip
        assert flag in text
