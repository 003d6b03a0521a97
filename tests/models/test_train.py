"""Tests for models/train.py, models/schedule.py and models/checkpoint.py: the learning-rate
schedule, the resumable data stream on toy loaders, checkpoints, then the command line on tiny
ALP and COCO shards made by the real pipelines (slow): a short run, exact resumption, and the
errors that name their flag."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from alp_curation.encoders import MINILM_ID
from alp_dataset.synthetic import write_world
from models.architectures import FCOSMOConfig, build_model
from models.config import config_to_dict
from models.engine.checkpoint import (
    CHECKPOINT_KEYS,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from models.engine.schedule import build_optimizer, build_scheduler, get_lr, parameter_groups
from models.train import DataStream, TrainError, describe_source, main

TINY_MODEL = FCOSMOConfig(backbone="resnet_small", fpn_channels=16, text_dim=384, mask_channels=8)
TINY_FLAGS = [
    "--backbone", "resnet_small", "--fpn-channels", "16", "--text-dim", "384",
    "--mask-channels", "8", "--image-size", "64", "--batch-size", "2", "--num-workers", "0",
    "--epoch-length", "3", "--lr", "0.01", "--warmup-steps", "2", "--steps", "4",
    "--log-every", "1", "--checkpoint-every", "2", "--no-progress",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Schedule and optimiser


def test_get_lr_warms_up_linearly_then_follows_a_cosine_to_zero() -> None:
    def lr(step: int) -> float:
        return get_lr(step, base_lr=0.05, warmup_steps=1000, total_steps=270_000)

    assert lr(0) == pytest.approx(0.05 * 0.001)
    assert lr(500) == pytest.approx(0.05 * (0.001 + 0.999 * 0.5))
    assert lr(1000) == pytest.approx(0.05)
    assert lr((1000 + 270_000) // 2) == pytest.approx(0.025, rel=1e-4)
    assert lr(270_000) == 0.0 and lr(300_000) == 0.0
    assert 0 < lr(269_999) < 1e-9
    values = [lr(s) for s in range(1000, 270_001, 1000)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert get_lr(0, base_lr=1.0, warmup_steps=0, total_steps=10) == 1.0
    with pytest.raises(ValueError, match="step"):
        lr(-1)


def test_the_scheduler_gives_each_step_the_rate_of_get_lr() -> None:
    param = nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    scheduler = build_scheduler(optimizer, base_lr=0.1, warmup_steps=3, total_steps=8)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [get_lr(s, base_lr=0.1, warmup_steps=3, total_steps=8) for s in range(10)]
    assert seen == pytest.approx(expected)


def test_no_weight_decay_on_norms_biases_and_scales() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False))
    model[1].weight.requires_grad_(False)  # frozen parameters are left out
    decay, no_decay = parameter_groups(model.named_parameters(), 1e-4)
    assert [p.shape for p in decay["params"]] == [(4, 3, 3, 3), (4, 4, 1, 1)]
    assert [p.shape for p in no_decay["params"]] == [(4,), (4,)]  # conv bias, BN bias
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (1e-4, 0.0)
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    adamw = build_optimizer(model, lr=1e-3, momentum=0.8, weight_decay=1e-4, optimizer="adamw")
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.999)
    assert [g["weight_decay"] for g in adamw.param_groups] == [1e-4, 0.0]
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0, optimizer="lamb")


# ---------------------------------------------------------------------------------------------
# The data stream, on toy loaders


class ToyDataset:
    """Epoch ``e`` of source ``tag`` has 1 + (e + offset) % 3 batches."""

    def __init__(self, tag: str, offset: int) -> None:
        self.tag, self.offset, self.epoch = tag, offset, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ToyLoader:
    def __init__(self, dataset: ToyDataset) -> None:
        self.dataset = dataset

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        d = self.dataset
        return iter([(d.tag, d.epoch, k) for k in range(1 + (d.epoch + d.offset) % 3)])


def toy_stream(n: int, pattern: tuple[int, int], state: Any = None) -> DataStream:
    loaders = [ToyLoader(ToyDataset(tag, i)) for i, tag in enumerate(("a", "b")[:n])]
    return DataStream(loaders, [lo.dataset.tag for lo in loaders], pattern=pattern, state=state)


@pytest.mark.parametrize(("n", "pattern"), [(1, (1, 1)), (2, (1, 1)), (2, (2, 1)), (2, (1, 3))])
def test_a_stream_rebuilt_from_its_state_goes_on_exactly(n: int, pattern: tuple[int, int]) -> None:
    reference = list(zip(range(40), toy_stream(n, pattern), strict=False))
    for cut in range(30):
        stream = toy_stream(n, pattern)
        it = iter(stream)
        for _ in range(cut):
            next(it)
        state = json.loads(json.dumps(stream.state_dict()))  # as a checkpoint keeps it
        resumed = toy_stream(n, pattern, state)
        got = [b for _, b in zip(range(10), resumed, strict=False)]
        assert got == [b for _, b in reference[cut : cut + 10]], (cut, state)


def test_the_stream_alternates_sources_in_the_pattern_and_names_them() -> None:
    batches = [b for _, b in zip(range(6), toy_stream(2, (2, 1)), strict=False)]
    assert [name for name, _ in batches] == ["a", "a", "b", "a", "a", "b"]
    assert [batch[:2] for _, batch in batches[:2]] == [("a", 0), ("a", 1)]  # epoch 0: 1 batch


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _config() -> dict[str, Any]:
    return {
        "arch": "fcos-mo",
        "model": config_to_dict(TINY_MODEL),
        "train": {},
        "text_encoder": MINILM_ID,
    }


def test_a_checkpoint_round_trips_and_loads_as_a_model_in_eval_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = build_scheduler(optimizer, base_lr=0.1, warmup_steps=2, total_steps=5)
    path = save_checkpoint(
        tmp_path / "run" / "step_0000003.pt",
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        step=3,
        config=_config(),
        extra={"data": {"epochs": [1]}},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json", "step_0000003.pt"]
    assert json.loads((path.parent / "config.json").read_text()) == _config()
    checkpoint = load_checkpoint(path)
    assert set(CHECKPOINT_KEYS) <= set(checkpoint)
    assert (checkpoint["step"], checkpoint["extra"]) == (3, {"data": {"epochs": [1]}})
    assert checkpoint["scaler"] is None
    loaded, config = load_model(path)
    assert config == _config()
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_ddp_wrapped_model_is_saved_unwrapped(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        wrapped = nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
        path = save_checkpoint(tmp_path / "c.pt", model=wrapped, step=0, config={})
    finally:
        dist.destroy_process_group()
    assert set(load_checkpoint(path)["model"]) == {"weight", "bias"}  # no "module." prefix


def test_unreadable_or_foreign_files_are_named_in_the_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=re.escape("garbage.pt: cannot be read")):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match=re.escape("foreign.pt: not a detector checkpoint")):
        load_checkpoint(foreign)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, model=nn.Linear(2, 2), step=0, config={})
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match=re.escape("truncated.pt")):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError, match=re.escape("missing.pt")):
        load_checkpoint(tmp_path / "missing.pt")


LEGACY = Path(__file__).parents[1] / "data" / "checkpoints"


def test_a_version_1_fcos_mo_checkpoint_loads_and_computes_the_same() -> None:
    # Written before models/ held several detectors (tests/data/checkpoints/README.md).
    golden = json.loads((LEGACY / "fcos_mo_v1_golden.json").read_text())
    checkpoint = load_checkpoint(LEGACY / "fcos_mo_v1.pt")
    assert checkpoint["config"]["arch"] == "fcos-mo" and checkpoint["step"] == 7
    assert "head.classifier.projection.weight" in checkpoint["model"]
    model, config = load_model(LEGACY / "fcos_mo_v1.pt")
    assert config["text_encoder"] == "minilm-test"
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8, generator=g)
    classes = nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    masks = torch.zeros(2, 128, 128, dtype=torch.bool)
    masks[0, 20:80, 15:60] = True
    masks[1, 45:100, 60:115] = True
    target = {
        "boxes_xyxy_px": torch.tensor([[10.0, 12.0, 70.0, 90.0], [50.0, 40.0, 120.0, 110.0]]),
        "masks": masks,
        "has_mask": torch.tensor([True, True]),
        "is_alp": torch.tensor([False, False]),
        "phrase_ids": torch.tensor([3, 5]),
        "text_embeddings": classes[:2],
    }
    model.train()
    torch.manual_seed(0)
    losses = {k: v.item() for k, v in model(images, [target]).items()}
    assert losses == pytest.approx(golden["losses"], rel=1e-5)
    model.eval()
    (det,) = model(images, class_embeddings=classes)
    assert det["scores"][:5].tolist() == pytest.approx(golden["scores_top5"], rel=1e-5)
    assert det["labels"][:5].tolist() == golden["labels_top5"]
    torch.testing.assert_close(det["boxes_xyxy_px"][:5], torch.tensor(golden["boxes_top5"]))
    sums = det["masks"][:5].sum(dim=(1, 2, 3)).tolist()
    assert sums == pytest.approx(golden["mask_sum_top5"], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Sources that are not training data (no pipeline run needed)


def test_sources_that_are_not_pipeline_outputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match=r"--shards .*nowhere: no such folder"):
        describe_source(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match=re.escape("no manifest.json")):
        describe_source(str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"files": {"shards": []}}')
    with pytest.raises(TrainError, match="lists no shards"):
        describe_source(str(tmp_path / "other"))


def test_main_reports_bad_input_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --output-dir, the old spelling of --output, still works (with a note).
    assert main([*TINY_FLAGS, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--shards" in err and "--output-dir is now spelled --output" in err
    argv = [*TINY_FLAGS, "--shards", str(tmp_path / "none"), "--output", str(tmp_path)]
    assert main(argv) == 2
    assert "--shards" in capsys.readouterr().err
    assert main(["--help"]) == 0


# ---------------------------------------------------------------------------------------------
# Training on shards made by the pipelines (slow)


@dataclass(frozen=True)
class Shards:
    alps: Path  # output of pipelines/extract_alps.py, with images
    coco: Path  # output of pipelines/build_coco_shards.py


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Shards:
    """Six synthetic images as ALP shards (MiniLM phrases) and COCO shards, three per shard."""
    from pipelines import build_coco_shards, extract_alps

    root = tmp_path_factory.mktemp("train_world")
    world = write_world(root / "world", 6, seed=0, image_size=(128, 96))
    assert world.images is not None
    common = ["--runner", "FnApiRunner", "--images", str(world.images), "--shard-size", "3"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = extract_alps.run(
            ["--input", str(world.narratives), "--output", str(root / "alps"),
             "--text-encoder", "minilm", *common]
        )  # fmt: skip
        assert status == 0
        status = build_coco_shards.run(
            ["--instances", str(world.instances), "--output", str(root / "coco"), *common]
        )
        assert status == 0
    return Shards(root / "alps", root / "coco")


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _metrics(run: Path) -> list[dict[str, Any]]:
    """The lines of a run logged every step (--log-every 1), each with its one source's means
    brought to the top level and the source's name as ``source``."""
    records = []
    for line in _lines(run):
        ((name, values),) = line["sources"].items()
        assert values["steps"] == 1, line
        records.append({**line, **values, "source": name})
    return records


