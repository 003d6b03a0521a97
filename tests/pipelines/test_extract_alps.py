"""Tests for pipelines/extract_alps.py: its DoFns and composites on tiny inputs, then whole runs.

Every pipeline here runs on FnApiRunner, chosen explicitly (DirectRunner would first try to
download the Prism runner). Whole runs use the offline all-MiniLM-L6-v2 encoder and are marked
slow; they share module-scoped runs so the file stays within a few minutes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from alp_curation.curate import Alp
from alp_curation.locnar import parse_record
from alp_dataset.schema import (
    ALP_SCHEMA,
    MANIFEST_NAME,
    image_key_of_sample,
    manifest_problems,
    phrase_id,
    phrase_schema,
)
from pipelines import manifest as m
from pipelines.elements import AlpRow, Narrative, PhraseRow, SourcedRecord
from pipelines.extract_alps import build_parser, run
from pipelines.io import (
    OutputExists,
    RawLine,
    iter_lines,
    match_inputs,
    prepare_output,
    write_bytes_atomic,
)
from pipelines.samples import NARRATIVES, BuildSamples
from pipelines.transforms import DEAD_LETTERS, CurateRecords, ParseRecords
from pipelines.writers import GroupIntoParts, alp_table, phrase_table, stable_hash

MINILM_DIM = 384
REPO = Path(__file__).resolve().parents[2]
LocNarInputs = Any  # the locnar_inputs fixture (tests/pipelines/conftest.py)


def beam_pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner="FnApiRunner", options=PipelineOptions([]))


def extract(*argv: str) -> tuple[int, str, str]:
    """run(argv) of the pipeline with the offline encoder: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = run(["--text-encoder", "minilm", "--runner", "FnApiRunner", *argv])
    return status, out.getvalue(), err.getvalue()


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw(data: bytes, number: int = 1) -> RawLine:
    return RawLine("in.jsonl", number, data, len(data))


# ---------------------------------------------------------------------------------------------
# Reading lines


def test_iter_lines_keeps_blank_lines_and_a_last_line_without_newline() -> None:
    data = b'{"a": 1}\r\n\n  \nlast'
    lines = list(iter_lines(io.BytesIO(data), "f", max_line_bytes=100, chunk_bytes=3))
    assert [(x.number, x.data) for x in lines] == [
        (1, b'{"a": 1}\r'),
        (2, b""),
        (3, b"  "),
        (4, b"last"),
    ]
    assert not any(x.truncated for x in lines)
    assert lines[0].sha256 == sha256(b'{"a": 1}\r')


def test_iter_lines_keeps_only_the_head_of_a_too_long_line() -> None:
    long = bytes(range(11, 256)) * 40  # 9800 bytes, no newline
    data = b"short\n" + long + b"\nafter\n"
    lines = list(
        iter_lines(io.BytesIO(data), "f", max_line_bytes=1000, keep_bytes=16, chunk_bytes=100)
    )
    assert [x.number for x in lines] == [1, 2, 3]
    big = lines[1]
    assert big.truncated and big.data == long[:16]
    assert big.n_bytes == len(long) and big.sha256 == sha256(long)
    assert lines[2].data == b"after" and not lines[2].truncated


def test_match_inputs_names_a_pattern_that_matches_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    assert [Path(p).name for p, _ in match_inputs([str(tmp_path / "*.jsonl")])] == ["a.jsonl"]
    with pytest.raises(RuntimeError, match=r"nothing-\*\.jsonl.*matches no file"):
        match_inputs([str(tmp_path / "nothing-*.jsonl")])


# ---------------------------------------------------------------------------------------------
# Composites on beam.Create


