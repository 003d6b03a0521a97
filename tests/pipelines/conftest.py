"""Inputs for the pipeline tests: a small synthetic world split over .jsonl and .jsonl.gz files,
and a file of broken lines, each with the dead-letter reason it must get."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from alp_dataset.synthetic import write_world

N_NARRATIVES = 10
BIG_LINE_BYTES = 50 * 2**20  # above the pipeline's default --max-line-bytes (16 MiB)


@dataclass(frozen=True)
class BrokenLine:
    name: str
    data: bytes
    reason: str  # the dead-letter reason, or "no_traces" / "no_phrases" for valid records


@dataclass(frozen=True)
class LocNarInputs:
    root: Path
    pattern: str  # glob over every input file
    good: Path  # first half of the world, .jsonl
    good_gz: Path  # second half, .jsonl.gz
    broken: Path
    corrupt_gz: Path  # not gzip at all: one read_error
    images: Path
    broken_lines: dict[int, BrokenLine]  # line number in `broken` -> line
    n_blank: int

    @property
    def dead(self) -> dict[int, BrokenLine]:
        return {n: b for n, b in self.broken_lines.items() if not b.reason.startswith("no_")}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def broken_lines(template: dict[str, Any]) -> list[BrokenLine | None]:
    """Lines of broken.jsonl in order; None is a blank line."""

    def variant(annotator_id: int, **changes: Any) -> dict[str, Any]:
        obj = json.loads(json.dumps(template))
        obj.update(image_id=f"broken-{annotator_id}", annotator_id=annotator_id, **changes)
        return obj

    good = _dumps(variant(1))
    nan = variant(4)
    nan["traces"][0][0]["x"] = float("nan")  # json.dumps writes the NaN literal
    huge = _dumps(variant(5)).replace(b'"x":', b'"x":1e999,"old_x":', 1)
    no_utf8 = _dumps(variant(7, caption="caf\u00e9 CAPTION")).replace(b"CAPTION", b"\xff\xfe\xfd")
    missing = variant(9)
    del missing["caption"]
    no_phrases = variant(
        12, caption="In this image I can see the sky.", timed_caption=[], voice_recording=None
    )
    big = b'{"dataset_id":"x","pad":"' + b"a" * BIG_LINE_BYTES + b'"}'
    wrong_type = _dumps(variant(2)).replace(b'"annotator_id":2', b'"annotator_id":"2"')
    huge_int = _dumps(variant(6)).replace(b'"annotator_id":6', b'"annotator_id":' + b"9" * 30)
    return [
        BrokenLine("truncated_json", good[: len(good) // 2], "json_decode"),
        BrokenLine("wrong_type", wrong_type, "wrong_type"),
        None,
        BrokenLine("empty_trace_segment", _dumps(variant(3, traces=[[]])), "empty_trace_segment"),
        BrokenLine("nan", json.dumps(nan, sort_keys=True).encode(), "non_finite"),
        BrokenLine("huge_float", huge, "non_finite"),
        BrokenLine("huge_int", huge_int, "out_of_range"),
        BrokenLine("not_utf8", no_utf8, "not_utf8"),
        BrokenLine("not_an_object", b"[1, 2, 3]", "not_an_object"),
        None,
        BrokenLine("missing_field", _dumps(missing), "missing_field"),
        BrokenLine("line_too_long", big, "line_too_long"),
        BrokenLine("no_traces", _dumps(variant(11, traces=[])), "no_traces"),
        BrokenLine("no_phrases", _dumps(no_phrases), "no_phrases"),
    ]


@pytest.fixture(scope="session")
def locnar_inputs(tmp_path_factory: pytest.TempPathFactory) -> LocNarInputs:
    world = write_world(tmp_path_factory.mktemp("world"), N_NARRATIVES, seed=0, images=True)
    assert world.images is not None
    root = tmp_path_factory.mktemp("inputs")
    lines = world.narratives.read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    good, good_gz = root / "a.jsonl", root / "b.jsonl.gz"
    good.write_bytes(b"".join(lines[:half]))
    good_gz.write_bytes(gzip.compress(b"".join(lines[half:]), mtime=0))
    corrupt = root / "c.jsonl.gz"
    corrupt.write_bytes(b"this is not gzip data\n" * 3)
    template = json.loads(lines[0])
    layout = broken_lines(template)
    broken = root / "d.jsonl"
    broken.write_bytes(b"".join((b"  \t" if b is None else b.data) + b"\n" for b in layout))
    numbered = {i: b for i, b in enumerate(layout, start=1) if b is not None}
    return LocNarInputs(
        root=root,
        pattern=str(root / "*.jsonl*"),
        good=good,
        good_gz=good_gz,
        broken=broken,
        corrupt_gz=corrupt,
        images=world.images,
        broken_lines=numbered,
        n_blank=sum(b is None for b in layout),
    )