@pytest.mark.slow
def test_a_short_run_writes_checkpoints_config_and_metrics(shards: Shards, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # The ALP source as a brace pattern of its shards, the COCO one as the output folder.
    pattern = str(shards.alps / "shards" / "shard-{000000..000001}.tar")
    argv = [*TINY_FLAGS, "--shards", str(shards.coco), "--shards", pattern]
    assert main([*argv, "--steps", "2", "--output", str(run)]) == 0
    names = sorted(p.name for p in run.iterdir())
    assert [n for n in names if not n.startswith("events.out.tfevents.")] == [
        "config.json", "last.pt", "metrics.jsonl", "step_0000002.pt",
    ]  # fmt: skip
    assert len(names) == 5  # and one TensorBoard event file
    config = json.loads((run / "config.json").read_text())
    assert config["text_encoder"] == MINILM_ID  # from the ALP manifest
    assert [s["kind"] for s in config["sources"]] == ["coco", "alp"]
    assert config["model"] == config_to_dict(TINY_MODEL)
    records = _metrics(run)
    assert [r["step"] for r in records] == [1, 2]
    assert [r["source"] for r in records] == ["coco", "alp"]  # --pattern 1 1
    for r in records:
        losses = ("loss_cls", "loss_box", "loss_centerness", "loss_mask")
        assert all(math.isfinite(r[k]) for k in losses)
        assert r["loss_total"] == pytest.approx(sum(r[k] for k in losses))
        assert r["time_per_step"] > 0 and r["samples_per_s"] > 0
        assert r["data_errors"]["coco"] == {"bad_shards": 0, "bad_samples": 0}
        assert 0 <= r["fg_accuracy"] <= 1 and r["fg_positives"] > 0
    assert records[1]["loss_box"] == 0.0  # ALPs train no box regression
    assert records[0]["lr"] == pytest.approx(0.01 * 0.001)
    model, saved = load_model(run / "last.pt")
    assert not model.training and saved == config
    assert load_checkpoint(run / "last.pt")["step"] == 2


@pytest.mark.slow
def test_each_line_holds_each_sources_mean_over_the_window(
    shards: Shards, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # The same run logged every step and every 4 steps: alternating sources, so each line of
    # the second holds both, each the mean of its own two steps.
    argv = [*TINY_FLAGS, "--shards", str(shards.coco), "--shards", str(shards.alps),
            "--steps", "8", "--checkpoint-every", "8"]  # fmt: skip
    every, window = tmp_path / "every", tmp_path / "window"
    assert main([*argv, "--output", str(every)]) == 0
    capsys.readouterr()
    assert main([*argv, "--output", str(window), "--log-every", "4"]) == 0
    err = capsys.readouterr().err
    steps = _metrics(every)
    lines = _lines(window)
    assert [r["step"] for r in lines] == [4, 8]
    losses = ("loss_cls", "loss_box", "loss_centerness", "loss_mask")
    for line in lines:
        assert line["format"] == 2 and line["steps"] == 4
        assert sorted(line["sources"]) == ["alp", "coco"]
        for name, values in line["sources"].items():
            assert values["steps"] == 2
            mine = [r for r in steps if r["source"] == name and 0 <= line["step"] - r["step"] < 4]
            assert len(mine) == 2
            for key in losses:
                assert values[key] == pytest.approx(sum(r[key] for r in mine) / 2, rel=1e-5)
            hits = sum(r["fg_accuracy"] * r["fg_positives"] for r in mine)
            assert values["fg_positives"] == sum(r["fg_positives"] for r in mine)
            assert values["fg_accuracy"] == pytest.approx(hits / values["fg_positives"])
        # The old bug logged the window's last step only, an ALP step here: no mask loss.
        assert line["sources"]["coco"]["loss_mask"] > 0
        assert line["sources"]["alp"]["loss_mask"] == 0
        assert line["loss_total"] == pytest.approx(
            sum(r["loss_total"] for r in steps if 0 <= line["step"] - r["step"] < 4) / 4,
            rel=1e-5,
        )
    # The same scalars in the TensorBoard event files beside metrics.jsonl.
    events = EventAccumulator(str(window))
    events.Reload()
    points = events.Scalars("coco/loss_mask")
    assert [p.step for p in points] == [4, 8]
    assert [p.value for p in points] == pytest.approx(
        [line["sources"]["coco"]["loss_mask"] for line in lines], rel=1e-6
    )
    assert "alp/fg_accuracy" in events.Tags()["scalars"]
    # The banner and the summary.
    assert "models.train: --arch fcos-mo on cpu, world size 1" in err
    assert f"source coco: COCO shards {shards.coco}: 2 shard(s), 6 samples" in err
    assert "text encoder: sentence-transformers" in err and "start: random weights" in err
    assert "done at step 8 (8 steps here" in err
    assert "coco (last window: 2 steps to step 8): loss_box" in err
    assert f"metrics: {window / 'metrics.jsonl'}" in err and f"TensorBoard: {window}" in err


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_resuming_gives_the_same_losses_and_weights(
    shards: Shards, tmp_path: Path, workers: int
) -> None:
    # --pattern 2 1 and 3 samples per epoch in batches of 2: the cut at step 2 falls inside a
    # round of the pattern, and the COCO source starts its second epoch at step 4.
    argv = [
        *TINY_FLAGS, "--shards", str(shards.coco), "--shards", str(shards.alps),
        "--pattern", "2", "1", "--num-workers", str(workers),
    ]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*argv, "--output", str(straight)]) == 0
    assert main([*argv, "--output", str(split), "--max-steps", "2"]) == 0
    assert [r["step"] for r in _metrics(split)] == [1, 2]
    assert main([*argv, "--output", str(split), "--resume", "auto"]) == 0
    a, b = _metrics(straight), _metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["source"] for r in a] == ["coco", "coco", "alp", "coco"]
    assert a[3]["epochs"]["coco"] == 1
    for ra, rb in zip(a[2:], b[2:], strict=True):
        for key in ("lr", "loss_cls", "loss_box", "loss_centerness", "loss_mask", "source"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), (ra["step"], key)
    final_a = load_checkpoint(straight / "last.pt")
    final_b = load_checkpoint(split / "last.pt")
    assert final_a["step"] == final_b["step"] == 4
    for key, value in final_a["model"].items():
        assert torch.allclose(value.float(), final_b["model"][key].float(), atol=1e-6), key
    assert final_a["extra"] == final_b["extra"]


