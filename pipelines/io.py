"""Files for the curation pipeline through Beam's FileSystems, so local paths, gs:// and s3:// work.

- `match_inputs`: the run's input files, matched once by the launcher (the manifest lists them).
- `iter_lines`: lines of a file in bounded memory; a line longer than the limit is kept as its first
  bytes, its length and its SHA-256, never as a whole.
- `write_atomic`: a file appears under its final name only when complete (temporary name, rename).
- `prepare_output`: refuse an output directory that holds an earlier run, or clear it (overwrite).
- `BeamStorage`: the `alp_curation.embedding_cache.Storage` protocol on FileSystems.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from alp_dataset.schema import (
    ALPS_DIR,
    DEAD_LETTERS_DIR,
    MANIFEST_NAME,
    PHRASES_DIR,
    SHARDS_DIR,
)

OUTPUT_DIRS = (ALPS_DIR, PHRASES_DIR, SHARDS_DIR, DEAD_LETTERS_DIR)
TEMP_MARKER = ".tmp-"  # temporary files: "." + final name + TEMP_MARKER + random hex
READ_CHUNK_BYTES = 1 << 20
KEEP_BYTES = 4096  # bytes of a too-long line kept for its dead letter


class OutputExists(RuntimeError):
    """The output directory holds files of an earlier run and --overwrite was not given."""


class NoInputFiles(RuntimeError):
    """An --input pattern matches no file."""


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def _matches(pattern: str) -> list[str]:
    """Paths matching a glob, sorted; [] when nothing (or no such directory) matches."""
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def match_inputs(patterns: list[str]) -> list[tuple[str, int]]:
    """(path, size in bytes) of every file the patterns match, sorted by path, without repeats."""
    found: dict[str, int] = {}
    for pattern in patterns:
        metadata = FileSystems.match([pattern])[0].metadata_list
        if not metadata:
            raise NoInputFiles(f"--input {pattern!r} matches no file")
        for m in metadata:
            found[m.path] = m.size_in_bytes
    return sorted(found.items())


@dataclass(frozen=True)
class RawLine:
    """One line of an input file, newline stripped (a "\\r" before it is kept, as JSON allows).

    ``data`` is the whole line, or only its first KEEP_BYTES when ``truncated`` (the line was
    longer than the limit); ``n_bytes`` and ``sha256`` always describe the whole line.
    """

    source: str
    number: int  # 1-based line number in source
    data: bytes
    n_bytes: int
    truncated: bool = False
    truncated_sha256: str = ""  # of the whole line, when only its head is kept

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the whole line; hashed only when asked (dead letters)."""
        return self.truncated_sha256 or hashlib.sha256(self.data).hexdigest()


def iter_lines(
    f: BinaryIO,
    source: str,
    *,
    max_line_bytes: int,
    keep_bytes: int = KEEP_BYTES,
    chunk_bytes: int = READ_CHUNK_BYTES,
) -> Iterator[RawLine]:
    """Every line of ``f``, blank ones included, holding at most ~max_line_bytes + chunk in memory.

    A line is kept whole while it fits in ``max_line_bytes``; past that only its first
    ``keep_bytes`` are kept and the rest is hashed as it streams by.
    """
    number = 0
    parts: list[bytes] = []
    size = 0
    hasher = None  # set once the current line is known to be too long
    head = b""

    def done() -> RawLine:
        if hasher is None:
            data = b"".join(parts)
            return RawLine(source, number, data, size)
        return RawLine(source, number, head, size, True, hasher.hexdigest())

    while chunk := f.read(chunk_bytes):
        pos = 0
        while pos <= len(chunk):
            newline = chunk.find(b"\n", pos)
            piece = chunk[pos:] if newline < 0 else chunk[pos:newline]
            size += len(piece)
            if hasher is not None:
                hasher.update(piece)
            else:
                parts.append(piece)
                if size > max_line_bytes:
                    whole = b"".join(parts)
                    head, hasher, parts = whole[:keep_bytes], hashlib.sha256(whole), []
            if newline < 0:
                break
            number += 1
            yield done()
            parts, size, hasher, head = [], 0, None, b""
            pos = newline + 1
    if size:  # a last line without a newline
        number += 1
        yield done()