def test_parse_records_splits_records_from_dead_letters(locnar_inputs: LocNarInputs) -> None:
    good = locnar_inputs.good.read_bytes().splitlines()[0]
    obj = json.loads(good)
    lines = [
        raw(good, 1),
        raw(b'{"dataset_id": "x"', 2),
        raw(b"[1]", 3),
        RawLine("in.jsonl", 4, b"{", 10**9, True, "0" * 64),
    ]
    p = beam_pipeline()
    out = p | beam.Create(lines) | ParseRecords(max_line_bytes=2**20)
    keys = out.records | "Key" >> beam.Map(lambda r: (r.number, r.record.key))
    reasons = out[DEAD_LETTERS] | "Reason" >> beam.Map(lambda d: (d.number, d.reason))
    key = f"{obj['dataset_id']}/{obj['image_id']}/{obj['annotator_id']}"
    assert_that(keys, equal_to([(1, key)]))
    assert_that(
        reasons,
        equal_to([(2, "json_decode"), (3, "not_an_object"), (4, "line_too_long")]),
        label="DeadLetters",
    )
    result = p.run()
    result.wait_until_finish()
    # Every outcome is also a Beam counter, for progress in any runner's UI.
    counters = result.metrics().query(MetricsFilter().with_namespace(m.METRICS_NAMESPACE))
    found = {c.key.metric.name: c.committed for c in counters["counters"]}
    timings = {k: found.pop(k) for k in list(found) if k.startswith(m.STAGE_TIME)}
    assert found == {
        "dead_letters.json_decode": 1,
        "dead_letters.not_an_object": 1,
        "dead_letters.line_too_long": 1,
    }
    # The one record that parsed was timed (microseconds, so possibly 0 on a fast machine).
    assert set(timings) == {m.STAGE_TIME + "parse"}


def test_curate_records_gives_alps_narratives_and_counts(locnar_inputs: LocNarInputs) -> None:
    lines = locnar_inputs.good.read_bytes().splitlines()[:3]
    records = [SourcedRecord("a.jsonl", i, parse_record(x)) for i, x in enumerate(lines, 1)]
    image_keys = [f"{r.record.dataset_id}/{r.record.image_id}" for r in records]
    # A caption past spaCy's max_length (1,000,000 characters) makes tagging raise: that record
    # becomes a dead letter, its batch companions are still curated.
    huge = json.loads(lines[0]) | {"annotator_id": 99, "caption": "a " * 600_000}
    records.append(SourcedRecord("a.jsonl", 4, parse_record(json.dumps(huge))))
    with beam_pipeline() as p:
        out = p | beam.Create(records) | CurateRecords("en_core_web_sm", 4, 0.5)
        per_record = (
            out.alps
            | "KeyByLine" >> beam.Map(lambda r: (r.source_line, r.alp_index))
            | "Lines" >> beam.Map(lambda t: t[0])
            | beam.Distinct()
        )
        stats = out[m.STATS] | "Sum" >> beam.CombinePerKey(sum)
        assert_that(per_record, equal_to([1, 2, 3]))
        assert_that(
            out[NARRATIVES] | "ImageKeys" >> beam.Map(lambda kv: kv[0]),
            equal_to(image_keys),
            label="Narratives",
        )
        assert_that(
            stats | "Records" >> beam.Filter(lambda kv: kv[0].startswith(("records", "dead"))),
            equal_to(
                [(m.RECORDS, 3), (m.RECORDS_WITH_ALPS, 3), (m.DEAD_LETTER + "curation_error", 1)]
            ),
            label="Stats",
        )
        assert_that(
            out[DEAD_LETTERS] | "Letters" >> beam.Map(lambda d: (d.number, d.reason, d.record_key)),
            equal_to([(4, "curation_error", records[0].record.key.rsplit("/", 1)[0] + "/99")]),
            label="DeadLetters",
        )


def test_group_into_parts_gives_every_part_each_row_once() -> None:
    rows = [f"row-{i}" for i in range(10)]
    with beam_pipeline() as p:
        parts = (
            p
            | beam.Create(rows)
            | GroupIntoParts(3, stable_hash)
            | beam.MapTuple(lambda key, xs: (key, sorted(x for x in xs if x is not None)))
        )

        def check(groups: list[tuple[tuple[int, int], list[str]]]) -> None:
            assert sorted(k for k, _ in groups) == [(i, 4) for i in range(4)]
            assert sorted(x for _, xs in groups for x in xs) == sorted(rows)
            for (index, n), xs in groups:
                assert all(stable_hash(x) % n == index for x in xs)

        assert_that(parts, check)