@pytest.mark.slow
def test_bad_input_names_the_flag(
    shards: Shards, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--output", str(tmp_path / "run")]
    alps, coco = ["--shards", str(shards.alps)], ["--shards", str(shards.coco)]
    cases = [
        ([*alps, "--text-dim", "512"], "--text-dim is 512"),
        ([*alps, *coco, "--text-encoder", "open_clip:ViT-B-32:openai"], "--text-encoder"),
        ([*coco], "--text-encoder: no ALP output"),
        ([*alps, "--resume", str(tmp_path / "none.pt")], "--resume"),
        ([*alps, *coco, *alps], "--shards: at most two"),
        ([*alps, "--batch-size", "0"], "--batch-size"),
    ]
    for extra, message in cases:
        assert main([*TINY_FLAGS, *extra, *out]) == 2, extra
        assert message in capsys.readouterr().err, extra

    # An output folder with checkpoints is continued only when asked to.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"garbage")
    assert main([*TINY_FLAGS, *alps, *out]) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert main([*TINY_FLAGS, *alps, *out, "--resume", "auto"]) == 2
    assert "--resume: checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_alp_shards_without_images_are_refused(shards: Shards, tmp_path: Path) -> None:
    manifest = json.loads((shards.alps / "manifest.json").read_text())
    manifest["options"]["images"] = None
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "shards").symlink_to(shards.alps / "shards")
    with pytest.raises(TrainError, match="hold no images"):
        describe_source(str(tmp_path))


