"""Tests for models/run_log.py: the per-source window means of metrics.jsonl (on one process and
over two gloo ranks), reading old and damaged files, the TensorBoard scalars (read back from
the event files) and the note when tensorboard is missing, the banner and the summary."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from models.run_log import (
    METRICS_FORMAT,
    MetricsError,
    SourceLine,
    Window,
    banner,
    open_tensorboard,
    read_metrics,
    scalars_of,
    summary,
    write_scalars,
)

CPU = torch.device("cpu")


def _losses(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in values.items()}


def _fg(accuracy: float, positives: float) -> dict[str, torch.Tensor]:
    return {"fg_accuracy": torch.tensor(accuracy), "fg_positives": torch.tensor(positives)}


def _record(window: Window, step: int = 4) -> dict[str, Any]:
    return window.record(
        step=step,
        lr=0.1,
        seconds_per_step=0.5,
        batch_size=8,
        epochs={"coco": 0, "alp": 1},
        data_errors={"coco": {"bad_shards": 0, "bad_samples": 2}, "alp": {}},
    )


def test_each_source_gets_the_mean_of_its_own_steps() -> None:
    window = Window(["coco", "alp"], CPU)
    # Alternating sources: ALPs have no masks, and must not pull COCO's loss_mask to 0.
    window.add("coco", _losses(loss_cls=1.0, loss_mask=0.6), _fg(0.5, 10))
    window.add("alp", _losses(loss_cls=3.0, loss_mask=0.0), _fg(0.0, 30))
    window.add("coco", _losses(loss_cls=2.0, loss_mask=0.4), _fg(1.0, 30))
    window.add("alp", _losses(loss_cls=5.0, loss_mask=0.0), None)  # no positive counted
    record = _record(window)
    coco, alp = record["sources"]["coco"], record["sources"]["alp"]
    assert (coco["steps"], alp["steps"]) == (2, 2)
    assert coco["loss_mask"] == pytest.approx(0.5) and alp["loss_mask"] == 0.0
    assert (coco["loss_cls"], alp["loss_cls"]) == (pytest.approx(1.5), pytest.approx(4.0))
    assert coco["loss_total"] == pytest.approx(2.0)
    # Weighted by positives: (0.5 x 10 + 1.0 x 30) / 40; the ALP step without positives adds 0.
    assert coco["fg_accuracy"] == pytest.approx(35 / 40) and coco["fg_positives"] == 40
    assert alp["fg_accuracy"] == 0.0 and alp["fg_positives"] == 30
    assert record["fg_accuracy"] == pytest.approx(35 / 70)
    assert record["loss_total"] == pytest.approx((1.6 + 3.0 + 2.4 + 5.0) / 4)
    assert (record["format"], record["step"], record["steps"]) == (METRICS_FORMAT, 4, 4)
    assert record["samples_per_s"] == 16.0
    assert record["data_errors"] == {
        "coco": {"bad_samples": 2, "bad_shards": 0},
        "alp": {"bad_samples": 0, "bad_shards": 0},
    }
    json.dumps(record)  # a JSON line as it is

    # The next window starts afresh; a source without steps in it is left out.
    window.add("coco", _losses(loss_cls=7.0, loss_mask=0.1))
    after = _record(window, step=5)
    assert list(after["sources"]) == ["coco"] and after["sources"]["coco"]["steps"] == 1
    assert after["sources"]["coco"]["loss_cls"] == 7.0
    assert after["fg_accuracy"] is None and after["sources"]["coco"]["fg_accuracy"] is None


def test_a_step_with_other_losses_is_an_error_naming_both() -> None:
    window = Window(["coco"], CPU)
    window.add("coco", _losses(loss_cls=1.0, loss_mask=0.5))
    with pytest.raises(ValueError, match=r"\['loss_cls'\].*\['loss_cls', 'loss_mask'\]"):
        window.add("coco", _losses(loss_cls=1.0))


def _rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        window = Window(["coco", "alp"], CPU)
        if rank == 0:  # two COCO steps here, none of ALP
            window.add("coco", _losses(loss_cls=1.0), _fg(1.0, 10))
            window.add("coco", _losses(loss_cls=3.0), _fg(0.0, 10))
        else:  # one step of each
            window.add("coco", _losses(loss_cls=5.0), _fg(0.5, 20))
            window.add("alp", _losses(loss_cls=8.0), _fg(0.25, 4))
        record = window.record(
            step=2,
            lr=0.1,
            seconds_per_step=1.0,
            batch_size=4,
            epochs={},
            data_errors={"coco": {"bad_samples": rank + 1, "bad_shards": 0}, "alp": {}},
        )
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_over_two_ranks_the_means_weigh_each_step_once(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_rank, args=(init, str(tmp_path)), nprocs=2, join=True)
    a, b = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert a == b  # every rank holds the same line
    coco, alp = a["sources"]["coco"], a["sources"]["alp"]
    # ALP had no step on rank 0: its mean is rank 1's alone, not halved.
    assert (alp["steps"], alp["loss_cls"]) == (1, pytest.approx(8.0))
    # Three COCO steps weigh in its mean; its optimiser steps are the most a rank had (2).
    assert (coco["steps"], coco["loss_cls"]) == (2, pytest.approx(3.0))
    assert coco["fg_accuracy"] == pytest.approx((10 + 0 + 10) / 40)
    assert a["data_errors"]["coco"]["bad_samples"] == 3  # summed over the ranks


# ---------------------------------------------------------------------------------------------
# Reading metrics.jsonl


def test_lines_of_the_first_format_read_as_one_step_of_their_source(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    old = {"step": 1, "lr": 0.1, "loss_cls": 2.0, "loss_mask": 0.5, "loss_total": 2.5,
           "source": "coco", "time_per_step": 1.0}  # fmt: skip
    path.write_text(json.dumps(old) + "\n\n")
    (record,) = read_metrics(path)
    assert record["format"] == 1 and record["steps"] == 1
    assert record["sources"] == {
        "coco": {"steps": 1, "loss_cls": 2.0, "loss_mask": 0.5, "loss_total": 2.5,
                 "fg_accuracy": None, "fg_positives": 0.0},
    }  # fmt: skip


def test_a_damaged_line_is_named_with_its_file_and_number(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "sources": {}}\n{"step": 2, "sour\n')
    with pytest.raises(MetricsError, match=r"metrics\.jsonl, line 2: not JSON"):
        read_metrics(path)
    path.write_text('{"step": 1, "sources": {}}\n[1, 2]\n')
    with pytest.raises(MetricsError, match=r"line 2: expected a JSON object"):
        read_metrics(path)
    with pytest.raises(MetricsError, match=r"nowhere\.jsonl: cannot be read"):
        read_metrics(tmp_path / "nowhere.jsonl")


# ---------------------------------------------------------------------------------------------
# TensorBoard


def _line() -> dict[str, Any]:
    window = Window(["coco", "alp"], CPU)
    window.add("coco", _losses(loss_cls=1.0, loss_mask=0.6), _fg(0.5, 10))
    window.add("alp", _losses(loss_cls=3.0, loss_mask=0.0), _fg(0.25, 4))
    return _record(window, step=20)


def test_the_scalars_are_the_lines_values_under_source_tags() -> None:
    scalars = scalars_of(_line())
    assert scalars["coco/loss_mask"] == pytest.approx(0.6)
    assert scalars["alp/loss_mask"] == 0.0
    assert scalars["coco/fg_accuracy"] == 0.5
    assert scalars["train/lr"] == 0.1
    assert scalars["data_errors/coco/bad_samples"] == 2.0
    assert "coco/steps" not in scalars and "coco/fg_positives" not in scalars


def test_event_files_hold_the_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = open_tensorboard(tmp_path)
    assert writer is not None
    write_scalars(writer, _line())
    writer.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"coco/loss_mask", "alp/loss_cls", "coco/fg_accuracy", "train/loss_total"} <= tags
    (point,) = events.Scalars("coco/loss_mask")
    assert (point.step, point.value) == (20, pytest.approx(0.6))


def test_without_tensorboard_a_note_and_no_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replaces the module torch.utils.tensorboard with None in sys.modules, so that importing
    # it raises ImportError as on a machine without the tensorboard package.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    note = io.StringIO()
    assert open_tensorboard(tmp_path, stream=note) is None
    assert "TensorBoard event files are not written" in note.getvalue()
    assert "--no-tensorboard" in note.getvalue()
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# The banner and the summary


def test_the_banner_names_device_sources_encoder_and_start() -> None:
    text = banner(
        arch="fcos-mo",
        device=torch.device("cpu"),
        world_size=2,
        batch_size=8,
        sources=[
            SourceLine("coco", "coco", "out/coco", 3, 1200),
            SourceLine("alp", "alp", "out/alps/shards/{0..1}.tar", 2, None),
        ],
        text_encoder="minilm",
        start="--init-from base/last.pt (step 7 of --arch fcos-mo): all weights",
        first_step=0,
        last_step=100,
        run_dir=Path("runs/x"),
    )
    assert "--arch fcos-mo on cpu, world size 2 (batch 8: 4 per rank)" in text
    assert "source coco: COCO shards out/coco: 3 shard(s), 1,200 samples" in text
    assert "2 shard(s), unknown samples" in text
    assert "text encoder: minilm" in text and "base/last.pt (step 7" in text


def test_the_summary_gives_each_sources_last_losses_and_the_paths() -> None:
    line = _line()
    text = summary(
        step=20,
        steps_done=10,
        seconds=5.0,
        last_by_source={k: {**v, "step": 20} for k, v in line["sources"].items()},
        written={"metrics": "runs/x/metrics.jsonl"},
    )
    assert "done at step 20 (10 steps here, 0.500 s/step)" in text
    assert "coco (last window: 1 step to step 20): loss_cls 1.0000 loss_mask 0.6000" in text
    assert "fg_accuracy 0.500" in text
    assert "metrics: runs/x/metrics.jsonl" in text
