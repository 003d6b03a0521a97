"""MaskX R-CNN through the command line on COCO shards made by the real pipeline, with boxes
for every class and masks for some (``--base-classes ... --boxes-for split-classes``): a short
run, its class list checked against the shards, stage-wise training from a stage-one
checkpoint, exact resumption."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from alp_dataset.synthetic import write_world
from models.engine.checkpoint import load_checkpoint, load_model
from models.train import main

A, B = ("circle", "square"), ("triangle", "star")
FLAGS = [
    "--arch", "maskx-rcnn", "--backbone", "resnet_small", "--fpn-channels", "16",
    "--text-dim", "384", "--mask-channels", "8", "--box-head-dim", "32",
    "--text-encoder", "minilm", "--image-size", "64", "--batch-size", "2", "--num-workers", "0",
    "--epoch-length", "3", "--lr", "0.01", "--warmup-steps", "2", "--steps", "4",
    "--log-every", "1", "--checkpoint-every", "2", "--no-progress",
]  # fmt: skip
LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg", "loss_mask")


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic images as COCO shards: boxes for A and B, masks for A only."""
    from pipelines import build_coco_shards

    root = tmp_path_factory.mktemp("maskx_world")
    world = write_world(root / "world", 6, seed=0, image_size=(128, 96), classes=(*A, *B))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = build_coco_shards.run(
            ["--instances", str(world.instances), "--images", str(world.images),
             "--output", str(root / "coco"), "--runner", "FnApiRunner", "--shard-size", "3",
             "--base-classes", ",".join(A), "--novel-classes", ",".join(B),
             "--boxes-for", "split-classes"]
        )  # fmt: skip
    assert status == 0
    classes = json.loads((root / "coco" / "manifest.json").read_text())["classes"]
    assert (classes["mask"], classes["box_only"]) == (sorted(A), sorted(B))
    return root / "coco"


def _metrics(run: Path) -> list[dict[str, Any]]:
    """The lines of a run logged every step, its one source's means at the top level."""
    records = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        ((name, values),) = record["sources"].items()
        records.append({**record, **values, "source": name})
    return records


@pytest.mark.slow
def test_a_short_run_takes_its_classes_from_the_shards(
    partial: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.meta_arch.maskx_rcnn import MaskXRCNN

    run = tmp_path / "run"
    assert main([*FLAGS, "--shards", str(partial), "--steps", "2", "--output", str(run)]) == 0
    assert "note: --classes from" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "maskx-rcnn"
    assert config["model"]["classes"] == sorted((*A, *B))
    for record in _metrics(run):
        assert all(math.isfinite(record[k]) for k in LOSSES)
        assert record["loss_cls"] > 0
    model, saved = load_model(run / "last.pt")
    assert isinstance(model, MaskXRCNN) and saved == config
    assert model.class_names == tuple(sorted((*A, *B)))


@pytest.mark.slow
def test_shards_of_other_classes_are_refused_naming_the_difference(
    partial: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*FLAGS, "--shards", str(partial), "--output", str(tmp_path / "run")]
    assert main([*argv, "--classes", "circle", "square", "triangle", "dragon"]) == 2
    err = capsys.readouterr().err
    assert "not in --classes: ['star']" in err and "not in the shards: ['dragon']" in err
    assert main([*argv, "--train-stage", "masks"]) == 2
    assert "give --init-from a stage-one checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_stage_two_trains_the_masks_of_a_frozen_stage_one_detector(
    partial: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = ["--shards", str(partial)]
    one, two = tmp_path / "one", tmp_path / "two"
    stage_one = [*FLAGS, *shards, "--train-stage", "detection", "--mask-predictor",
                 "class-agnostic", "--steps", "2", "--output", str(one)]  # fmt: skip
    assert main(stage_one) == 0
    assert all("loss_mask" not in r for r in _metrics(one))
    stage_two = [*FLAGS, *shards, "--train-stage", "masks", "--mask-mlp", "--steps", "2",
                 "--init-from", str(one / "last.pt"), "--output", str(two)]  # fmt: skip
    assert main(stage_two) == 0
    assert "start afresh" in capsys.readouterr().err  # T and the MLP branch are new
    assert all(set(r) & set(LOSSES) == {"loss_mask"} for r in _metrics(two))
    before, after = load_checkpoint(one / "last.pt")["model"], load_checkpoint(two / "last.pt")
    for name, value in after["model"].items():
        if name.startswith(("backbone.", "rpn.", "roi_heads.")):
            assert torch.equal(value, before[name]), name
    assert any(n.startswith("transfer.") for n in after["model"])


@pytest.mark.slow
def test_resuming_gives_the_same_losses_and_weights(partial: Path, tmp_path: Path) -> None:
    argv = [*FLAGS, "--shards", str(partial), "--mask-mlp"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*argv, "--output", str(straight)]) == 0
    assert main([*argv, "--output", str(split), "--max-steps", "2"]) == 0
    assert main([*argv, "--output", str(split), "--resume", "auto"]) == 0
    a, b = _metrics(straight), _metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a[2:], b[2:], strict=True):
        for key in ("lr", *LOSSES):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), (ra["step"], key)
    final_a = load_checkpoint(straight / "last.pt")["model"]
    final_b = load_checkpoint(split / "last.pt")["model"]
    for key, value in final_a.items():
        assert torch.allclose(value.float(), final_b[key].float(), atol=1e-6), key


@pytest.mark.slow
def test_init_from_a_detector_of_other_classes_is_refused(
    partial: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alp_curation.encoders import MINILM_ID
    from models.architectures import MaskXRCNNConfig, build_model
    from models.config import config_to_dict
    from models.engine.checkpoint import save_checkpoint

    cfg = MaskXRCNNConfig(
        backbone="resnet_small", fpn_channels=16, text_dim=384, mask_channels=8,
        box_head_dim=32, classes=("circle", "square", "triangle"),
    )  # fmt: skip
    config = {"arch": "maskx-rcnn", "model": config_to_dict(cfg), "train": {},
              "text_encoder": MINILM_ID}  # fmt: skip
    other = save_checkpoint(tmp_path / "other.pt", model=build_model(cfg), step=0, config=config)
    argv = [*FLAGS, "--shards", str(partial), "--train-stage", "masks", "--init-from", str(other),
            "--output", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "its weights do not fit this model" in err and "classes" in err
