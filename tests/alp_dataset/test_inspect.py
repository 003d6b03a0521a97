"""Tests for alp_dataset/inspect.py and alp_dataset/render.py: the summary on a hand-written run
with known counts, the drawing on hand-made data, then the command on a real pipeline run."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from PIL import Image

from alp_dataset.inspect import (
    InspectError,
    area_histogram,
    find_image_file,
    format_histogram,
    load_ground_truth,
    load_traces,
    main,
    render_image,
    summary,
)
from alp_dataset.query import AlpStore, alps_of_image
from alp_dataset.render import PALETTE, AlpBox, GtInstance, Trace, render_alps

WorldRun = Any  # the world_run fixture (tests/alp_dataset/conftest.py)
REPO = Path(__file__).resolve().parents[2]


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------
# Summary


def test_area_histogram_counts_every_bin(tiny_run: Path) -> None:
    # Box areas of the tiny run: 0.125, 0.08, 1.0, 0.0, 0.125, 0.04.
    histogram = area_histogram(AlpStore.open(tiny_run), bins=10)
    assert histogram.columns == ["lo", "hi", "n_alps"]
    assert histogram["n_alps"].to_list() == [3, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert histogram["lo"][3] == pytest.approx(0.3) and histogram["hi"][9] == 1.0
    assert area_histogram(AlpStore.open(tiny_run), bins=2)["n_alps"].to_list() == [5, 1]
    with pytest.raises(ValueError, match="bins"):
        area_histogram(AlpStore.open(tiny_run), bins=0)


def test_format_histogram_scales_bars_to_the_largest_bin() -> None:
    histogram = pl.DataFrame({"lo": [0.0, 0.5], "hi": [0.5, 1.0], "n_alps": [10, 3]})
    lines = format_histogram(histogram, width=10)
    assert lines == [
        "  [0.00, 0.50)  ▇▇▇▇▇▇▇▇▇▇  10",
        "  [0.50, 1.00]  ▇▇▇          3",
    ]


def test_summary_shows_counts_top_phrases_and_the_histogram(tiny_run: Path) -> None:
    text = summary(AlpStore.open(tiny_run), top=2)
    lines = text.splitlines()
    assert lines[0] == f"ALP run {tiny_run}"
    assert "encoder toy:keywords, 4-d" in text
    assert any(line.split()[:3] == ["dead", "letters", "2"] for line in lines)
    assert "json_decode 2" in text and "wrong_type" not in text  # zero reasons are left out
    assert any(line.split()[:2] == ["ALPs", "6"] for line in lines)
    top = lines.index("top 2 phrases")
    assert lines[top + 2].split() == ["red", "circle", "3", "2"]
    assert lines[top + 3].split() == ["dog", "2", "2"]
    bins = [line for line in lines if line.startswith("  [")]
    assert len(bins) == 10
    assert sum(int(line.split()[-1]) for line in bins) == 6


def test_main_prints_the_summary_or_a_clear_error(tiny_run: Path, tmp_path: Path) -> None:
    status, out, _ = run_main(str(tiny_run), "--top", "1")
    assert status == 0 and "top 1 phrases" in out
    status, _, err = run_main(str(tmp_path))
    assert status == 1 and "not an ALP output directory" in err
    with pytest.raises(SystemExit):
        run_main(str(tiny_run), "--render", "1")  # --render needs --output


# ---------------------------------------------------------------------------------------------
# Drawing


def _trace() -> Trace:
    t = np.linspace(0.0, 4.0, 41)  # (P,)
    x = 0.1 + 0.8 * t / 4  # left to right
    y = np.full_like(t, 0.5)
    return Trace(annotator_id=1, segments=((x, y, t),))


def test_render_alps_draws_boxes_in_their_colours_and_a_legend() -> None:
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    alps = [
        AlpBox(1, 0, "red circle", (0.1, 0.2, 0.5, 0.8), 1.0, 1.5, 10),
        AlpBox(1, 1, "dog", (0.6, 0.1, 0.9, 0.9), 2.5, 3.0, 8),
    ]
    mask = np.zeros((100, 200), dtype=bool)
    mask[20:60, 130:170] = True
    gt = [GtInstance("dog", (130.0, 20.0, 170.0, 60.0), mask)]
    picture = render_alps(
        image, alps, traces=[_trace()], ground_truth=gt, title="t", notes=["a note"], size=400
    )
    pixels = np.asarray(picture)  # (H, W, 3)
    assert picture.width > 400 and picture.height >= 200  # the image at 400 x 200 plus a legend

    def colours_on_box_edge(box: tuple[float, ...]) -> set[tuple[int, ...]]:
        # The image is pasted at (12, 34): MARGIN, then one title line.
        x0, y0 = 12 + round(box[0] * 400), 34 + round(box[1] * 200)
        y1 = 34 + round(box[3] * 200)
        return {tuple(pixels[y, x0]) for y in range(y0 + 20, y1 - 5)}

    assert PALETTE[0] in colours_on_box_edge(alps[0].box_xyxy_norm)
    assert PALETTE[1] in colours_on_box_edge(alps[1].box_xyxy_norm)


def test_render_alps_without_traces_or_ground_truth() -> None:
    image = Image.new("RGB", (64, 128), (0, 0, 0))
    picture = render_alps(image, [AlpBox(1, 0, "x" * 200, (0, 0, 1, 1), 0, 1, 2)], size=256)
    assert picture.height >= 256  # the long side (the height) is scaled to 256


# ---------------------------------------------------------------------------------------------
# Reading what a picture needs


def test_find_image_file_tries_the_pipelines_places(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "7.png").write_bytes(b"")
    (tmp_path / "8.jpg").write_bytes(b"")
    assert find_image_file(tmp_path, "ds", "7") == tmp_path / "ds" / "7.png"
    assert find_image_file(tmp_path, "ds", "8") == tmp_path / "8.jpg"
    with pytest.raises(InspectError, match=r"no image file for ds/9 .*ds/9\.jpg.*9\.png"):
        find_image_file(tmp_path, "ds", "9")


def _narrative(image_id: str, annotator_id: int, traces: bool = True) -> str:
    points = [{"x": 0.1, "y": 0.2, "t": 0.0}, {"x": 0.3, "y": 0.4, "t": 0.5}]
    return json.dumps(
        {
            "dataset_id": "d",
            "image_id": image_id,
            "annotator_id": annotator_id,
            "caption": "a red circle",
            "timed_caption": [],
            "traces": [points] if traces else [],
        }
    )


def test_load_traces_reads_the_named_lines_and_notes_what_it_cannot(tmp_path: Path) -> None:
    path = tmp_path / "narratives.jsonl"
    lines = [_narrative("2", 1), '{"broken": "2"', _narrative("2", 2, traces=False)]
    path.write_text("\n".join(lines) + "\n")
    rows = pl.DataFrame(
        {
            "dataset_id": ["d"] * 3,
            "image_id": ["2"] * 3,
            "annotator_id": [1, 1, 3],
            "source_file": [str(path)] * 3,
            "source_line": [1, 1, 1],
        }
    )
    traces, notes = load_traces(rows)
    assert [t.annotator_id for t in traces] == [1]
    np.testing.assert_array_equal(traces[0].segments[0][0], [0.1, 0.3])
    assert len(notes) == 1
    assert "annotator 3" in notes[0] and "another narrative" in notes[0]
    # A file found nowhere is an error naming it, the paths tried and --narratives.
    gone = rows.with_columns(pl.lit("gone.jsonl").alias("source_file"))
    with pytest.raises(InspectError, match=r"gone\.jsonl \(tried gone\.jsonl, .*--narratives"):
        load_traces(gone, search_roots=[tmp_path])
    # A relative source file is looked up under the search roots.
    moved = rows.with_columns(pl.lit("narratives.jsonl").alias("source_file"))
    traces, _ = load_traces(moved, search_roots=[tmp_path / "elsewhere", tmp_path])
    assert [t.annotator_id for t in traces] == [1]
    # From a narratives file: every narrative of the image, broken lines skipped.
    traces, notes = load_traces(rows, narratives=path)
    assert [t.annotator_id for t in traces] == [1]
    assert len(notes) == 1 and "has no trace" in notes[0]


def test_load_ground_truth_decodes_polygons_and_rle(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    rle_mask = np.zeros((10, 20), dtype=np.uint8)
    rle_mask[2:4, 5:9] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    instances = {
        "images": [{"id": 42, "file_name": "000042.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {
                "image_id": 42,
                "category_id": 1,
                "bbox": [1, 1, 4, 4],
                "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]],
            },
            {
                "image_id": 42,
                "category_id": 2,
                "bbox": [5, 2, 4, 2],
                "segmentation": {"size": [10, 20], "counts": rle["counts"].decode()},
            },
            {"image_id": 7, "category_id": 2, "bbox": [0, 0, 1, 1], "segmentation": []},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    gt, notes = load_ground_truth(path, "000042")  # by file name
    assert notes == [] and [g.name for g in gt] == ["dog", "cat"]
    assert gt[0].box_xyxy_px == (1, 1, 5, 5)
    assert gt[0].mask is not None and gt[0].mask.shape == (10, 20) and gt[0].mask[3, 3]
    np.testing.assert_array_equal(gt[1].mask, rle_mask.astype(bool))
    assert [g.name for g in load_ground_truth(path, "42")[0]] == ["dog", "cat"]  # by id
    assert load_ground_truth(path, "43") == ([], [f"no image 43 in {path}"])


def test_ground_truth_masks_that_are_no_valid_mask_are_left_out(tmp_path: Path) -> None:
    bad = [
        {"size": [10, 20], "counts": "0"},  # runs that do not cover the image: an overrun before
        [[0, 0, 1e9, 0, 1e9, 1e9]],  # pycocotools drew it point by point and crashed
    ]
    instances = {
        "images": [{"id": 42, "file_name": "000042.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": [
            {"image_id": 42, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": seg}
            for seg in bad
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    gt, _ = load_ground_truth(path, "42")
    assert [(g.name, g.mask) for g in gt] == [("dog", None), ("dog", None)]  # boxes kept


def test_an_unknown_image_is_refused_with_ids_that_exist(tiny_run: Path) -> None:
    store = AlpStore.open(tiny_run)
    with pytest.raises(InspectError, match=r"'404' has no ALP .*4 image\(s\) have, e\.g\. 1 "):
        render_image(store, "404", images=None)
    with pytest.raises(InspectError, match=r"several datasets .* --dataset-id"):
        render_image(store, "1", images=None)  # image "1" is in datasets d and e
    status, _, err = run_main(str(tiny_run), "--render", "404", "--output", "x.png")
    assert status == 1 and "some" not in err and "e.g. 1 (dataset d)" in err


def test_a_missing_image_file_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    status, _, err = run_main(
        str(tiny_run),
        "--render",
        "2",
        "--images",
        str(tmp_path),
        "--output",
        str(tmp_path / "x.png"),
    )
    assert status == 1 and "no image file for d/2" in err


def _write_tiny_narratives(store: AlpStore, path: Path) -> None:
    """The narratives the tiny run's ALPs name, at the lines they name."""
    rows = store.alps.select("image_id", "annotator_id", "source_line").unique().collect()
    lines = ["{}"] * int(rows["source_line"].max())
    for image_id, annotator_id, line in rows.iter_rows():
        lines[line - 1] = _narrative(image_id, annotator_id)
    path.write_text("\n".join(lines) + "\n")