def test_group_into_parts_of_nothing_is_one_empty_part() -> None:
    with beam_pipeline() as p:
        parts = p | beam.Create([]) | GroupIntoParts(5, stable_hash)
        assert_that(
            parts | beam.MapTuple(lambda k, xs: (k, list(xs))), equal_to([((0, 1), [None])])
        )


def alp_row(image_id: str, index: int, phrase: str, annotator_id: int = 7) -> AlpRow:
    alp = Alp("ds", image_id, annotator_id, phrase, phrase.split()[-1], 0, len(phrase), 1.0, 2.5,
              (0.1, 0.2, 0.30000001, 0.9), 12)  # fmt: skip
    return AlpRow.of(alp, index, "in.jsonl", 3)


def test_build_samples_joins_each_alp_with_its_phrase_embedding() -> None:
    alps = [alp_row("i.1", 0, "red car"), alp_row("i.1", 1, "dog"), alp_row("i2", 0, "dog")]
    embeddings = {p: np.full(4, i + 1, dtype=np.float32) for i, p in enumerate(["dog", "red car"])}
    phrases = [PhraseRow(phrase_id(p), p, 1, e) for p, e in embeddings.items()]
    narratives = [
        ("ds/i.1", Narrative(7, "A red car and a dog.", "in.jsonl", 3)),
        ("ds/i2", Narrative(7, "A dog.", "in.jsonl", 4)),
        ("ds/no-alp", Narrative(7, "The sky.", "in.jsonl", 5)),
    ]
    with beam_pipeline() as p:
        samples = (
            p | "Alps" >> beam.Create(alps),
            p | "Phrases" >> beam.Create(phrases),
            p | "Narratives" >> beam.Create(narratives),
        ) | BuildSamples(dim=4)

        def check(found: list[Any]) -> None:
            assert sorted(s.key for s in found) == ["ds%2Fi%2E1", "ds%2Fi2"]
            for s in found:
                doc = json.loads(s.alps_json)
                assert doc["image_key"] == image_key_of_sample(s.key)
                rows = np.load(io.BytesIO(s.embeddings_npy))  # (N, 4)
                assert rows.shape == (len(doc["alps"]), 4) and rows.dtype == np.float32
                for alp, row in zip(doc["alps"], rows, strict=True):
                    np.testing.assert_array_equal(row, embeddings[alp["phrase"]])
                    assert alp["box_xyxy_norm"] == [0.1, 0.2, 0.3, 0.9]  # float32, shortest

        assert_that(samples, check)


# ---------------------------------------------------------------------------------------------
# Tables


def test_tables_have_the_schema_and_polars_reads_arrays(tmp_path: Path) -> None:
    rows = [alp_row("b", 0, "red car"), alp_row("a", 0, "dog")]
    table = alp_table(rows)
    assert table.schema == ALP_SCHEMA and table.schema.metadata == ALP_SCHEMA.metadata
    emb = np.eye(3, 8, dtype=np.float32)
    phrases = phrase_table(
        [PhraseRow(phrase_id(p), p, 1, e) for p, e in zip(["a", "b", "c"], emb, strict=True)],
        dim=8,
        encoder_id="enc",
    )
    assert phrases.schema == phrase_schema(8, "enc")
    pq.write_table(table, tmp_path / "alps.parquet")
    pq.write_table(phrases, tmp_path / "phrases.parquet")
    alps_df = pl.read_parquet(tmp_path / "alps.parquet")
    assert alps_df.schema["box_xyxy_norm"] == pl.Array(pl.Float32, 4)
    phrases_df = pl.read_parquet(tmp_path / "phrases.parquet")
    assert phrases_df.schema["embedding"] == pl.Array(pl.Float32, 8)
    np.testing.assert_array_equal(phrases_df["embedding"].to_numpy(), emb)


def test_phrase_table_refuses_two_phrases_with_one_id() -> None:
    e = np.zeros(2, dtype=np.float32)
    with pytest.raises(RuntimeError, match="share phrase_id 5"):
        phrase_table([PhraseRow(5, "a", 1, e), PhraseRow(5, "b", 1, e)], dim=2, encoder_id="x")


# ---------------------------------------------------------------------------------------------
# Output directory and command line


