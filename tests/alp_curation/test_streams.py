"""Tests for alp_curation/streams.py: every compression read whole, cut short or corrupt; the lines
before a damage kept; a byte-order mark dropped; arbitrary bytes never raise anything else."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from alp_curation.streams import (
    BOM,
    COMPRESSIONS,
    CheckedReader,
    StreamDamaged,
    compression_of,
    iter_lines,
)

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "deflate": zlib.compress,
    "bzip2": bz2.compress,
    "lzma": lzma.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}
LINES = [b'{"n": %d, "text": "%s"}' % (i, b"word " * (i % 17)) for i in range(3000)]
DATA = b"".join(line + b"\n" for line in LINES)


def read_lines(blob: bytes, compression: str | None) -> tuple[list[bytes], StreamDamaged | None]:
    """The lines a reader delivers, and the damage it raised (None for a sound stream)."""
    f = io.BytesIO(blob) if compression is None else CheckedReader(io.BytesIO(blob), compression)
    got: list[bytes] = []
    try:
        for line in iter_lines(f, "f", max_line_bytes=1 << 20, chunk_bytes=5000):  # type: ignore[arg-type]
            got.append(line.data)
    except StreamDamaged as exc:
        return got, exc
    return got, None


def test_the_compressions_are_the_extensions_beam_reads() -> None:
    assert set(COMPRESS) == set(COMPRESSIONS)
    assert [compression_of(p) for p in ("a.jsonl.GZ", "a.bz2", "a.xz", "a.zst", "a.jsonl")] == [
        "gzip",
        "bzip2",
        "lzma",
        "zstd",
        None,
    ]


@pytest.mark.parametrize("compression", sorted(COMPRESS))
def test_a_sound_stream_reads_whole_also_concatenated_and_padded(compression: str) -> None:
    blob = COMPRESS[compression](DATA)
    assert read_lines(blob, compression) == (LINES, None)
    assert read_lines(blob + blob, compression) == (LINES + LINES, None)
    assert read_lines(blob + bytes(8), compression) == (LINES, None)


@pytest.mark.parametrize("compression", sorted(COMPRESS))
def test_a_stream_cut_short_is_damage_after_the_lines_before_the_cut(compression: str) -> None:
    blob = COMPRESS[compression](DATA)
    for cut in (len(blob) - 1, len(blob) // 2, 3):
        got, damage = read_lines(blob[:cut], compression)
        assert damage is not None and "cut short" in str(damage), cut
        assert got == LINES[: len(got)]  # whole lines only, never the one the cut split
    got, damage = read_lines(b"", compression)
    assert got == [] and damage is not None and "no " + compression + " stream" in str(damage)


@pytest.mark.parametrize("compression", sorted(COMPRESS))
def test_bytes_after_a_stream_that_are_no_stream_are_damage(compression: str) -> None:
    got, damage = read_lines(COMPRESS[compression](DATA) + b"trailing junk", compression)
    assert got == LINES and damage is not None and "stream 2" in str(damage)


def test_a_corrupt_gzip_block_keeps_every_line_before_it(flushed_gzip: Any) -> None:
    blob, ends = flushed_gzip(LINES)
    k = 2000
    broken = bytearray(blob)
    broken[ends[k - 1] + 3] ^= 0xFF  # inside line k's block: its Huffman codes break
    got, damage = read_lines(bytes(broken), "gzip")
    assert damage is not None and "corrupt" in str(damage)
    assert got[:k] == LINES[:k]  # every line before the damage, however large the read
    assert damage.offset >= ends[k - 1]


def test_a_byte_order_mark_is_not_part_of_the_first_line() -> None:
    data = BOM + b'{"a": 1}\n{"b": 2}\n'
    for chunk in (1, 2, 5, 1000):
        lines = list(iter_lines(io.BytesIO(data), "f", max_line_bytes=100, chunk_bytes=chunk))
        assert [(x.number, x.data, x.n_bytes) for x in lines] == [
            (1, b'{"a": 1}', 8),
            (2, b'{"b": 2}', 8),
        ]
    assert [x.data for x in iter_lines(io.BytesIO(BOM), "f", max_line_bytes=9)] == []
    middle = b"x\n" + BOM + b"y\n"  # only the file's start: elsewhere it stays
    assert [x.data for x in iter_lines(io.BytesIO(middle), "f", max_line_bytes=9)] == [
        b"x",
        BOM + b"y",
    ]


@settings(max_examples=150, deadline=None)
@given(
    compression=st.sampled_from(sorted(COMPRESS)),
    data=st.binary(max_size=3000),
    cut=st.floats(0, 1),
    flip=st.one_of(st.none(), st.tuples(st.floats(0, 1), st.integers(1, 255))),
)
def test_any_damage_is_stream_damaged_after_a_prefix_of_the_lines(
    compression: str, data: bytes, cut: float, flip: tuple[float, int] | None
) -> None:
    blob = bytearray(COMPRESS[compression](data))
    if flip is not None:
        blob[int(flip[0] * (len(blob) - 1))] ^= flip[1]
    blob = blob[: max(1, round(cut * len(blob)))] if cut < 1 else blob
    got, damage = read_lines(bytes(blob), compression)  # nothing else may be raised
    whole = [x.data for x in iter_lines(io.BytesIO(data), "f", max_line_bytes=1 << 20)]
    if damage is None:
        assert got == whole or flip is not None  # a flipped byte may still decode (stored data)
    elif flip is None:
        assert got == whole[: len(got)]