def open_input(path: str) -> BinaryIO:
    """An input file for reading, decompressed by its extension (.gz, .bz2, .zst, ...)."""
    return FileSystems.open(path, compression_type=CompressionTypes.AUTO)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(f)`` under a temporary name, then rename it to ``path``.

    Readers never see a partial file under the final name. A retried or duplicated bundle
    writes the same bytes again (the pipeline is deterministic), so the last rename wins safely.
    """
    directory, name = FileSystems.split(path)
    temp = FileSystems.join(directory, f".{name}{TEMP_MARKER}{uuid.uuid4().hex}")
    try:
        with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            write(f)
        FileSystems.rename([temp], [path])
    except BaseException:
        if FileSystems.exists(temp):
            FileSystems.delete([temp])
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def existing_outputs(out_dir: str) -> list[str]:
    """The names of our outputs (manifest, table folders) already under ``out_dir``."""
    found = []
    if FileSystems.exists(join(out_dir, MANIFEST_NAME)):
        found.append(MANIFEST_NAME)
    for name in OUTPUT_DIRS:
        path = join(out_dir, name)
        if FileSystems.exists(path) or _matches(join(path, "*")):
            found.append(name + "/")
    return found


def remove_outputs(out_dir: str) -> None:
    """Delete our outputs under ``out_dir`` (never anything else), the manifest first.

    With the manifest gone first, a removal that stops half-way leaves no directory that
    looks complete.
    """
    manifest = join(out_dir, MANIFEST_NAME)
    if FileSystems.exists(manifest):
        FileSystems.delete([manifest])
    for name in OUTPUT_DIRS:
        path = join(out_dir, name)
        if FileSystems.exists(path):
            FileSystems.delete([path])  # a local directory goes recursively
        leftover = _matches(join(path, "*"))  # object stores have no directories: the objects
        if leftover:
            FileSystems.delete(leftover)


def prepare_output(out_dir: str, *, overwrite: bool) -> None:
    """Refuse an output directory holding an earlier run's files, or clear them (``overwrite``)."""
    found = existing_outputs(out_dir)
    if not found:
        return
    if not overwrite:
        state = "a complete" if MANIFEST_NAME in found else "an incomplete (no manifest.json)"
        raise OutputExists(
            f"output directory {out_dir} holds {state} earlier run ({', '.join(found)}); "
            "pass --overwrite to replace it, or choose another --output"
        )
    remove_outputs(out_dir)


def remove_temp_files(out_dir: str) -> list[str]:
    """Delete temporary files a failed attempt left in the output folders; their paths."""
    leftover = [
        path
        for name in OUTPUT_DIRS
        for path in _matches(join(out_dir, name, "*"))
        if TEMP_MARKER in FileSystems.split(path)[1]
    ]
    if leftover:
        FileSystems.delete(leftover)
    return leftover


class BeamStorage:
    """`alp_curation.embedding_cache.Storage` on Beam FileSystems: local, gs://, s3://."""

    def list(self, prefix: str) -> list[str]:
        # "**" crosses folders: every file whose path starts with the prefix, as Storage says.
        return [p for p in _matches(prefix + "**") if TEMP_MARKER not in FileSystems.split(p)[1]]

    def read(self, path: str) -> bytes:
        if not FileSystems.exists(path):
            raise FileNotFoundError(path)
        return read_bytes(path)

    def write_atomic(self, path: str, data: bytes) -> None:
        write_bytes_atomic(path, data)

    def join(self, *parts: str) -> str:
        return FileSystems.join(parts[0], *parts[1:])