@pytest.mark.slow
def test_init_from_starts_with_another_runs_weights(
    shards: Shards, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alps, coco = ["--shards", str(shards.alps)], ["--shards", str(shards.coco)]
    base = tmp_path / "base"
    minilm = ["--text-encoder", "minilm"]  # COCO shards alone do not name an encoder
    assert main([*TINY_FLAGS, *coco, *minilm, "--steps", "2", "--output", str(base)]) == 0
    start = load_checkpoint(base / "last.pt")
    # Another seed, so that a random start would differ; the first step's rate is
    # lr x warm-up factor = 1e-5, so the weights stay those of the start.
    run = tmp_path / "run"
    argv = [*TINY_FLAGS, *coco, *alps, "--steps", "1", "--seed", "1", "--output", str(run)]
    assert main([*argv, "--init-from", str(base / "last.pt")]) == 0
    after = load_checkpoint(run / "last.pt")
    assert after["step"] == 1
    torch.manual_seed(1)
    fresh = dict(build_model(TINY_MODEL).named_parameters())
    distance = max((fresh[k] - start["model"][k]).abs().max().item() for k in fresh)
    assert distance > 0.1
    for key in fresh:  # parameters only: BN running statistics move in any training step
        assert torch.allclose(after["model"][key], start["model"][key], atol=1e-3), key
    assert json.loads((run / "config.json").read_text())["train"]["init_from"] == str(
        base / "last.pt"
    )

    # Flags that shape no weight may differ: a note names them.
    assert main([*argv[:-1], str(tmp_path / "tau"), "--init-from", str(base / "last.pt"),
                 "--tau", "0.05"]) == 0  # fmt: skip
    assert "tau: 0.01 -> 0.05" in capsys.readouterr().err

    # A checkpoint of another architecture, of another phrase encoder, or none at all.
    other = tmp_path / "other.pt"
    start["config"]["text_encoder"] = "open_clip:ViT-B-32:openai"
    torch.save(start, other)
    cases = [
        (["--init-from", str(base / "last.pt"), "--fpn-channels", "8"], "fpn_channels"),
        (["--init-from", str(other)], "open_clip:ViT-B-32:openai"),
        (["--init-from", str(tmp_path / "none.pt")], "no such file"),
    ]
    for i, (extra, message) in enumerate(cases):
        status = main([*argv[:-1], str(tmp_path / f"bad{i}"), *extra])
        assert status == 2, extra
        err = capsys.readouterr().err
        assert "--init-from" in err and message in err, err


# ---------------------------------------------------------------------------------------------
# Mask R-CNN* through the same command line (slow)

RCNN_FLAGS = ["--arch", "mask-rcnn-star", *TINY_FLAGS, "--box-head-dim", "32"]
RCNN_LOSSES = (
    "loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg", "loss_mask",
    "loss_image_labels",
)  # fmt: skip


@pytest.mark.slow
def test_a_short_mask_rcnn_star_run(shards: Shards, tmp_path: Path) -> None:
    from models.meta_arch.mask_rcnn_star import MaskRCNNStar

    run = tmp_path / "run"
    argv = [*RCNN_FLAGS, "--shards", str(shards.coco), "--shards", str(shards.alps)]
    assert main([*argv, "--steps", "2", "--output", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "mask-rcnn-star" and config["model"]["box_head_dim"] == 32
    records = _metrics(run)
    assert [r["source"] for r in records] == ["coco", "alp"]
    for r in records:
        assert all(math.isfinite(r[k]) for k in RCNN_LOSSES)
        assert r["loss_total"] == pytest.approx(sum(r[k] for k in RCNN_LOSSES))
    assert records[0]["loss_mask"] > 0 and records[1]["loss_mask"] == 0  # ALPs: no masks
    assert records[1]["loss_rpn_box_reg"] > 0  # ALP boxes train the RPN
    assert records[1]["loss_image_labels"] == 0
    model, saved = load_model(run / "last.pt")
    assert isinstance(model, MaskRCNNStar) and saved == config


@pytest.mark.slow
def test_alps_as_image_labels_train_only_the_image_label_loss(
    shards: Shards, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = [*RCNN_FLAGS, "--shards", str(shards.coco), "--shards", str(shards.alps),
            "--alp-supervision", "image-labels"]  # fmt: skip
    assert main([*argv, "--steps", "2", "--output", str(run)]) == 0
    coco, alp = _metrics(run)
    assert coco["loss_image_labels"] == 0 and coco["loss_box_reg"] > 0
    assert alp["loss_image_labels"] > 0
    for key in ("loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg", "loss_mask"):
        assert alp[key] == 0, key
    # FCOS-MO has no image-label loss; and the setting needs ALP shards.
    fcos = [*TINY_FLAGS, "--shards", str(shards.alps), "--alp-supervision", "image-labels"]
    assert main([*fcos, "--output", str(tmp_path / "fcos")]) == 2
    assert "--arch fcos-mo learns from boxes only" in capsys.readouterr().err
    coco_only = [
        *RCNN_FLAGS, "--shards", str(shards.coco), "--text-encoder", "minilm",
        "--alp-supervision", "image-labels", "--output", str(tmp_path / "c"),
    ]  # fmt: skip
    assert main(coco_only) == 2
    assert "no --shards source holds ALPs" in capsys.readouterr().err


@pytest.mark.slow
def test_resuming_a_mask_rcnn_star_run_gives_the_same_losses_and_weights(
    shards: Shards, tmp_path: Path
) -> None:
    argv = [*RCNN_FLAGS, "--shards", str(shards.coco), "--shards", str(shards.alps),
            "--pattern", "2", "1"]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*argv, "--output", str(straight)]) == 0
    assert main([*argv, "--output", str(split), "--max-steps", "2"]) == 0
    assert main([*argv, "--output", str(split), "--resume", "auto"]) == 0
    a, b = _metrics(straight), _metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a[2:], b[2:], strict=True):
        for key in ("lr", *RCNN_LOSSES, "source"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), (ra["step"], key)
    final_a = load_checkpoint(straight / "last.pt")
    final_b = load_checkpoint(split / "last.pt")
    for key, value in final_a["model"].items():
        assert torch.allclose(value.float(), final_b["model"][key].float(), atol=1e-6), key


@pytest.mark.slow
def test_checkpoints_of_another_architecture_are_refused(
    shards: Shards, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = ["--shards", str(shards.coco), "--text-encoder", "minilm"]
    fcos = tmp_path / "fcos"
    assert main([*TINY_FLAGS, *coco, "--steps", "1", "--output", str(fcos)]) == 0
    argv = [*RCNN_FLAGS, *coco, "--steps", "2"]
    assert main([*argv, "--output", str(tmp_path / "a"), "--init-from",
                 str(fcos / "last.pt")]) == 2  # fmt: skip
    assert "the checkpoint is of --arch fcos-mo, this run is --arch mask-rcnn-star" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--output", str(fcos), "--resume", "auto"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_a_truncated_last_checkpoint_names_one_that_can_be_resumed(
    shards: Shards, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = [*TINY_FLAGS, "--shards", str(shards.alps), "--output", str(run)]
    assert main([*argv, "--max-steps", "3"]) == 0  # checkpoints at steps 2 and 3
    assert sorted(p.name for p in run.glob("*.pt")) == [
        "last.pt", "step_0000002.pt", "step_0000003.pt",
    ]  # fmt: skip
    for name in ("last.pt", "step_0000003.pt"):  # a disk that filled up while saving
        path = run / name
        path.write_bytes(path.read_bytes()[:1000])
    assert main([*argv, "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "last.pt: cannot be read" in err
    assert f"resume from it with --resume {run / 'step_0000002.pt'}" in err
    assert main([*argv, "--resume", str(run / "step_0000002.pt")]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 4


def test_backbone_weights_that_are_no_state_dict_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.engine.distributed import setup_distributed
    from models.train import _build_model

    bad = tmp_path / "weights.pth"
    bad.write_text("not a state dict")
    cfg = FCOSMOConfig(backbone="resnet_small", fpn_channels=16, backbone_weights=str(bad))
    with pytest.raises(TrainError, match=r"weights\.pth.*not a torch state dict"):
        _build_model(cfg, setup_distributed("cpu"), seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--alp-supervision", "image-labels"]])
def test_two_ranks_of_mask_rcnn_star_under_torchrun(
    shards: Shards, tmp_path: Path, extra: list[str]
) -> None:
    # DDP without find_unused_parameters: a parameter left out of a step's graph (an image-label
    # batch trains no RPN, box regression or mask head) would stop the run at its next step.
    import subprocess
    import sys

    run = tmp_path / "run"
    argv = [*RCNN_FLAGS, "--shards", str(shards.coco), "--shards", str(shards.alps),
            "--steps", "3", "--output", str(run), "--device", "cpu", *extra]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--standalone", "-m", "models.train", *argv],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = _metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2


def test_a_shard_without_manifest_is_told_apart_past_a_corrupt_header(tmp_path: Path) -> None:
    import tarfile

    from alp_dataset.schema import SAMPLE_JSON

    folder = tmp_path / "shards"
    folder.mkdir()
    shard = folder / "shard-000000.tar"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("a.junk", b"x" * 10), (f"b.{SAMPLE_JSON}", b'{"embedding_dim": 384}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = bytearray(shard.read_bytes())
    raw[148:156] = b"0000000\0"  # the first header's checksum: tarfile would stop right there
    shard.write_bytes(bytes(raw))
    source = describe_source(str(shard))
    assert (source.kind, source.embedding_dim) == ("alp", 384)
    raw[1024 + 148 : 1024 + 156] = b"0000000\0"  # and the second: no sample left
    shard.write_bytes(bytes(raw))
    with pytest.raises(TrainError, match=r"holds no .* sample \(the shard is not a tar archive"):
        describe_source(str(shard))