def test_render_finds_the_narratives_beside_the_output_from_any_folder(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AlpStore.open(tiny_run)  # its ALPs name "narratives.jsonl", relative
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    picture = tmp_path / "x.png"
    status, _, err = run_main(str(tiny_run), "--render", "3", "--output", str(picture))
    assert status == 1 and not picture.exists()
    assert "narratives of d/3 cannot be found: narratives.jsonl (tried narratives.jsonl, " in err
    assert f"{tiny_run / 'narratives.jsonl'}, {tmp_path / 'narratives.jsonl'}" in err
    assert "--narratives" in err
    # Where the run was started (the output's parent folder) holds them: found from here.
    _write_tiny_narratives(store, tmp_path / "narratives.jsonl")
    status, stdout, err = run_main(str(tiny_run), "--render", "3", "--output", str(picture))
    assert status == 0, err
    assert stdout.startswith(f"wrote {picture}")
    traces, notes = load_traces(alps_of_image(store, "3").collect(), search_roots=[tmp_path])
    assert traces and notes == []


def test_old_flag_spellings_still_work_with_a_note(tiny_run: Path, tmp_path: Path) -> None:
    _write_tiny_narratives(AlpStore.open(tiny_run), tiny_run / "narratives.jsonl")
    picture = tmp_path / "x.png"
    status, _, err = run_main(
        str(tiny_run), "--render", "3", "--out", str(picture), "--size", "256"
    )
    assert status == 0, err
    assert "--out is now spelled --output" in err and "--size is now spelled --image-size" in err
    assert max(Image.open(picture).size) >= 256


def test_without_images_traces_and_boxes_go_on_a_grey_canvas(tiny_run: Path) -> None:
    store = AlpStore.open(tiny_run)
    _write_tiny_narratives(store, tiny_run / "narratives.jsonl")
    picture = render_image(store, "3", images=None)
    assert picture.width > 768
    assert picture.getpixel((14, 36)) == (96, 96, 96)  # inside the canvas, outside the box


# ---------------------------------------------------------------------------------------------
# A real run


@pytest.mark.slow
def test_traces_come_from_the_files_the_alps_name(world_run: WorldRun) -> None:
    store = AlpStore.open(world_run.out)
    first = store.alps.select("image_id").head(1).collect().item()
    rows = alps_of_image(store, first).collect()
    traces, notes = load_traces(rows)
    assert notes == []
    assert sorted(t.annotator_id for t in traces) == sorted(set(rows["annotator_id"]))
    again, notes = load_traces(rows, narratives=world_run.world.narratives)
    assert notes == [] and len(again) == len(traces)
    np.testing.assert_array_equal(again[0].segments[0][0], traces[0].segments[0][0])


@pytest.mark.slow
def test_render_an_image_of_a_real_run(world_run: WorldRun, tmp_path: Path) -> None:
    store = AlpStore.open(world_run.out)
    image_id = store.alps.select("image_id").head(1).collect().item()
    out = tmp_path / "pictures" / "x.png"
    status, stdout, err = run_main(
        str(world_run.out), "--render", image_id,
        "--images", str(world_run.world.images),
        "--ground-truth", str(world_run.world.instances),
        "--output", str(out), "--image-size", "512",
    )  # fmt: skip
    assert status == 0, err
    assert stdout.startswith(f"wrote {out}")
    picture = Image.open(out)
    assert picture.format == "PNG" and picture.width > 512 and picture.height >= 512


@pytest.mark.slow
def test_the_command_line_module_runs(world_run: WorldRun) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "alp_dataset.inspect", str(world_run.out), "--top", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "top 3 phrases" in done.stdout and "box area" in done.stdout
