"""Reading LocNar inputs that fight back: compressed files cut short or corrupt, a byte-order
mark, a folder or FIFO where a file should be; and the accounting identity over arbitrary bytes.

The composites run on FnApiRunner, chosen explicitly (DirectRunner would first try to download
the Prism runner). The fuzz test calls the two DoFns' ``process`` directly, the same code the
runner calls, to stay fast over many examples.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alp_curation.streams import BOM
from pipelines import manifest as m
from pipelines import transforms
from pipelines.elements import DeadLetter, SourcedRecord
from pipelines.io import RawLine
from pipelines.transforms import (
    DEAD_LETTERS,
    ParseLineFn,
    ParseRecords,
    ReadLane,
    ReadLinesFn,
    ReadLocNar,
)

MAX_LINE = 1 << 20


def record(i: int, **extra: Any) -> bytes:
    obj = {"dataset_id": "d", "image_id": f"img{i}", "annotator_id": i, "caption": "A dog."}
    obj.update(timed_caption=[], traces=[], **extra)
    return json.dumps(obj).encode()


RECORDS = [record(i) for i in range(1, 41)]
DATA = b"".join(r + b"\n" for r in RECORDS)


@pytest.fixture()
def damaged_inputs(tmp_path: Path, flushed_gzip: Any) -> dict[str, Path]:
    blob, ends = flushed_gzip(RECORDS)
    paths = {
        "cut_gz": tmp_path / "cut.jsonl.gz",  # cut exactly after line 25: every line is whole
        "cut_bz2": tmp_path / "cut.jsonl.bz2",  # its end-of-stream marker cut off
        "flipped_gz": tmp_path / "flipped.jsonl.gz",  # line 31's block made invalid
        "bom": tmp_path / "bom.jsonl",
        "folder": tmp_path / "folder.jsonl",
        "fifo": tmp_path / "fifo.jsonl",
    }
    paths["cut_gz"].write_bytes(blob[: ends[24]])
    packed = bz2.compress(DATA)
    paths["cut_bz2"].write_bytes(packed[: len(packed) - 10])
    flipped = bytearray(blob)
    flipped[ends[29]] |= 0b110  # line 31's block starts here: block type 3 does not exist
    paths["flipped_gz"].write_bytes(bytes(flipped))
    paths["bom"].write_bytes(BOM + DATA[:200].rsplit(b"\n", 1)[0] + b"\n")
    paths["folder"].mkdir()
    os.mkfifo(paths["fifo"])  # opening it would wait for a writer forever
    return paths


def split_outputs(items: Iterable[Any]) -> tuple[list[Any], list[DeadLetter], Counter[str]]:
    main, dead, stats = [], [], Counter()
    for item in items:
        if isinstance(item, pvalue.TaggedOutput):
            if item.tag == DEAD_LETTERS:
                dead.append(item.value)
            else:
                stats[item.value[0]] += item.value[1]
        else:
            main.append(item)
    return main, dead, stats


@pytest.mark.timeout(120)
def test_damaged_inputs_keep_their_good_lines_and_end_in_one_read_error(
    damaged_inputs: dict[str, Path],
) -> None:
    paths = [str(p) for p in damaged_inputs.values()]
    p = BeamTestPipeline(runner="FnApiRunner", options=PipelineOptions([]))
    read = p | ReadLocNar(paths, MAX_LINE)
    parsed = read["lines"] | ParseRecords(MAX_LINE)
    per_file = (
        parsed.records | beam.Map(lambda r: (Path(r.source).name, 1)) | beam.CombinePerKey(sum)
    )
    errors = read[DEAD_LETTERS] | beam.Map(
        lambda d: (Path(d.source).name, d.number, d.reason, d.message.split(": ")[1])
    )
    parse_dead = parsed[DEAD_LETTERS] | "ParseDead" >> beam.Map(lambda d: d.reason)
    n_bom = len(damaged_inputs["bom"].read_bytes().splitlines())
    assert_that(
        per_file,
        equal_to(
            [
                ("cut.jsonl.gz", 25),
                ("cut.jsonl.bz2", 40),
                ("flipped.jsonl.gz", 30),
                ("bom.jsonl", n_bom),
            ]
        ),
        label="Records",
    )
    assert_that(
        errors,
        equal_to(
            [
                ("cut.jsonl.gz", 26, "read_error", "cannot be read after line 25"),
                ("cut.jsonl.bz2", 41, "read_error", "cannot be read after line 40"),
                ("flipped.jsonl.gz", 31, "read_error", "cannot be read after line 30"),
                ("folder.jsonl", 1, "read_error", "cannot be read from its first line"),
                ("fifo.jsonl", 1, "read_error", "cannot be read from its first line"),
            ]
        ),
        label="ReadErrors",
    )
    assert_that(parse_dead, equal_to([]), label="NoParseErrors")  # the BOM line parsed
    p.run().wait_until_finish()


def test_read_error_messages_name_the_file_the_line_and_the_damage(
    damaged_inputs: dict[str, Path],
) -> None:
    messages = {}
    for name, path in damaged_inputs.items():
        _, dead, _ = split_outputs(ReadLinesFn(MAX_LINE).process(str(path)))
        if name == "bom":
            assert dead == []
            continue
        (letter,) = dead
        assert letter.message.startswith(f"{path}: cannot be read ")
        messages[name] = letter.message
    assert (
        "cut short" in messages["cut_gz"]
        and "before its end-of-stream marker" in (messages["cut_gz"])
    )
    assert "corrupt at byte" in messages["flipped_gz"]
    assert "is a folder, not a file" in messages["folder"]
    assert "is a FIFO, not a file" in messages["fifo"]


def lines_in(data: bytes) -> int:
    """How many lines (blank ones too) ``data`` holds, a last one without newline included."""
    return data.count(b"\n") + (not data.endswith(b"\n") and len(data) > 0)


COMPRESSIONS = {
    ".jsonl": lambda d: d,
    ".jsonl.gz": lambda d: gzip.compress(d, mtime=0),
    ".jsonl.bz2": bz2.compress,
}


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lines=st.lists(
        st.one_of(
            st.sampled_from([*RECORDS[:3], b"", b"  ", BOM + RECORDS[3], b"[1]", b"\xff"]),
            st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
        ),
        max_size=12,
    ),
    extension=st.sampled_from(sorted(COMPRESSIONS)),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_lines_in_equal_records_plus_dead_letters_plus_blank_lines(
    tmp_path: Path, lines: list[bytes], extension: str, cut: float | None
) -> None:
    data = b"\n".join(lines) + (b"\n" if lines and len(lines) % 2 else b"")
    blob = COMPRESSIONS[extension](data)
    if cut is not None:
        blob = blob[: int(cut * len(blob))]
        if extension == ".jsonl":  # a shorter file, nothing damaged
            data = blob
    path = tmp_path / f"in{extension}"
    path.write_bytes(blob)
    read, read_dead, stats = split_outputs(ReadLinesFn(MAX_LINE).process(str(path)))
    parse = ParseLineFn(MAX_LINE)
    records, parse_dead, _ = split_outputs(item for line in read for item in parse.process(line))
    assert all(isinstance(r, SourcedRecord) for r in records)
    assert len(records) + len(parse_dead) + len(read_dead) == stats[m.INPUT_LINES]
    assert len(read_dead) <= 1 and all(d.reason == "read_error" for d in read_dead)
    came_out = stats[m.INPUT_LINES] - len(read_dead) + stats[m.BLANK_LINES]
    if read_dead:  # a damaged stream: the lines before the damage, and one read_error
        assert cut is not None and extension != ".jsonl"
        assert came_out <= lines_in(data)
    else:
        expected = lines_in(data.removeprefix(BOM))
        assert came_out == expected


def test_an_annotator_id_out_of_range_names_its_record() -> None:
    line = record(1).replace(b'"annotator_id": 1', b'"annotator_id": ' + b"9" * 30)
    _, dead, _ = split_outputs(
        ParseLineFn(MAX_LINE).process(RawLine("f.jsonl", 4, line, len(line)))
    )
    (letter,) = dead
    assert (letter.reason, letter.field) == ("out_of_range", "annotator_id")
    assert letter.record_key == "d/img1/" + "9" * 30


@pytest.mark.parametrize("lanes", [2, 3, 7])
def test_lanes_of_a_file_add_up_to_the_file(damaged_inputs: dict[str, Path], lanes: int) -> None:
    """Every file read as lanes gives the lines, numbers, counts and read errors of one read."""
    for name, path in damaged_inputs.items():
        whole, whole_dead, whole_stats = split_outputs(ReadLinesFn(MAX_LINE).process(str(path)))
        parts = [
            split_outputs(ReadLinesFn(MAX_LINE).process(ReadLane(str(path), lane, lanes)))
            for lane in range(lanes)
        ]
        read = sorted((line for lines, _, _ in parts for line in lines), key=lambda r: r.number)
        assert read == whole, name
        for lane, (lines, _, _) in enumerate(parts):
            assert all(line.number % lanes == lane for line in lines)
        assert [d for _, dead, _ in parts for d in dead] == whole_dead, name
        assert sum((stats for _, _, stats in parts), Counter()) == whole_stats, name


def test_read_locnar_in_lanes_without_a_reshuffle_gives_the_same_lines(tmp_path: Path) -> None:
    blank_among = b"".join(r + (b"\n\n" if i % 5 == 0 else b"\n") for i, r in enumerate(RECORDS))
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"]
    paths[0].write_bytes(blank_among)
    paths[1].write_bytes(gzip.compress(DATA, mtime=0))
    expected = [
        (p.name, line.number, line.data)
        for p in paths
        for line in split_outputs(ReadLinesFn(MAX_LINE).process(str(p)))[0]
    ]
    p = BeamTestPipeline(runner="FnApiRunner", options=PipelineOptions([]))
    read = p | ReadLocNar([str(x) for x in paths], MAX_LINE, lanes=3, spread_lines=False)
    got = read["lines"] | beam.Map(lambda r: (Path(r.source).name, r.number, r.data))
    stats = read[m.STATS] | beam.CombinePerKey(sum)
    blank = blank_among.count(b"\n\n")
    assert_that(got, equal_to(expected), label="Lines")
    assert_that(
        stats,
        equal_to([(m.INPUT_LINES, 2 * len(RECORDS)), (m.BLANK_LINES, blank)]),
        label="Stats",
    )
    p.run().wait_until_finish()
    with pytest.raises(ValueError, match="lanes = 0"):
        ReadLocNar([], MAX_LINE, lanes=0)


def test_a_read_error_that_may_hit_one_lane_only_fails_that_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "flaky.jsonl"
    path.write_bytes(DATA)

    class FailingAfter(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() > len(DATA) // 2:
                raise OSError(5, "Input/output error")
            return super().read(min(size or 64, 64))

    monkeypatch.setattr(transforms, "open_input", lambda _: FailingAfter(DATA))
    _, dead, _ = split_outputs(ReadLinesFn(MAX_LINE).process(ReadLane(str(path), 0, 2)))
    assert [d.reason for d in dead] == ["read_error"] and "Input/output error" in dead[0].message
    with pytest.raises(OSError, match="Input/output error"):
        split_outputs(ReadLinesFn(MAX_LINE).process(ReadLane(str(path), 1, 2)))
