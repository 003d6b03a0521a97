"""Tests for models/plot.py: curves of tiny metrics.jsonl files written here (both formats) drawn
into PNGs that PIL opens, and the errors that name the run directory or the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from models.plot import PlotError, available_metrics, load_run, main, plot_runs, series


def _line(step: int, coco_mask: float, fg: float | None) -> dict[str, Any]:
    return {
        "format": 2, "step": step, "lr": 0.01, "steps": 2, "loss_total": 3.0 / step,
        "fg_accuracy": fg, "time_per_step": 0.1, "samples_per_s": 20.0,
        "sources": {
            "coco": {"steps": 1, "loss_cls": 2.0 / step, "loss_mask": coco_mask,
                     "loss_total": 2.0 / step + coco_mask, "fg_accuracy": fg,
                     "fg_positives": 10.0},
            "alp": {"steps": 1, "loss_cls": 1.0 / step, "loss_mask": 0.0,
                    "loss_total": 1.0 / step, "fg_accuracy": fg, "fg_positives": 5.0},
        },
        "epochs": {"coco": 0, "alp": 0},
        "data_errors": {"coco": {"bad_shards": 0, "bad_samples": 0}},
    }  # fmt: skip


def _run(root: Path, name: str, lines: list[dict[str, Any]]) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    a = _run(tmp_path, "a", [_line(s, 0.7 - 0.01 * s, 0.1 * s / 2) for s in (2, 4, 6, 8)])
    old = [  # a run written before format 2: one step's losses and its source per line
        {"step": s, "lr": 0.01, "loss_cls": 1.0 / s, "loss_mask": 0.5, "loss_total": 1.5,
         "source": ("coco", "alp")[s % 2]}
        for s in (1, 2, 3)
    ]  # fmt: skip
    return [a, _run(tmp_path, "b", old)]


def test_series_per_source_and_over_all_sources(two_runs: list[Path]) -> None:
    run = load_run(two_runs[0])
    mask = series(run, "loss_mask")
    assert mask["coco"] == ([2, 4, 6, 8], pytest.approx([0.68, 0.66, 0.64, 0.62]))
    # The ALPs train no mask: a term that is 0 in every line is not drawn as a learnt loss.
    assert "alp" not in mask and "all sources" not in mask
    assert series(run, "fg_accuracy")["all sources"][1] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    old = load_run(two_runs[1])
    assert series(old, "loss_cls")["alp"][0] == [1, 3]  # steps of the source that drew
    assert series(old, "fg_accuracy") == {}  # not logged then
    assert available_metrics([run, old])[:2] == ["loss_total", "fg_accuracy"]


def test_two_runs_draw_into_one_png(two_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "curves.png"
    assert main([*map(str, two_runs), "--output", str(out), "--smooth", "0.5"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 800 <= width <= 3000 and 400 <= height <= 3000
        lo, hi = image.convert("L").getextrema()
        assert hi - lo > 100  # curves and text on the page, not a blank one


def test_chosen_metrics_and_the_default_output(two_runs: list[Path]) -> None:
    assert main([str(two_runs[0]), "--metrics", "loss_mask,fg_accuracy", "--log-y"]) == 0
    with Image.open(two_runs[0] / "curves.png") as image:
        width, _ = image.size
    full = plot_runs([two_runs[0]], two_runs[0] / "all.png")
    with Image.open(full) as image:
        assert image.size[0] > width  # 2 panels side by side vs 3 columns


def test_runs_that_cannot_be_drawn_are_named(
    two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(PlotError, match=r"nowhere: no such run directory"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(PlotError, match=r"bare: no metrics\.jsonl here"):
        load_run(tmp_path / "bare")
    empty = _run(tmp_path, "empty", [])
    with pytest.raises(PlotError, match=r"empty/metrics\.jsonl: empty"):
        load_run(empty)
    broken = _run(tmp_path, "broken", [_line(2, 0.5, 0.1)])
    with (broken / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "sources": {"co\n')
    assert main([str(two_runs[0]), str(broken), "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "broken/metrics.jsonl, line 2: not JSON" in err
    assert not (tmp_path / "x.png").exists()
    assert main([str(two_runs[0]), "--metrics", "loss_nothing"]) == 2
    assert "--metrics: ['loss_nothing'] not in the runs' metrics.jsonl" in capsys.readouterr().err
    assert main([str(two_runs[0]), "--smooth", "1"]) == 2
    assert "--smooth" in capsys.readouterr().err


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--output", "--metrics", "--smooth", "--log-y", "--title", "RUN_DIR"):
        assert flag in text, flag
    assert "fg_accuracy" in text and "default" in text
