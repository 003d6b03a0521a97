"""Tests for models/evaluate.py: ground truth in original pixels, an oracle model scoring ~100
(per class too, its detections a COCO results file pycocotools loads), the progress bar's total,
and the command line on a tiny random model over synthetic COCO shards."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from alp_curation import flags
from alp_dataset.synthetic import write_world
from models.architectures import ARCH_NAMES, ARCHITECTURES
from models.evaluate import (
    ORIGINAL_BOXES,
    ORIGINAL_MASKS,
    GroundTruthEvalTransform,
    build_parser,
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


def test_oracle_scores_full_marks_and_gt_is_in_original_pixels(
    coco_run: CocoRun, tmp_path: Path
) -> None:
    # 100 is not a multiple of 128: the batch is padded, and the geometry still maps back.
    dataset = eval_dataset(coco_run.shards, size=100)
    targets = [t for _, t in dataset]
    class_names = [*BASE, *NOVEL]
    oracle = OracleModel(targets, class_names)
    detections = tmp_path / "detections.json"
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
        detections_json=detections,
    )
    assert result["num_images"] == N_IMAGES
    assert result["units"] == "percent"
    json.dumps(result)  # what --output writes: plain types only
    for subset in ("all", "base", "novel"):
        s = result["summary"][subset]
        if result["coco"]["segm"][subset]["num_gt"] == 0:
            continue
        assert s["box_AP"] == pytest.approx(100.0, abs=1e-4)
        assert s["mask_AP50"] == s["oid_mask_AP50"] == pytest.approx(100.0)
        assert s["mask_AP"] > 80.0  # masks go 96 x 64 -> 100 x 67 (nearest) -> back (bilinear)
    # The category ids came from the shards, and every instance of the world was counted.
    world_ids = {c["name"]: c["id"] for c in coco_run.instances["categories"]}
    assert result["category_ids"] == {n: world_ids[n] for n in result["category_ids"]}
    n_gt = sum(result["oid"]["per_class"][c]["num_gt"] for c in result["oid"]["per_class"])
    assert n_gt == len(coco_run.instances["annotations"])
    # Per class: every class of the data, labelled base / novel, in percent like the summary.
    per_class = result["per_class"]
    assert list(per_class) == [n for n in class_names if n in result["category_ids"]]
    for name, entry in per_class.items():
        assert entry["part"] == ("base" if name in BASE else "novel")
        assert entry["category_id"] == world_ids[name]
        count = sum(a["category_id"] == world_ids[name] for a in coco_run.instances["annotations"])
        assert entry["num_gt"] == count > 0
        assert entry["box_AP50"] == entry["mask_AP50"] == entry["oid_mask_AP50"] == 100.0
        segm = result["coco"]["segm"]["per_class"][world_ids[name]]
        assert (segm["name"], segm["AP50"], segm["num_gt"]) == (name, 100.0, count)
    # The detections file is COCO results JSON that pycocotools loads against the world's own
    # ground truth: original-pixel boxes, RLE masks with str counts.
    from pycocotools.coco import COCO

    written = json.loads(detections.read_text())
    assert len(written) == len(coco_run.instances["annotations"])
    for det in written:
        assert set(det) >= {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert isinstance(det["segmentation"]["counts"], str)
        assert det["segmentation"]["size"] == [64, 96]
    truth = COCO()
    truth.dataset = coco_run.instances
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        loaded = truth.loadRes(str(detections))
    by_id = {a["id"]: a for a in coco_run.instances["annotations"]}
    for ann in loaded.dataset["annotations"]:
        best = max(
            (a for a in by_id.values() if a["image_id"] == ann["image_id"]),
            key=lambda a: mask_utils.iou([ann["segmentation"]], [a["segmentation"]], [0])[0][0],
        )
        assert ann["category_id"] == best["category_id"]
        assert ann["bbox"] == pytest.approx(best["bbox"], abs=1.0)  # boxes in original pixels


def test_from_a_checkpoint_to_the_result_in_python(
    coco_run: CocoRun, tmp_path: Path, save_tiny_checkpoint: Callable[..., Path]
) -> None:
    from models.evaluate import default_image_size, load_model

    # MaskX R-CNN: a fixed-class detector (no text encoder to load); embeddings by default.
    model = load_model(save_tiny_checkpoint(tmp_path / "ckpt.pt", "maskx-rcnn"), device="cpu")
    assert default_image_size(model) == 512  # the checkpoint records no training size
    result = evaluate_model(
        model, eval_dataset(coco_run.shards, size=64), [*BASE, *NOVEL], BASE, NOVEL,
        limit=2, progress=False,
    )  # fmt: skip
    assert result["num_images"] == 2 and result["units"] == "percent"
    assert set(result["per_class"]) <= set(CLASSES)


def test_the_result_names_what_no_image_read_means(coco_run: CocoRun, tmp_path: Path) -> None:
    from models.evaluation.shards import ShardsError

    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(ShardsError, match=r"shards .*empty.tar: no image read"):
        evaluate_model(
            OracleModel([], ["circle"]), eval_dataset([str(empty)], size=64), ["circle"],
            ["circle"], [], class_embeddings=torch.zeros(1, 8), device="cpu", progress=False,
        )  # fmt: skip


def test_the_progress_bar_knows_the_number_of_images(
    coco_run: CocoRun, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.evaluate import _bar_total

    dataset = eval_dataset(coco_run.shards, size=64)
    assert _bar_total(dataset, None) == N_IMAGES  # from the manifest's rows
    assert _bar_total(dataset, 3) == 3 and _bar_total(dataset, 10) == N_IMAGES
    assert _bar_total([], 5) == 5  # a plain list: only the limit is known
    targets = [t for _, t in dataset]
    evaluate_model(
        OracleModel(targets, [*BASE, *NOVEL]), dataset, [*BASE, *NOVEL], BASE, NOVEL,
        class_embeddings=torch.zeros(4, 8), device="cpu", batch_size=2, progress=True,
    )  # fmt: skip
    assert f"{N_IMAGES}/{N_IMAGES}" in capsys.readouterr().err  # tqdm's total, hence its ETA


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
    plot = tmp_path / "eval" / "per_class.png"
    detections = tmp_path / "eval" / "detections.json"
    # A fixed-class detector (MaskX R-CNN) is asked for its own classes only.
    fixed = ARCHITECTURES[arch].fixed_classes
    novel = "triangle,star" if fixed else "triangle,star,dragon"
    status = main(
        [
            "--checkpoint", str(checkpoint),
            "--shards", coco_run.shards[0], "--shards", coco_run.shards[1],
            "--base-classes", "circle,square", "--novel-classes", novel,
            "--image-size", "128", "--batch-size", "2", "--limit", "3",
            "--score-threshold", "0.01", "--nms-threshold", "0.6", "--per-class",
            "--output", str(out), "--plot", str(plot), "--detections", str(detections),
            "--device", "cpu",
        ]
    )  # fmt: skip
    assert status == 0
    captured = capsys.readouterr()
    printed = captured.out
    for word in ("mask AP", "box AP50", "OID mask AP50", "all", "base", "novel", "AP in %"):
        assert word in printed
    result = json.loads(out.read_text())
    assert result["num_images"] == 3 and result["units"] == "percent"
    assert result["image_size"] == 128
    assert "3/3" in captured.err  # the bar's total: --limit under the manifests' 4 images
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
            assert value is None or 0.0 <= value <= 100.0
        for iou_type in ("segm", "bbox"):
            assert {"AP", "AP50", "AP75", "num_gt"} <= set(result["coco"][iou_type][subset])
    assert result["coco"]["segm"]["all"]["num_gt"] > 0
    # --per-class printed one row per class present, the JSON holds the same table.
    assert set(result["per_class"]) == set(result["category_ids"])
    for name, entry in result["per_class"].items():
        assert any(line.startswith(name) and entry["part"] in line for line in printed.splitlines())
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 300
    if arch == "fcos-mo":  # --quiet: no bar
        argv = ["--checkpoint", str(checkpoint), "--shards", coco_run.shards[0],
                "--base-classes", "circle,square", "--novel-classes", novel, "--image-size",
                "128", "--limit", "1", "--device", "cpu", "--quiet"]  # fmt: skip
        assert main(argv) == 0
        assert "1/1" not in capsys.readouterr().err
    written = json.loads(detections.read_text())
    assert all(isinstance(d["segmentation"]["counts"], str) for d in written)
    assert {d["image_id"] for d in written} <= {i["id"] for i in coco_run.instances["images"]}
    if fixed:  # a class the checkpoint does not have is a usage error naming its classes
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "--checkpoint", str(checkpoint), "--shards", coco_run.shards[0],
                    "--base-classes", "circle", "--novel-classes", "dragon", "--device", "cpu",
                ]
            )  # fmt: skip
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "['dragon'] are not classes of this checkpoint" in err and "circle" in err


def test_command_line_rejects_bad_class_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--checkpoint", "x", "--shards", "y"],  # neither --class-split nor classes
        ["--checkpoint", "x", "--shards", "y", "--class-split", "coco_voc", "--base-classes", "a"],
        ["--checkpoint", "x", "--shards", "y", "--base-classes", "a", "--novel-classes", "a"],
        ["--checkpoint", "x", "--shards", "y", "--base-classes", "a,,b", "--novel-classes", "c"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "both base and novel" in err and "empty name" in err


def test_old_flag_spellings_still_work(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--checkpoint", "c.pt", "--shards", "s", "--split", "coco_voc", "--size", "64",
        "--workers", "2", "--out", "r.json", "--results-json", "d.json",
    ]  # fmt: skip
    args = flags.parse_args(build_parser(), argv)
    assert (args.class_split, args.image_size, args.num_workers) == ("coco_voc", 64, 2)
    assert (args.output, args.detections) == ("r.json", "d.json")
    notes = capsys.readouterr().err
    for old, new in (("--split", "--class-split"), ("--size", "--image-size"),
                     ("--out", "--output"), ("--workers", "--num-workers")):  # fmt: skip
        assert f"{old} is now spelled {new}" in notes


def test_help_names_every_flag_with_a_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--checkpoint", "--shards", "--class-split", "--base-classes", "--novel-classes",
        "--image-size", "--batch-size", "--num-workers", "--limit", "--nms-threshold",
        "--score-threshold", "--output", "--per-class", "--plot", "--detections", "--submission",
        "--hierarchy", "--group-of-weight", "--device",
    ):  # fmt: skip
        assert flag in text
    assert "--results-json" not in text  # the old spelling of --detections: hidden
    for action in build_parser()._actions:
        assert action.help, action.option_strings
