"""Tests for models/evaluation/plot.py and the per-class table of models/evaluation/collect.py:
the per-class mask AP50 chart, sorted, base and novel in two colours, standing or lying bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.evaluation.collect import format_per_class, per_class
from models.evaluation.plot import COLOURS, VERTICAL_MAX, _values, plot_per_class_ap50


def _table(n: int) -> dict[str, dict]:
    return {
        f"class {i:02d}": {
            "part": "base" if i % 2 else "novel",
            "mask_AP50": None if i == 0 else float(i * 97 % 100),
        }
        for i in range(n)
    }


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_values_are_sorted_and_classes_without_ground_truth_left_out() -> None:
    rows = _values(_table(5), "mask_AP50")
    assert rows == [("class 01", "base", 97.0), ("class 02", "novel", 94.0),
                    ("class 03", "base", 91.0), ("class 04", "novel", 88.0)]  # fmt: skip


@pytest.mark.parametrize("n", [6, VERTICAL_MAX + 15])
def test_the_chart_is_a_png_with_both_colours(n: int, tmp_path: Path) -> None:
    path = plot_per_class_ap50(_table(n), tmp_path / "sub" / "chart.png", title="test")
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert (height > width) == (n > VERTICAL_MAX)  # many classes: horizontal bars, a tall chart
    for part in ("base", "novel"):
        near = np.abs(pixels - _rgb(COLOURS[part])).sum(axis=1) < 30
        assert near.sum() > 200, part  # bars (and the legend patch) in the part's colour


def test_nothing_to_draw_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no class has a mask_AP50"):
        plot_per_class_ap50({"dog": {"part": "base", "mask_AP50": None}}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_per_class_joins_both_protocols_in_the_split_order() -> None:
    coco = {
        "segm": {"per_class": {7: {"name": "dog", "AP": 40.0, "AP50": 60.0, "num_gt": 3},
                               2: {"name": "cat", "AP": None, "AP50": None, "num_gt": 0}}},
        "bbox": {"per_class": {7: {"name": "dog", "AP": 50.0, "AP50": 70.0, "num_gt": 3},
                               2: {"name": "cat", "AP": None, "AP50": None, "num_gt": 0}}},
    }  # fmt: skip
    oid = {"per_class": {7: {"name": "dog", "ap50": 65.0, "num_gt": 3}, 2: {"name": "cat",
           "ap50": None, "num_gt": 0}}}  # fmt: skip
    table = per_class(coco, oid, {"dog": 7, "cat": 2}, novel=["cat"])
    assert list(table) == ["dog", "cat"]
    assert table["dog"] == {
        "category_id": 7, "part": "base", "num_gt": 3, "mask_AP": 40.0, "mask_AP50": 60.0,
        "box_AP": 50.0, "box_AP50": 70.0, "oid_mask_AP50": 65.0,
    }  # fmt: skip
    assert table["cat"]["part"] == "novel" and table["cat"]["mask_AP50"] is None
    text = format_per_class({"per_class": table})
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["class", "(AP"]
    assert lines[2].split() == ["dog", "base", "3", "40.0", "60.0", "50.0", "70.0", "65.0"]
    assert lines[3].split() == ["cat", "novel", "0", "-", "-", "-", "-", "-"]
