"""Tar shards read member by member, past a corrupt header, with every damage reported.

Python's ``tarfile`` in stream mode takes a header that fails its checksum for the end of the
archive: the members after it vanish without a word. Here each 512-byte header is parsed with
tarfile's own `tarfile.TarInfo.frombuf`, and a bad one is reported and skipped: the reader scans
on, block by block, to the next block that is a valid ustar header, and goes on from there. A
shard that ends inside a header or a member, or without the end-of-archive marker (zero blocks),
was cut short, and is reported too. Compressed shards (gzip, bzip2, xz, zstd, recognised by their
first bytes, as ``tarfile``'s ``"r|*"`` does) are read through `alp_curation.streams.CheckedReader`,
so a cut or corrupt compressed stream raises `StreamDamaged` after the members before it.

Understood: regular files (their bytes), PAX extended headers (``path``, ``size``) and GNU long
names; other member types (folders, links, devices) are skipped with their data.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from alp_curation.streams import CheckedReader

__all__ = ["TarDamage", "shard_stream", "tar_members"]

BLOCK = tarfile.BLOCKSIZE  # 512
ZERO_BLOCK = bytes(BLOCK)
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "lzma",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_MEMBER_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)  # regular files
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)


class TarDamage(tarfile.ReadError):
    """A damaged place in a tar shard; ``offset`` is its byte in the (uncompressed) archive."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class _Prefixed:
    """``prefix``, then the rest of ``raw``: the bytes read to recognise a compression, put back."""

    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        self._prefix = prefix
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            out, self._prefix = (
                (self._prefix, b"") if n < 0 else (self._prefix[:n], self._prefix[n:])
            )
            return out
        return self._raw.read(n)

    def close(self) -> None:
        self._raw.close()


def shard_stream(raw: BinaryIO, url: str) -> BinaryIO:
    """The tar bytes of a shard stream, decompressed when its first bytes say it is compressed."""
    head = _read(raw, 6)
    stream = _Prefixed(head, raw)
    for magic, compression in _MAGIC.items():
        if head.startswith(magic):
            return CheckedReader(stream, compression, source=url)  # type: ignore[arg-type]
    return stream  # type: ignore[return-value]


def _read(f: BinaryIO, n: int) -> bytes:
    """``n`` bytes, fewer only at the end of the stream (reads may be short)."""
    parts, got = [], 0
    while got < n and (chunk := f.read(n - got)):
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _header(block: bytes) -> tarfile.TarInfo | None:
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``"<length> <key>=<value>\\n"`` records of a PAX extended header (POSIX.1-2001)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError(f"malformed PAX record at byte {pos}")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _resync(stream: BinaryIO, offset: int) -> tuple[int, bytes | None]:
    """Scan from the block after ``offset`` to the next valid ustar header: (its offset, the
    block), or (where the stream ended, None)."""
    while True:
        offset += BLOCK
        block = _read(stream, BLOCK)
        if len(block) < BLOCK:
            return offset, None
        if block[257:262] == b"ustar" and _header(block) is not None:
            return offset, block


def _after_end(stream: BinaryIO, offset: int) -> tuple[int, bytes | None]:
    """Past the end-of-archive marker at ``offset``: (offset, block) of the first block that is
    not zero padding (another archive, or garbage), or (end, None)."""
    while True:
        offset += BLOCK
        block = _read(stream, BLOCK)
        if block.strip(b"\0") == b"":
            if len(block) < BLOCK:
                return offset, None
            continue
        return offset, block


def tar_members(
    stream: BinaryIO, *, on_damage: Callable[[TarDamage], None]
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular member of a tar stream, in archive order.

    A header that fails its checksum goes to ``on_damage`` with where reading resumed (the next
    valid ustar header), and the members after it are read; so do bytes after the end-of-archive
    marker (a second archive appended, or garbage). A stream that ends inside a header or a
    member, or without the end-of-archive marker, goes to ``on_damage`` after every whole member
    before it. Exceptions of ``stream`` itself (`StreamDamaged`) pass through.
    """
    offset = 0
    extended: dict[str, str] = {}  # PAX / GNU long-name fields for the next member
    block: bytes | None = _read(stream, BLOCK)
    while True:
        if not block:
            on_damage(TarDamage(f"ends at byte {offset} without the end-of-archive marker", offset))
            return
        if len(block) < BLOCK:
            on_damage(TarDamage(f"is cut short inside the header at byte {offset}", offset))
            return
        if block == ZERO_BLOCK:  # the end-of-archive marker
            end = offset
            offset, block = _after_end(stream, offset)
            if block is None:
                return
            on_damage(TarDamage(f"holds data at byte {offset}, after its end at byte {end}", end))
            continue
        info = _header(block)
        if info is None:
            bad = offset
            offset, block = _resync(stream, offset)
            skipped = f"{offset - bad} bytes skipped"
            if block is None:
                what = "is not a tar archive" if bad == 0 else f"has a corrupt header at byte {bad}"
                on_damage(TarDamage(f"{what}: no valid header after it ({skipped})", bad))
                return
            on_damage(
                TarDamage(
                    f"has a corrupt header at byte {bad} (bad checksum); reading resumed at the "
                    f"next valid header, byte {offset} ({skipped})",
                    bad,
                )
            )
            extended = {}
            continue
        start = offset
        is_member = info.type in _MEMBER_TYPES
        try:
            size = int(extended["size"]) if is_member and "size" in extended else info.size
        except ValueError:
            on_damage(TarDamage(f"has a bad PAX size for the member at byte {start}", start))
            size = info.size
        padded = -(-size // BLOCK) * BLOCK
        data = _read(stream, padded)
        if len(data) < size:
            name = extended.get("path", info.name)
            on_damage(
                TarDamage(f"is cut short inside member {name!r} (header at byte {start})", start)
            )
            return
        data = data[:size]
        offset += BLOCK + padded
        if info.type in _PAX_TYPES:
            try:
                extended = {**extended, **_pax_records(data)}
            except ValueError as exc:
                on_damage(TarDamage(f"has a bad PAX header at byte {start}: {exc}", start))
                extended = {}
        elif info.type == tarfile.GNUTYPE_LONGNAME:
            extended["path"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type not in (tarfile.XGLTYPE, tarfile.GNUTYPE_LONGLINK):
            if is_member:
                yield extended.get("path", info.name), data
            extended = {}
        block = _read(stream, BLOCK)
