"""Tests for alp_dataset/tar_members.py and read_shards on damaged shards: a corrupt header in the
middle, shards cut at a member boundary, an archive appended, compressed shards cut short, long
names. Shards are written with tarfile here, so every member's bytes are known."""

from __future__ import annotations

import gzip
import io
import tarfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alp_dataset.datasets import read_shards
from alp_dataset.tar_members import BLOCK, TarDamage, shard_stream, tar_members

Members = list[tuple[str, bytes]]


def tar_bytes(members: Members, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def header_offsets(data: bytes) -> list[int]:
    """Byte offset of each member's header (the regular members only)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.offset for m in tar.getmembers()]


def sample_members(n: int) -> Members:
    return [
        member
        for i in range(n)
        for member in ((f"s{i}.json", b'{"i": %d}' % i), (f"s{i}.png", bytes([i]) * (700 + i)))
    ]


def read(data: bytes) -> tuple[Members, list[TarDamage]]:
    damage: list[TarDamage] = []
    members = list(tar_members(shard_stream(io.BytesIO(data), "x.tar"), on_damage=damage.append))
    return members, damage


def corrupt_header(data: bytes, offset: int) -> bytes:
    """``data`` with a byte of the header at ``offset`` changed, so that its checksum fails."""
    broken = bytearray(data)
    broken[offset + 5] ^= 0x55  # inside the name: the checksum no longer matches
    return bytes(broken)


def test_a_sound_shard_reads_whole_without_damage() -> None:
    members = sample_members(3)
    assert read(tar_bytes(members)) == (members, [])


def test_a_corrupt_header_in_the_middle_is_reported_and_skipped(tmp_path: Path) -> None:
    members = sample_members(5)
    data = tar_bytes(members)
    hit = 4  # the header of s2.json
    broken = corrupt_header(data, header_offsets(data)[hit])
    with tarfile.open(fileobj=io.BytesIO(broken), mode="r|") as tar:  # what tarfile makes of it
        assert len([m for m in tar if m.isreg()]) == hit  # s2..s4 vanish without a word
    got, damage = read(broken)
    assert got == members[:hit] + members[hit + 1 :]
    assert len(damage) == 1 and "resumed" in str(damage[0])
    assert damage[0].offset == header_offsets(data)[hit]

    path = tmp_path / "broken.tar"
    path.write_bytes(broken)
    errors: list[tuple[str, str]] = []
    samples = list(read_shards([str(path)], on_error=lambda k, w, e: errors.append((k, w))))
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in samples] == [
        ("s0", ["json", "png"]),
        ("s1", ["json", "png"]),
        ("s2", ["png"]),  # lost its json to the damage: decoding rejects it
        ("s3", ["json", "png"]),
        ("s4", ["json", "png"]),
    ]
    assert errors == [("shard", str(path))]


def test_a_shard_cut_at_a_member_boundary_is_reported() -> None:
    members = sample_members(3)
    data = tar_bytes(members)
    cut = header_offsets(data)[4]  # exactly before s2.json: every member read is whole
    got, damage = read(data[:cut])
    assert got == members[:4]
    assert len(damage) == 1 and "without the end-of-archive marker" in str(damage[0])
    got, damage = read(data[: cut + 100])
    assert got == members[:4] and "inside the header" in str(damage[0])
    got, damage = read(data[: cut + BLOCK + 3])
    assert got == members[:4] and "inside member 's2.json'" in str(damage[0])


def test_an_appended_archive_is_read_and_reported() -> None:
    first, second = sample_members(2), [("t0.json", b"{}"), ("t0.png", b"png")]
    got, damage = read(tar_bytes(first) + tar_bytes(second))
    assert got == first + second
    assert len(damage) == 1 and "after its end" in str(damage[0])


def test_garbage_is_not_a_tar_archive() -> None:
    got, damage = read(b"this is not a tar file" * 40)
    assert got == [] and "is not a tar archive" in str(damage[0])
    got, damage = read(b"")
    assert got == [] and len(damage) == 1


def test_long_names_read_in_pax_and_gnu_form() -> None:
    members = [("k" * 150 + ".json", b"{}"), ("caf\u00e9/x.png", b"p")]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        assert read(tar_bytes(members, fmt)) == (members, [])


def test_a_compressed_shard_cut_short_keeps_the_members_before(tmp_path: Path) -> None:
    members = sample_members(40)
    packed = gzip.compress(tar_bytes(members), mtime=0)
    assert read(packed) == (members, [])
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(packed[: len(packed) * 3 // 4])
    errors: list[BaseException] = []
    samples = list(read_shards([str(path)], on_error=lambda k, w, e: errors.append(e)))
    assert 0 < len(samples) < 40
    assert [s["__key__"] for s in samples] == [f"s{i}" for i in range(len(samples))]
    assert len(errors) == 1 and "cut short" in str(errors[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hit=st.integers(0, 11), byte=st.integers(0, BLOCK - 1), mask=st.integers(1, 255))
def test_any_damaged_header_loses_at_most_its_own_member(hit: int, byte: int, mask: int) -> None:
    members = sample_members(6)
    data = bytearray(tar_bytes(members))
    data[header_offsets(bytes(data))[hit] + byte] ^= mask
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes as a warning or an exception
        got, damage = read(bytes(data))
    others = members[:hit] + members[hit + 1 :]
    if members[hit] in got:  # a byte the checksum does not cover (e.g. past the NUL of a field)
        assert got == members
    else:
        assert [m for m in got if m in members] == others
        assert damage
