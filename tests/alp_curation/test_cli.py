from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path

import pytest

from alp_curation.cli import main
from alp_dataset.synthetic import make_world

BROKEN_LINES = [
    b'{"dataset_id": "x", "image_id": ',  # truncated JSON
    b'{"dataset_id": 5, "image_id": "a", "annotator_id": 1, "caption": "", "timed_caption": []}',
    b"\xff\xfe not utf-8 at all",
    b"[1, 2, 3]",
]


def write_inputs(tmp_path: Path, n: int) -> tuple[Path, Path]:
    samples = list(make_world(n, seed=7))
    good = [json.dumps(s.narrative).encode() for s in samples]
    path = tmp_path / "narratives.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(good[:3] + BROKEN_LINES + good[3:]) + b"\n")
    truth = tmp_path / "ground_truth.jsonl"
    with open(truth, "w") as f:
        for s in samples:
            n = s.narrative
            mentions = [
                {
                    "start_char": m.start_char,
                    "end_char": m.end_char,
                    "box_xyxy_norm": list(m.box_xyxy_norm),
                    "class_name": m.class_name,
                }
                for m in s.mentions
            ]
            entry = {
                "dataset_id": n["dataset_id"],
                "image_id": n["image_id"],
                "annotator_id": n["annotator_id"],
                "mentions": mentions,
            }
            f.write(json.dumps(entry) + "\n")
    return path, truth


@pytest.mark.slow
def test_every_line_is_accounted_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, truth = write_inputs(tmp_path, 12)
    out, dead = tmp_path / "alps.jsonl", tmp_path / "dead.jsonl"
    code = main(
        [str(path), "--ground-truth", str(truth), "--output", str(out), "--dead-letters", str(dead)]
    )
    assert code == 0
    summary = capsys.readouterr().out

    def value(name: str) -> int:
        line = next(x for x in summary.splitlines() if x.startswith(name))
        return int(line[len(name) :].split()[0].replace(",", ""))

    assert value("lines read") == 12 + len(BROKEN_LINES)
    assert value("dead letters") == len(BROKEN_LINES)
    assert value("records parsed") == 12
    assert value("records with ALPs") + value("records without ALP") == 12
    alps = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(alps) == value("ALPs") > 0
    assert all(0.0 <= c <= 1.0 for a in alps for c in a["box_xyxy_norm"])
    assert "mean IoU" in summary

    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [d["source"].rsplit(":", 1)[1] for d in letters] == ["4", "5", "6", "7"]
    assert {d["reason"] for d in letters} >= {"json_decode", "not_utf8"}
    # The raw line survives, as text or, when it is not UTF-8, as base64.
    raws = [d["raw"].encode() if "raw" in d else base64.b64decode(d["raw_base64"]) for d in letters]
    assert raws == BROKEN_LINES


def test_missing_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_cut_gz_and_a_byte_order_mark_are_read_as_the_pipeline_reads_them(
    tmp_path: Path,
) -> None:
    from alp_curation.cli import Tally, input_lines, parse_lines

    lines = [json.dumps(s.narrative).encode() for s in make_world(4, seed=3)]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines[:2]) + b"\n")
    cut = tmp_path / "cut.jsonl.gz"
    packed = gzip.compress(b"\n".join(lines[2:]) + b"\n", mtime=0)
    cut.write_bytes(packed[: len(packed) - 4])  # inside the trailer: every line came out whole
    tally = Tally()
    dead = io.StringIO()
    records = list(parse_lines(input_lines([bom, cut]), tally, dead))
    assert len(records) == 4 and tally.records == 4  # the first line parsed, BOM and all
    assert tally.lines == 5 and tally.dead_letters == {"read_error": 1}
    (letter,) = map(json.loads, dead.getvalue().splitlines())
    assert letter["source"] == f"{cut}:3" and "cut short" in letter["message"]


@pytest.mark.slow
def test_the_old_out_flag_still_works_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = write_inputs(tmp_path, 2)
    out = tmp_path / "alps.jsonl"
    assert main([str(path), "--out", str(out), "--quiet"]) == 0
    assert "--out is now spelled --output" in capsys.readouterr().err
    assert out.read_text().count("\n") > 0


def test_every_flag_has_a_help_text() -> None:
    from alp_curation.cli import build_parser

    for action in build_parser()._actions:
        assert action.help, action.option_strings
