"""Tests for alp_dataset/query.py: a hand-written run with known answers, the query plans polars
makes of the helpers, then a real pipeline run and the examples of docs/querying.md.

The doc's outputs are re-accepted from a run of the embedded sample (the command in the doc) with

    PYTHONPATH=. .venv/bin/python tests/alp_dataset/test_query.py --accept-doc OUT_DIR WORLD_DIR

(WORLD_DIR: `python -m alp_dataset.synthetic --out WORLD_DIR --n-images 100 --seed 0`.)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from alp_curation.encoders import MINILM_ID, EncoderUnavailable
from alp_dataset.query import (
    AlpStore,
    alps_near_text,
    alps_of_image,
    alps_with_embeddings,
    box_stats,
    encoder_spec,
    nearest_phrases,
    normalise_query,
    phrase_frequencies,
)
from alp_dataset.schema import ALP_SCHEMA, MANIFEST_NAME, phrase_id

# Fixtures of tests/alp_dataset/conftest.py.
WorldRun = Any  # world_run: .out (the run), .world (narratives, instances, images)
KeywordEncoder = Any  # keyword_encoder: the toy encoder class, id "toy:keywords"
RunWriter = Any  # run_writer: write_run(root, alps, **options)

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "querying.md"
N_ALP_COLUMNS = len(ALP_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Opening a run


def test_open_reads_the_manifest(tiny_run: Path, tiny_alps: tuple[Any, ...]) -> None:
    store = AlpStore.open(tiny_run)
    assert store.encoder_id == "toy:keywords"
    assert store.embedding_dim == 4
    assert store.temporal_padding == 0.5
    assert len(store.alp_files) == 2 and len(store.phrase_files) == 2
    assert store.alps.collect_schema().names() == ALP_SCHEMA.names
    assert store.alps.select(pl.len()).collect().item() == len(tiny_alps)
    manifest = store.manifest
    manifest["counts"]["alps"] = -1  # a copy: the store is not changed
    assert store.manifest["counts"]["alps"] == len(tiny_alps)
    assert "alps=6" in repr(store)


def test_open_refuses_what_is_not_a_complete_run(
    tmp_path: Path, run_writer: RunWriter, tiny_alps: tuple[Any, ...]
) -> None:
    with pytest.raises(FileNotFoundError, match="no such directory"):
        AlpStore.open(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not an ALP output directory"):
        AlpStore.open(tmp_path)
    run = run_writer(tmp_path / "run", tiny_alps)
    (run / MANIFEST_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        AlpStore.open(run)


def test_open_refuses_another_schema_version(
    tmp_path: Path, run_writer: RunWriter, tiny_alps: tuple[Any, ...]
) -> None:
    run = run_writer(tmp_path / "run", tiny_alps, schema_version="0.9")
    with pytest.raises(ValueError, match=r"schema_version is '0.9'.*reads \['1.0', '1.1'\]"):
        AlpStore.open(run)


def test_open_refuses_a_broken_manifest_or_a_missing_file(
    tmp_path: Path, run_writer: RunWriter, tiny_alps: tuple[Any, ...]
) -> None:
    run = run_writer(tmp_path / "run", tiny_alps)
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    (run / manifest["files"]["alps"][1]["path"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"part-00001-of-00002\.parquet"):
        AlpStore.open(run)
    del manifest["encoder"]
    (run / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"keys \['encoder'\] are missing"):
        AlpStore.open(run)
    (run / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AlpStore.open(run)


# ---------------------------------------------------------------------------------------------
# The lazy helpers, with known answers


def test_alps_of_image(tiny_run: Path) -> None:
    store = AlpStore.open(tiny_run)
    two = alps_of_image(store, "2").collect()
    assert two["phrase"].to_list() == ["red circle", "red circle"]
    assert two["alp_index"].to_list() == [0, 1]
    assert alps_of_image(store, 2).collect().equals(two)  # an int id is its decimal string
    one = alps_of_image(store, "1").collect()
    assert sorted(one["dataset_id"].to_list()) == ["d", "d", "e"]
    assert alps_of_image(store, "1", dataset_id="e").collect()["phrase"].to_list() == ["dog"]
    assert alps_of_image(store, "404").collect().height == 0


def test_phrase_frequencies(tiny_run: Path) -> None:
    frequencies = phrase_frequencies(AlpStore.open(tiny_run)).collect()
    assert frequencies.columns == ["phrase", "phrase_id", "n_alps", "n_images"]
    assert frequencies.select("phrase", "n_alps", "n_images").rows() == [
        ("red circle", 3, 2),
        ("dog", 2, 2),  # images d/1 and e/1: same image_id, two datasets
        ("square", 1, 1),
    ]
    # Grouped on phrase_id: each row's phrase is the phrase of that id.
    for phrase, pid in frequencies.select("phrase", "phrase_id").rows():
        assert pid == phrase_id(phrase), phrase


def test_box_stats(tiny_run: Path) -> None:
    stats = box_stats(AlpStore.open(tiny_run)).collect()
    red = stats.row(0, named=True)
    assert red["phrase"] == "red circle" and red["n_alps"] == 3
    # Boxes (w, h): (0.5, 0.25), (1, 1), (0.2, 0): aspect 2, 1 and none.
    expected = {
        "mean_width": (0.5 + 1 + 0.2) / 3,
        "median_width": 0.5,
        "mean_height": 1.25 / 3,
        "median_height": 0.25,
        "mean_area": 1.125 / 3,
        "median_area": 0.125,
        "mean_aspect": 1.5,
        "median_aspect": 1.5,
    }
    for name, value in expected.items():
        assert math.isclose(red[name], value, rel_tol=1e-6), name
    assert stats["phrase"].to_list() == ["red circle", "dog", "square"]


def test_alps_with_embeddings(tiny_run: Path, tiny_alps: tuple[Any, ...]) -> None:
    store = AlpStore.open(tiny_run)
    joined = alps_with_embeddings(store).collect()
    assert joined.height == len(tiny_alps)
    assert joined.columns == [*ALP_SCHEMA.names, "embedding"]
    phrases = store.phrases.collect()
    for row in joined.select("phrase", "embedding").iter_rows():
        stored = phrases.filter(pl.col("phrase") == row[0])["embedding"].to_numpy()[0]
        np.testing.assert_array_equal(np.asarray(row[1]), stored)


# ---------------------------------------------------------------------------------------------
# Nearest phrases


def test_nearest_phrases_with_the_runs_encoder(
    tiny_run: Path, keyword_encoder: KeywordEncoder
) -> None:
    store = AlpStore.open(tiny_run)
    nearest = nearest_phrases(store, "  Big CIRCLES ", k=2, encoder=keyword_encoder())
    assert nearest.columns == ["rank", "phrase", "phrase_id", "n_alps", "cosine"]
    assert nearest["rank"].to_list() == [1, 2]
    assert nearest["phrase"][0] == "red circle"
    assert nearest["cosine"][0] == pytest.approx(1.0, abs=1e-6)
    assert nearest["cosine"][1] == pytest.approx(0.0, abs=1e-6)
    everything = nearest_phrases(store, "dog", k=10, encoder=keyword_encoder())
    assert everything.height == 3  # k beyond the table: every phrase, across both files
    assert everything["phrase"][0] == "dog"


def test_nearest_phrases_refuses_another_encoder(
    tiny_run: Path, keyword_encoder: KeywordEncoder
) -> None:
    store = AlpStore.open(tiny_run)
    other = keyword_encoder(id="open_clip:ViT-B-32:openai")
    with pytest.raises(ValueError, match=r"'open_clip:ViT-B-32:openai'.*'toy:keywords'"):
        nearest_phrases(store, "dog", encoder=other)
    with pytest.raises(EncoderUnavailable, match=r"'toy:keywords'.*pass it as encoder="):
        nearest_phrases(store, "dog")  # no encoder of that id can be built
    with pytest.raises(ValueError, match="k must be >= 1"):
        nearest_phrases(store, "dog", k=0, encoder=keyword_encoder())
    with pytest.raises(ValueError, match="empty"):
        nearest_phrases(store, "   ", encoder=keyword_encoder())


def test_alps_near_text(tiny_run: Path, keyword_encoder: KeywordEncoder) -> None:
    store = AlpStore.open(tiny_run)
    alps = alps_near_text(store, "dogs", k=1, encoder=keyword_encoder()).collect()
    assert alps["phrase"].to_list() == ["dog", "dog"]
    assert alps.columns == [*ALP_SCHEMA.names, "cosine"]
    assert alps["cosine"].to_list() == pytest.approx([1.0, 1.0])
    two = alps_near_text(store, "circle square", k=2, encoder=keyword_encoder()).collect()
    assert sorted(two["phrase"].to_list()) == ["red circle"] * 3 + ["square"]
    assert two["cosine"].is_sorted(descending=True)


def test_encoder_spec_and_query_normalisation() -> None:
    assert encoder_spec(MINILM_ID) == "minilm"
    assert encoder_spec("open_clip:ViT-B-32:openai") == "open_clip:ViT-B-32:openai"
    assert normalise_query("  Red\tCar ") == "red car"


# ---------------------------------------------------------------------------------------------
# Pushdown: the plans polars makes of the helpers


@dataclass(frozen=True)
class Scan:
    """One Parquet scan node of ``LazyFrame.explain()`` (polars 2.x text format)."""

    columns_read: int | None  # k of "PROJECT k/N COLUMNS"; None for "*/N" (every column)
    columns_total: int
    selection: str  # the predicate after "SELECTION:", "" when none


def parquet_scans(plan: str) -> list[Scan]:
    """The Parquet scans of a plan, in the order explain() prints them.

    A scan prints as ``Parquet SCAN [files]``, then ``PROJECT k/N COLUMNS`` and, when a predicate
    was pushed into it, ``SELECTION: <expr>``, each on its own line.
    """
    scans = []
    lines = plan.splitlines()
    for i, line in enumerate(lines):
        if "Parquet SCAN" not in line:
            continue
        project, selection = None, ""
        for follow in lines[i + 1 : i + 5]:
            stripped = follow.strip()
            if m := re.fullmatch(r"PROJECT (\*|\d+)/(\d+) COLUMNS", stripped):
                project = m
            elif stripped.startswith("SELECTION:"):
                selection = stripped.removeprefix("SELECTION:").strip()
            elif "SCAN" in stripped or "PLAN" in stripped:
                break
        assert project is not None, f"no PROJECT line after line {i} of:\n{plan}"
        read = None if project.group(1) == "*" else int(project.group(1))
        scans.append(Scan(read, int(project.group(2)), selection))
    return scans


def test_alps_of_image_pushes_filter_and_projection_into_the_scan(tiny_run: Path) -> None:
    store = AlpStore.open(tiny_run)
    plan = alps_of_image(store, "2", dataset_id="d").select("phrase", "box_xyxy_norm").explain()
    print(plan)  # pytest -s shows it
    [scan] = parquet_scans(plan)
    # The two selected columns and the two the filter needs, nothing else.
    assert (scan.columns_read, scan.columns_total) == (4, N_ALP_COLUMNS)
    assert 'col("image_id") == "2"' in scan.selection
    assert 'col("dataset_id") == "d"' in scan.selection
    assert "FILTER" not in plan  # no filter left above the scan


def test_a_filter_after_the_embedding_join_reaches_the_alp_scan(tiny_run: Path) -> None:
    store = AlpStore.open(tiny_run)
    query = alps_with_embeddings(store).filter(pl.col("image_id") == "1").select("embedding")
    alps_scan, phrase_scan = parquet_scans(query.explain())
    assert 'col("image_id") == "1"' in alps_scan.selection
    assert alps_scan.columns_read == 2  # image_id for the filter, phrase_id for the join
    assert (phrase_scan.columns_read, phrase_scan.columns_total) == (2, 4)  # id and embedding
    assert phrase_scan.selection == ""


def test_alps_near_text_pushes_the_phrase_filter_into_the_scan(
    tiny_run: Path, keyword_encoder: KeywordEncoder
) -> None:
    store = AlpStore.open(tiny_run)
    query = alps_near_text(store, "dog", k=1, encoder=keyword_encoder()).select("image_id")
    [scan] = parquet_scans(query.explain())
    assert 'col("phrase_id").is_in(' in scan.selection
    assert scan.columns_read == 2


def test_aggregations_read_only_the_columns_they_need(tiny_run: Path) -> None:
    store = AlpStore.open(tiny_run)
    [frequencies] = parquet_scans(phrase_frequencies(store).head(20).explain())
    assert frequencies.columns_read == 4  # phrase, phrase_id, dataset_id, image_id
    [boxes] = parquet_scans(box_stats(store).explain())
    assert boxes.columns_read == 2  # phrase, box_xyxy_norm


# ---------------------------------------------------------------------------------------------
# A real run: several files per table, the offline MiniLM encoder


@pytest.mark.slow
def test_a_real_run_reads_whole(world_run: WorldRun) -> None:
    store = AlpStore.open(world_run.out)
    counts = store.manifest["counts"]
    assert len(store.alp_files) > 1 and len(store.phrase_files) > 1
    assert store.alps.select(pl.len()).collect().item() == counts["alps"]
    frequencies = phrase_frequencies(store).collect()
    assert frequencies.height == counts["unique_phrases"]
    assert frequencies["n_alps"].sum() == counts["alps"]
    phrases = store.phrases.collect().sort("phrase")
    assert frequencies.sort("phrase")["n_alps"].to_list() == phrases["n_alps"].to_list()
    assert alps_with_embeddings(store).collect()["embedding"].null_count() == 0


@pytest.mark.slow
def test_nearest_phrases_embeds_the_query_as_the_run_embedded_its_phrases(
    world_run: WorldRun,
) -> None:
    store = AlpStore.open(world_run.out)
    phrase = store.phrases.select("phrase").collect()["phrase"][0]
    nearest = nearest_phrases(store, phrase.upper(), k=3)  # loads minilm from the manifest's id
    assert nearest["phrase"][0] == phrase
    assert nearest["cosine"][0] == pytest.approx(1.0, abs=1e-5)
    assert nearest["cosine"].is_sorted(descending=True)
    circles = nearest_phrases(store, "a circle", k=3)
    assert any("circle" in p for p in circles["phrase"]), circles


# ---------------------------------------------------------------------------------------------
# docs/querying.md: its examples run, and print frames with the columns the doc shows


@dataclass(frozen=True)
class Example:
    language: str  # "python" or "bash"
    code: str
    output: str | None  # the text block right after it, if any
    output_span: tuple[int, int] | None  # where that output's text lies in the doc


_FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def doc_examples(text: str) -> list[Example]:
    """Each python / bash block of the doc, with the text block that follows it."""
    fences = list(_FENCE.finditer(text))
    examples = []
    for fence, after in zip(fences, [*fences[1:], None], strict=True):
        if fence.group(1) not in ("python", "bash"):
            continue
        output = span = None
        if (
            after is not None
            and after.group(1) == "text"
            and text[fence.end() : after.start()].strip() == ""
        ):
            output, span = after.group(2), (after.start(2), after.end(2))
        examples.append(Example(fence.group(1), fence.group(2), output, span))
    return examples


def run_example(example: Example, namespace: dict[str, Any]) -> str:
    """What the example prints. Bash blocks run only `python -m alp_dataset.inspect` lines."""
    from alp_dataset.inspect import main as inspect_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pl.Config(tbl_width_chars=100):
        if example.language == "python":
            exec(compile(example.code, str(DOC), "exec"), namespace)
        else:
            for command in example.code.replace("\\\n", " ").splitlines():
                argv = shlex.split(command)
                if Path(argv[0]).name == "python" and argv[1:3] == ["-m", "alp_dataset.inspect"]:
                    assert inspect_main(argv[3:]) == 0, command
    return out.getvalue()


def _frame_columns(lines: list[str]) -> list[str]:
    """Header cells of a printed frame (wrapped names joined): ["phrase---str", ...]."""
    cells: list[str] = []
    for line in lines:
        parts = [p.strip() for p in line.strip().strip("│").split("┆")]
        cells = parts if not cells else [c + p for c, p in zip(cells, parts, strict=False)]
    return [c.replace(" ", "") for c in cells]


def signature(printed: str) -> list[Any]:
    """What the doc's outputs must keep whatever the data: the columns of each frame, and the
    lines that show a plan's pushdown, a schema, an error message or a histogram's bins."""
    out: list[Any] = []
    lines = printed.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("┌"):
            end = next(j for j in range(i, len(lines)) if lines[j].startswith("╞"))
            out.append(_frame_columns(lines[i + 1 : end]))
            i = end
        elif re.search(r"SELECTION:|PROJECT|Schema\(|JOIN|not an ALP output|cannot query", line):
            out.append(re.sub(r"ESTIMATED ROWS.*", "", line.strip()))
        elif line.startswith("wrote "):
            out.append(line.split(" (")[0])
        elif m := re.match(r"\s*(\[\d\.\d\d, \d\.\d\d[)\]])", line):
            out.append(m.group(1))
        i += 1
    return out


@contextlib.contextmanager
def doc_folder(tmp_path: Path, out: Path, world: Path) -> Iterator[None]:
    """The doc's working directory: `out` (the run), `world` (its synthetic world, with images)
    and `samples` side by side."""
    (tmp_path / "out").symlink_to(out.resolve(), target_is_directory=True)
    (tmp_path / "world").symlink_to(world.resolve(), target_is_directory=True)
    (tmp_path / "samples").symlink_to(REPO / "samples", target_is_directory=True)
    before = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.mark.slow
def test_the_doc_examples_run_and_print_what_the_doc_shows(
    world_run: WorldRun, tmp_path: Path
) -> None:
    examples = doc_examples(DOC.read_text(encoding="utf-8"))
    assert sum(e.output is not None for e in examples) >= 12
    namespace: dict[str, Any] = {}
    with doc_folder(tmp_path, world_run.out, world_run.world.root):
        for example in examples:
            printed = run_example(example, namespace)
            if example.output is None:
                continue
            assert example.output.strip(), f"the doc shows no output for:\n{example.code}"
            assert signature(printed) == signature(example.output), example.code


def accept_doc(out: Path, world: Path) -> None:
    """Rewrite every output block of the doc with what its example prints on ``out``, the run of
    the embedded sample, and ``world``, the synthetic world that holds its images."""
    import tempfile

    text = DOC.read_text(encoding="utf-8")
    namespace: dict[str, Any] = {}
    replacements = []
    with tempfile.TemporaryDirectory() as tmp, doc_folder(Path(tmp), out, world):
        for example in doc_examples(text):
            printed = run_example(example, namespace)
            if example.output_span is not None:
                replacements.append((example.output_span, printed))
    for (start, end), printed in reversed(replacements):
        text = text[:start] + printed.rstrip("\n") + "\n" + text[end:]
    DOC.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--accept-doc":
        sys.exit("usage: test_query.py --accept-doc OUT_DIR WORLD_DIR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    accept_doc(Path(sys.argv[2]), Path(sys.argv[3]))
