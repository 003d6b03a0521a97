"""Files for the pipelines through Beam's FileSystems, so local paths, gs:// and s3:// work.

- `match_inputs`: the run's input files, matched once by the launcher (the manifest lists them).
- `open_input`: an input file decompressed by its extension and checked to the end of its
  compressed stream (`alp_curation.streams`); `iter_lines` (from there) reads its lines.
- `is_file`, `read_file`: a local path must be a regular file before it is opened: a folder
  cannot be read, and opening a FIFO would wait for a writer forever.
- `find_image`: the image file of a LocNar image under an image root.
- `write_atomic`: a file appears under its final name only when complete (temporary name, rename).
- `prepare_output`: refuse an output directory that holds an earlier run, or clear it (overwrite).
- `BeamStorage`: the `alp_curation.embedding_cache.Storage` protocol on FileSystems.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable, Sequence
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from alp_curation.streams import RawLine, StreamDamaged, iter_lines, open_checked
from alp_dataset.schema import (
    ALPS_DIR,
    DEAD_LETTERS_DIR,
    IMAGE_EXTENSIONS,
    MANIFEST_NAME,
    PHRASES_DIR,
    SHARDS_DIR,
)

__all__ = [
    "OUTPUT_DIRS",
    "BeamStorage",
    "NoInputFiles",
    "NotARegularFile",
    "OutputExists",
    "RawLine",
    "StreamDamaged",
    "find_image",
    "is_file",
    "iter_lines",
    "join",
    "match_inputs",
    "open_input",
    "open_raw",
    "prepare_output",
    "read_bytes",
    "read_file",
    "read_head",
    "read_input",
    "remove_temp_files",
    "write_atomic",
    "write_bytes_atomic",
]

OUTPUT_DIRS = (ALPS_DIR, PHRASES_DIR, SHARDS_DIR, DEAD_LETTERS_DIR)
TEMP_MARKER = ".tmp-"  # temporary files: "." + final name + TEMP_MARKER + random hex


class OutputExists(RuntimeError):
    """The output directory holds files of an earlier run and --overwrite was not given."""


class NoInputFiles(RuntimeError):
    """An --input pattern matches no file."""


class NotARegularFile(OSError):
    """A local path that is a folder, a FIFO, a socket or a device, where a file is expected."""


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


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _check_regular(path: str) -> None:
    """Raise NotARegularFile for a local path that is no regular file (object stores hold only
    files); FileNotFoundError / PermissionError pass through."""
    if FileSystems.get_scheme(path) is not None:
        return
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise NotARegularFile(f"{path} is {kind}, not a file")


def is_file(path: str) -> bool:
    """Whether ``path`` exists and is a file (locally: a regular file, not a folder or FIFO)."""
    try:
        _check_regular(path)
    except OSError:
        return False
    return FileSystems.exists(path)


def open_raw(path: str) -> BinaryIO:
    """A file's bytes as stored (no decompression); `NotARegularFile` for a folder or FIFO."""
    _check_regular(path)
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def open_input(path: str) -> BinaryIO:
    """An input file for reading, decompressed by its extension (.gz, .bz2, .xz, .zst, ...).

    Reads raise `StreamDamaged` where a compressed file is cut short or corrupt (after the bytes
    before the damage), `NotARegularFile` for a folder or FIFO, other OSErrors as they come.
    """
    return open_checked(open_raw(path), path)


def read_bytes(path: str) -> bytes:
    """The bytes of a file as stored (no decompression)."""
    with open_raw(path) as f:
        return f.read()


def read_input(path: str) -> bytes:
    """The whole of an input file, decompressed and checked as `open_input` does."""
    with open_input(path) as f:
        return f.read()


def read_head(path: str, n_bytes: int) -> bytes:
    """Up to the first ``n_bytes`` of an input file, decompressed; what could be read before a
    damage or an error (b"" for a file that cannot be opened)."""
    head = b""
    try:
        with open_input(path) as f:
            while len(head) < n_bytes and (chunk := f.read(n_bytes - len(head))):
                head += chunk
    except (OSError, StreamDamaged):
        pass
    return head


def read_file(path: str) -> bytes | None:
    """The bytes of a file; None when it cannot be read (gone, a folder, a FIFO, no permission)."""
    try:
        return read_bytes(path)
    except OSError:
        return None


def _safe_path_part(name: str) -> bool:
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


def find_image(root: str, dataset_id: str, image_id: str) -> tuple[str, str] | None:
    """(path, extension) of ROOT/<dataset_id>/<image_id>.<ext> or ROOT/<image_id>.<ext>.

    Only files count: a folder (or FIFO) named like an image is passed over.
    """
    if not _safe_path_part(image_id):
        return None  # an id like "../x" must not read files outside the root
    folders = [join(root, dataset_id)] if _safe_path_part(dataset_id) else []
    for folder in [*folders, root]:
        for ext in IMAGE_EXTENSIONS:
            path = join(folder, f"{image_id}.{ext}")
            if is_file(path):
                return path, ext
    return None


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


def _holds(out_dir: str, name: str) -> bool:
    """Whether ``out_dir/name`` exists: as a folder, or (object stores) as a prefix of objects."""
    path = join(out_dir, name)
    return FileSystems.exists(path) or bool(_matches(join(path, "*")))


def existing_outputs(out_dir: str, outputs: Sequence[str] = OUTPUT_DIRS) -> list[str]:
    """The names of a run's outputs (manifest, ``outputs`` folders) already under ``out_dir``."""
    found = []
    if FileSystems.exists(join(out_dir, MANIFEST_NAME)):
        found.append(MANIFEST_NAME)
    found += [name + "/" for name in outputs if _holds(out_dir, name)]
    return found


def remove_outputs(out_dir: str, outputs: Sequence[str] = OUTPUT_DIRS) -> None:
    """Delete a run's outputs under ``out_dir`` (never anything else), the manifest first.

    With the manifest gone first, a removal that stops half-way leaves no directory that
    looks complete.
    """
    manifest = join(out_dir, MANIFEST_NAME)
    if FileSystems.exists(manifest):
        FileSystems.delete([manifest])
    for name in outputs:
        path = join(out_dir, name)
        if FileSystems.exists(path):
            FileSystems.delete([path])  # a local directory goes recursively
        leftover = _matches(join(path, "*"))  # object stores have no directories: the objects
        if leftover:
            FileSystems.delete(leftover)


def prepare_output(
    out_dir: str,
    *,
    overwrite: bool,
    outputs: Sequence[str] = OUTPUT_DIRS,
    foreign: Sequence[str] = (),
    foreign_kind: str = "",
) -> None:
    """Refuse an output directory holding an earlier run's files, or clear them (``overwrite``).

    ``outputs``: the folders this pipeline writes. A directory holding any of ``foreign`` (the
    folders of another kind of run, ``foreign_kind``) is refused even with ``overwrite``:
    removing only this pipeline's folders would leave a mix of two runs.
    """
    other = [name + "/" for name in foreign if _holds(out_dir, name)]
    if other:
        raise OutputExists(
            f"output directory {out_dir} holds {foreign_kind} ({', '.join(other)}); choose "
            "another --output"
        )
    found = existing_outputs(out_dir, outputs)
    if not found:
        return
    if not overwrite:
        state = "a complete" if MANIFEST_NAME in found else "an incomplete (no manifest.json)"
        raise OutputExists(
            f"output directory {out_dir} holds {state} earlier run ({', '.join(found)}); "
            "pass --overwrite to replace it, or choose another --output"
        )
    remove_outputs(out_dir, outputs)


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