def test_existing_output_is_refused_or_cleared_by_overwrite(tmp_path: Path) -> None:
    prepare_output(str(tmp_path), overwrite=False)  # empty: fine
    write_bytes_atomic(str(tmp_path / "alps" / "part-00000-of-00001.parquet"), b"old")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExists, match=rf"{tmp_path}.*incomplete.*alps/.*--overwrite"):
        prepare_output(str(tmp_path), overwrite=False)
    write_bytes_atomic(str(tmp_path / MANIFEST_NAME), b"{}")
    with pytest.raises(OutputExists, match="holds a complete earlier run"):
        prepare_output(str(tmp_path), overwrite=False)
    prepare_output(str(tmp_path), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help
    for flag in ("--spacy-model", "--temporal-padding", "--text-encoder", "--embedding-cache",
                 "--images", "--shard-size", "--runner", "--direct_num_workers",
                 "--direct_running_mode", "--overwrite", "--max-line-bytes"):  # fmt: skip
        assert flag in text


def test_unknown_flags_and_missing_inputs_are_usage_errors(tmp_path: Path) -> None:
    status, _, err = extract("--input", "x", "--output", str(tmp_path), "--shard_size", "3")
    assert status == 2 and "--shard_size" in err
    status, _, err = extract("--input", str(tmp_path / "none*.jsonl"), "--output", str(tmp_path))
    assert status == 2 and "matches no file" in err


def test_help_beam_lists_the_beam_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(["--help-beam"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--direct_running_mode" in text and "--temp_location" in text


def test_a_cache_of_other_settings_is_refused_before_any_work(
    locnar_inputs: LocNarInputs, tmp_path: Path
) -> None:
    from alp_curation.embedding_cache import EmbeddingCache
    from alp_curation.encoders import MINILM_ID

    cache = EmbeddingCache(str(tmp_path / "cache"), MINILM_ID, 384, n_buckets=8)
    cache.add(cache.bucket_of("dog"), ["dog"], np.ones((1, 384), dtype=np.float32))
    out = tmp_path / "out"
    status, _, err = extract(
        "--input", str(locnar_inputs.good), "--output", str(out),
        "--embedding-cache", str(tmp_path / "cache"),
    )  # fmt: skip
    assert status == 2 and "n_buckets=8" in err
    assert not out.exists()


def test_the_default_encoder_fails_clearly_before_any_work(
    locnar_inputs: LocNarInputs, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = run(["--input", str(locnar_inputs.good), "--output", str(out)])
    assert status == 2
    assert "open_clip:ViT-B-32:openai" in err.getvalue()
    assert "open_clip:ViT-B-32-quickgelu:/path/to/open_clip_pytorch_model.bin" in err.getvalue()
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Whole runs


def manifest_of(out: Path) -> dict[str, Any]:
    return json.loads((out / MANIFEST_NAME).read_text())


def dead_letters_of(out: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted((out / "dead_letters").glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


@pytest.fixture(scope="module")
def main_run(
    locnar_inputs: LocNarInputs, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("runs") / "main"
    status, stdout, stderr = extract(
        "--input", locnar_inputs.pattern, "--output", str(out),
        "--images", str(locnar_inputs.images), "--shard-size", "4", "--alp-rows-per-file", "8",
        "--timings-json", str(out.parent / "timings.json"),
    )  # fmt: skip
    assert status == 0, stderr
    return out, stdout, stderr


MAIN_OPTIONS = ("--shard-size", "4", "--alp-rows-per-file", "8")


@pytest.mark.slow
def test_the_manifest_accounts_for_every_line(
    main_run: tuple[Path, str, str], locnar_inputs: LocNarInputs
) -> None:
    out, stdout, _ = main_run
    manifest = manifest_of(out)
    assert manifest_problems(manifest) == []
    c = manifest["counts"]
    n_good = len(locnar_inputs.good.read_bytes().splitlines()) * 2  # the .gz holds the same count
    dead = locnar_inputs.dead
    assert c["input_lines"] == n_good + len(locnar_inputs.broken_lines) + 1  # + the corrupt .gz
    assert c["blank_lines_skipped"] == locnar_inputs.n_blank
    expected_reasons: dict[str, int] = {"read_error": 1}
    for b in dead.values():
        expected_reasons[b.reason] = expected_reasons.get(b.reason, 0) + 1
    assert {k: v for k, v in c["dead_letters"]["by_reason"].items() if v} == expected_reasons
    assert c["records"]["total"] == n_good + 2
    assert c["records"]["with_alps"] == n_good
    assert c["records"]["without_alps"]["by_reason"]["no_traces"] == 1
    assert c["records"]["without_alps"]["by_reason"]["no_phrases"] == 1
    assert c["shards"] == {
        "samples": n_good,
        "image_files_found": n_good,
        "image_files_missing": 0,
    }
    assert manifest["encoder"] == {"id": "sentence-transformers:all-MiniLM-L6-v2", "dim": 384}
    assert manifest["options"]["temporal_padding"] == 0.5
    # The files the manifest lists are exactly the files there are, and no temporary one is left.
    listed = {f["path"] for files in manifest["files"].values() for f in files}
    assert set(tree_bytes(out)) == listed | {MANIFEST_NAME}
    assert len(manifest["files"]["alps"]) == -(-c["alps"] // 8) > 1
    assert "dead letters" in stdout and f"{c['alps']:,}" in stdout


@pytest.mark.slow
def test_the_summary_and_timings_json_give_the_time_of_each_stage(
    main_run: tuple[Path, str, str],
) -> None:
    out, stdout, _ = main_run
    timings = json.loads((out.parent / "timings.json").read_text())
    assert timings["wall_seconds"] > 0
    assert set(timings["stage_seconds"]) == set(m.STAGES)
    # Tagging and embedding real text with real models takes measurable time.
    assert timings["stage_seconds"]["tag"] > 0 and timings["stage_seconds"]["embed"] > 0
    assert sum(timings["stage_seconds"].values()) < timings["wall_seconds"] * os.cpu_count()
    lines = stdout.splitlines()
    for stage in m.STAGES:
        assert any(line.split()[:1] == [stage] and line.endswith(" s") for line in lines), stage


@pytest.mark.slow
def test_each_broken_line_is_a_dead_letter_with_its_raw_bytes(
    main_run: tuple[Path, str, str], locnar_inputs: LocNarInputs
) -> None:
    out, _, _ = main_run
    letters = dead_letters_of(out)
    by_line = {d["source_line"]: d for d in letters if d["source_file"].endswith("d.jsonl")}
    assert sorted(by_line) == sorted(locnar_inputs.dead)
    for number, broken in locnar_inputs.dead.items():
        letter = by_line[number]
        assert letter["reason"] == broken.reason, broken.name
        data = (
            base64.b64decode(letter["raw_base64"])
            if "raw_base64" in letter
            else letter["raw"].encode("utf-8")
        )
        assert letter["raw_bytes"] == len(broken.data)
        assert letter["raw_sha256"] == sha256(broken.data)
        if broken.reason == "line_too_long":
            assert letter["raw_truncated"] and data == broken.data[: len(data)]
            assert 0 < len(data) <= 4096
        else:
            assert not letter["raw_truncated"] and data == broken.data, broken.name
    assert by_line[8]["reason"] == "not_utf8" and "raw_base64" in by_line[8]
    (corrupt,) = [d for d in letters if d["source_file"].endswith("c.jsonl.gz")]
    assert corrupt["reason"] == "read_error" and corrupt["source_line"] == 1
    assert [d["source_line"] for d in letters] == sorted(d["source_line"] for d in letters)


@pytest.mark.slow
def test_input_of_broken_lines_only_gives_empty_tables_and_a_sound_manifest(
    locnar_inputs: LocNarInputs, tmp_path: Path
) -> None:
    out = tmp_path / "broken-only"
    status, _, err = extract(
        "--input", str(locnar_inputs.broken), "--input", str(locnar_inputs.corrupt_gz),
        "--output", str(out),
    )  # fmt: skip
    assert status == 0, err
    manifest = manifest_of(out)
    assert manifest_problems(manifest) == []
    c = manifest["counts"]
    assert c["input_lines"] == len(locnar_inputs.broken_lines) + 1
    assert c["dead_letters"]["total"] == len(locnar_inputs.dead) + 1
    assert c["alps"] == c["unique_phrases"] == c["shards"]["samples"] == 0
    assert pl.read_parquet(out / "alps" / "*.parquet").height == 0
    assert pl.read_parquet(out / "phrases" / "*.parquet").schema["embedding"] == pl.Array(
        pl.Float32, MINILM_DIM
    )
    assert [f["rows"] for f in manifest["files"]["shards"]] == [0]


@pytest.mark.slow
def test_polars_reads_the_tables_and_webdataset_the_shards(main_run: tuple[Path, str, str]) -> None:
    import webdataset as wds

    out, _, _ = main_run
    alps = pl.read_parquet(out / "alps" / "*.parquet")
    phrases = pl.read_parquet(out / "phrases" / "*.parquet")
    assert alps.schema["box_xyxy_norm"] == pl.Array(pl.Float32, 4)
    assert phrases.schema["embedding"] == pl.Array(pl.Float32, MINILM_DIM)
    assert phrases["phrase"].is_unique().all()
    assert alps.join(phrases, on="phrase_id", how="anti").height == 0
    counts = alps.group_by("phrase").len().sort("phrase")
    assert counts["len"].to_list() == phrases.sort("phrase")["n_alps"].to_list()
    table = dict(zip(phrases["phrase"], phrases["embedding"].to_numpy(), strict=True))
    norms = np.linalg.norm(phrases["embedding"].to_numpy(), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)

    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    n_samples = 0
    for sample in wds.WebDataset(shards, shardshuffle=False):
        n_samples += 1
        assert {"alps.json", "embeddings.npy", "png"} <= set(sample)
        doc = json.loads(sample["alps.json"])
        assert doc["image_key"] == image_key_of_sample(sample["__key__"])
        embeddings = np.load(io.BytesIO(sample["embeddings.npy"]))  # (N, D)
        assert embeddings.shape == (len(doc["alps"]), MINILM_DIM)
        for alp, row in zip(doc["alps"], embeddings, strict=True):
            np.testing.assert_array_equal(row, table[alp["phrase"]])
        assert sample["png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert n_samples == alps.select(["dataset_id", "image_id"]).unique().height
    with tarfile.open(shards[0]) as tar:
        assert {(i.mtime, i.uid, i.gid, i.uname, i.mode) for i in tar} == {(0, 0, 0, "", 0o644)}


@pytest.mark.slow
def test_a_second_run_launched_by_beam_run_gives_identical_bytes(
    main_run: tuple[Path, str, str], locnar_inputs: LocNarInputs, tmp_path: Path
) -> None:
    from pipelines.beam_command import main as beam_main

    out = tmp_path / "again"
    err = io.StringIO()
    # The old spelling --out still works, with a note; --quiet: no progress, the same bytes.
    with contextlib.redirect_stderr(err):
        status = beam_main(
            ["run", str(REPO / "pipelines" / "extract_alps.py"),
             "--input", locnar_inputs.pattern, "--out", str(out), "--text-encoder", "minilm",
             "--images", str(locnar_inputs.images), *MAIN_OPTIONS, "--quiet"]
        )  # fmt: skip
    assert status == 0, err.getvalue()
    assert "--out is now spelled --output" in err.getvalue()
    assert "extract_alps: " not in err.getvalue()
    assert tree_bytes(out) == tree_bytes(main_run[0])


@pytest.mark.slow
def test_a_local_run_shows_progress_on_stderr(main_run: tuple[Path, str, str]) -> None:
    out, stdout, stderr = main_run
    c = manifest_of(out)["counts"]
    lines = [line for line in stderr.splitlines() if line.startswith("extract_alps: ")]
    tagging = [line for line in lines if line.startswith("extract_alps: tagging: ")]
    assert tagging[-1].startswith(f"extract_alps: tagging: {c['records']['total']:,} narratives")
    unique = c["unique_phrases"]
    embedding = [line for line in lines if line.startswith("extract_alps: embedding: ")]
    assert embedding[-1].startswith(
        f"extract_alps: embedding: {unique:,} of {unique:,} phrases ({unique:,} embedded, "
        "0 from the cache)"
    )
    assert any(line.startswith("extract_alps: writing shards: ") for line in lines)
    assert "extract_alps: " not in stdout


@pytest.mark.slow
def test_python_m_shows_the_help() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "pipelines.extract_alps", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--text-encoder" in shown.stdout and "--direct_running_mode" in shown.stdout


@pytest.mark.slow
def test_two_worker_processes_give_the_same_bytes(
    main_run: tuple[Path, str, str], locnar_inputs: LocNarInputs, tmp_path: Path
) -> None:
    out, _, _ = main_run
    parallel = tmp_path / "parallel"
    status, _, err = extract(
        "--input", locnar_inputs.pattern, "--output", str(parallel),
        "--images", str(locnar_inputs.images), *MAIN_OPTIONS,
        "--direct_num_workers", "2", "--direct_running_mode", "multi_processing",
    )  # fmt: skip
    assert status == 0, err
    assert tree_bytes(parallel) == tree_bytes(out)
    # One display sums both worker processes' counts: the last line has every phrase.
    unique = manifest_of(out)["counts"]["unique_phrases"]
    embedding = [x for x in err.splitlines() if x.startswith("extract_alps: embedding: ")]
    assert embedding[-1].startswith(f"extract_alps: embedding: {unique:,} of {unique:,} phrases")


@pytest.mark.slow
def test_an_existing_run_is_refused_then_overwritten_cleanly(
    main_run: tuple[Path, str, str], locnar_inputs: LocNarInputs, tmp_path: Path
) -> None:
    out, _, _ = main_run
    target = tmp_path / "target"
    shutil.copytree(out, target)
    before = tree_bytes(target)
    args = ["--input", locnar_inputs.pattern, "--output", str(target),
            "--images", str(locnar_inputs.images), *MAIN_OPTIONS]  # fmt: skip
    status, _, err = extract(*args)
    assert status == 2 and str(target) in err and "--overwrite" in err
    assert tree_bytes(target) == before
    # Leftovers of an earlier, different run must not survive an overwrite; other files do.
    (target / "shards" / "shard-000099.tar").write_bytes(b"stale")
    (target / "alps" / ".part-00000-of-00001.parquet.tmp-dead").write_bytes(b"partial")
    (target / "notes.txt").write_text("not ours")
    status, _, err = extract(*args, "--overwrite")
    assert status == 0, err
    after = tree_bytes(target)
    assert after.pop("notes.txt") == b"not ours"
    assert after == before


@pytest.mark.slow
def test_the_embedding_cache_embeds_only_new_phrases(
    main_run: tuple[Path, str, str], locnar_inputs: LocNarInputs, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"

    def run_with_cache(name: str, pattern: str) -> dict[str, Any]:
        status, stdout, err = extract(
            "--input", pattern, "--output", str(tmp_path / name),
            "--embedding-cache", str(cache), *MAIN_OPTIONS,
        )  # fmt: skip
        assert status == 0, err
        assert "reused from cache" in stdout
        return manifest_of(tmp_path / name)

    first = run_with_cache("first", str(locnar_inputs.good))  # a subset of the phrases
    assert first["counts"]["embeddings"] == {
        "computed": first["counts"]["unique_phrases"],
        "reused": 0,
    }
    second = run_with_cache("second", locnar_inputs.pattern)  # a superset
    first_phrases = set(pl.read_parquet(tmp_path / "first" / "phrases" / "*.parquet")["phrase"])
    all_phrases = pl.read_parquet(tmp_path / "second" / "phrases" / "*.parquet")
    assert first_phrases < set(all_phrases["phrase"])
    assert second["counts"]["embeddings"] == {
        "computed": all_phrases.height - len(first_phrases),
        "reused": len(first_phrases),
    }
    third = run_with_cache("third", locnar_inputs.pattern)
    assert third["counts"]["embeddings"] == {"computed": 0, "reused": all_phrases.height}
    # Cached or not, the embeddings are the encoder's; batches may round differently.
    fresh = pl.read_parquet(main_run[0] / "phrases" / "*.parquet").sort("phrase")
    np.testing.assert_allclose(
        all_phrases.sort("phrase")["embedding"].to_numpy(),
        fresh["embedding"].to_numpy(),
        atol=1e-5,
    )
    for name in ("second", "third"):
        assert tree_bytes(tmp_path / name / "alps") == tree_bytes(main_run[0] / "alps")
