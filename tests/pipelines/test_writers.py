"""Tests for the writers both pipelines share (pipelines/writers.py): the shard writer's bytes,
images that are folders, FIFOs or gone, and the dead-letter writer on both kinds of dead letter.

Pipelines run on FnApiRunner, chosen explicitly (DirectRunner would first try to download the
Prism runner).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import manifest as m
from pipelines.build_coco_shards import CocoSample, check_image_file
from pipelines.coco import CocoDeadLetter
from pipelines.elements import DeadLetter, Sample
from pipelines.io import RawLine, find_image
from pipelines.writers import write_dead_letters, write_shards

IMAGE_STATS = (m.IMAGES_FOUND, m.IMAGES_MISSING)


def beam_pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner="FnApiRunner", options=PipelineOptions([]))


def reference_tar(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A tar as docs/data_format.md describes the shards: PAX, every member owned by 0:0 with no
    names, mode 0644, time 0 (what the pipelines wrote with tarfile before TarWriter)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def stats_of(written: Any) -> Any:
    return written[m.STATS] | beam.CombinePerKey(sum)


def test_one_shard_writer_writes_both_kinds_as_the_format_says(tmp_path: Path) -> None:
    image = tmp_path / "1.png"
    image.write_bytes(b"png bytes")
    long_key = "k" * 120  # past the 100 bytes of a ustar name: a PAX header
    alp = [
        Sample("b", b'{"b":1}', b"npy-b", (str(image), "png")),
        Sample(long_key, b'{"k":1}', b"npy-k"),
    ]
    coco = [CocoSample("000000000001", b'{"i":1}', (str(image), "png"))]
    with beam_pipeline() as p:
        alp_written = (
            p
            | "Alp" >> beam.Create(alp)
            | "AlpShards" >> write_shards(str(tmp_path / "alp"), 10, image_stats=IMAGE_STATS)
        )
        coco_written = (
            p
            | "Coco" >> beam.Create(coco)
            | "CocoShards" >> write_shards(str(tmp_path / "coco"), 10, samples_stat="coco.samples")
        )
        assert_that(
            stats_of(alp_written),
            equal_to([(m.SAMPLES, 2), (m.IMAGES_FOUND, 1), (m.IMAGES_MISSING, 1)]),
            label="AlpStats",
        )
        assert_that(
            coco_written[m.STATS] | "CocoSum" >> beam.CombinePerKey(sum),
            equal_to([("coco.samples", 1)]),
            label="CocoStats",
        )
    assert (tmp_path / "alp" / "shards" / "shard-000000.tar").read_bytes() == reference_tar(
        [
            ("b.alps.json", b'{"b":1}'),
            ("b.embeddings.npy", b"npy-b"),
            ("b.png", b"png bytes"),
            (f"{long_key}.alps.json", b'{"k":1}'),
            (f"{long_key}.embeddings.npy", b"npy-k"),
        ]
    )
    assert (tmp_path / "coco" / "shards" / "shard-000000.tar").read_bytes() == reference_tar(
        [("000000000001.instances.json", b'{"i":1}'), ("000000000001.png", b"png bytes")]
    )


@pytest.mark.timeout(120)
def test_an_image_that_is_a_folder_a_fifo_or_gone_is_one_missing_image(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "ds").mkdir(parents=True)
    (root / "ds" / "good.png").write_bytes(b"good")
    (root / "ds" / "folder.png").mkdir()  # a folder where an image should be
    os.mkfifo(root / "ds" / "fifo.png")  # opening it would wait for a writer forever
    (root / "ds" / "both.jpg").mkdir()  # passed over for the file beside it
    (root / "ds" / "both.png").write_bytes(b"both")
    assert find_image(str(root), "ds", "folder") is None
    assert find_image(str(root), "ds", "fifo") is None
    assert find_image(str(root), "ds", "both") == (str(root / "ds" / "both.png"), "png")
    # Images found once and unreadable when the shard is written: a folder, a FIFO, gone.
    samples = [
        Sample("good", b"{}", b"", (str(root / "ds" / "good.png"), "png")),
        Sample("folder", b"{}", b"", (str(root / "ds" / "folder.png"), "png")),
        Sample("fifo", b"{}", b"", (str(root / "ds" / "fifo.png"), "png")),
        Sample("gone", b"{}", b"", (str(root / "ds" / "gone.png"), "png")),
        Sample("none", b"{}", b""),
    ]
    with beam_pipeline() as p:
        written = (
            p | beam.Create(samples) | write_shards(str(tmp_path), 10, image_stats=IMAGE_STATS)
        )
        assert_that(
            stats_of(written),
            equal_to([(m.SAMPLES, 5), (m.IMAGES_FOUND, 1), (m.IMAGES_MISSING, 4)]),
        )
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert "good.png" in names and len(names) == 2 * 5 + 1  # every sample kept, one image


@pytest.mark.timeout(60)
def test_a_coco_image_that_is_a_folder_or_fifo_is_unreadable_without_blocking(
    tmp_path: Path,
) -> None:
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    for name in ("folder.png", "fifo.png"):
        reason, message = check_image_file(str(tmp_path / name), 8, 6) or ("", "")
        assert reason == "image_unreadable" and name in message and "not a file" in message


def test_one_dead_letter_writer_writes_both_kinds(tmp_path: Path) -> None:
    alp = [
        DeadLetter.of(RawLine("b.jsonl", 2, b"[1]", 3), "not_an_object", "", "is an array"),
        DeadLetter.of(RawLine("a.jsonl", 9, b"{", 1), "json_decode", "", "is not valid JSON"),
    ]
    coco = [CocoDeadLetter("image", 3, 3, "image_missing", "file_name", "no file", "{}")]
    with beam_pipeline() as p:
        _ = p | "Alp" >> beam.Create(alp) | "AlpDead" >> write_dead_letters(str(tmp_path / "a"), 10)
        _ = (
            p
            | "Coco" >> beam.Create(coco)
            | "CocoDead" >> write_dead_letters(str(tmp_path / "c"), 10)
        )
    alp_lines = (tmp_path / "a" / "dead_letters" / "part-00000-of-00001.jsonl").read_text()
    assert [(d["source_file"], d["reason"]) for d in map(json.loads, alp_lines.splitlines())] == [
        ("a.jsonl", "json_decode"),
        ("b.jsonl", "not_an_object"),
    ]
    coco_lines = (tmp_path / "c" / "dead_letters" / "part-00000-of-00001.jsonl").read_text()
    assert coco_lines == json.dumps(coco[0].to_json(), sort_keys=True) + "\n"
