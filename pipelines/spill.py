"""Rows grouped into output files through the local disk, for runners that run on this machine.

Beam's local runner (FnApiRunner) keeps every PCollection that crosses a stage boundary in its
own memory: the rows before a GroupByKey, the groups after it, and a PCollection that waits for a
side input computed from itself (the writers' row count). Grouping the ALP rows, the samples and
the dead letters into files that way holds the whole output in RAM, several times over, and
leaves the small-object heap fragmented afterwards, so a run's peak memory grows with its input.

Here the grouping goes through files instead, in three steps:

1. **Spill** (`SpillFn`), fused into the stage that makes the rows: each row is pickled and
   appended, with the 64-bit hash that chooses its file, to one spill file per bundle; only
   ``(spill path, rows)`` leaves the bundle.
2. **Route** (`RouteSpillsFn`), once, when every spill is complete: the number of files follows
   from the total (`alp_dataset.schema.n_parts`, as on distributed runners), and one streaming
   pass copies each row's bytes, unread, into the part file of ``hash % n``. Every file index
   gets an element, with its part file or none (an empty file).
3. **Write** (`WriteSpilledPartFn`): each part file is read back and handed to the writer DoFn
   exactly as a GroupByKey would hand it the group, ``((index, n), rows)``.

Memory is then bounded by one output file's rows, whatever the input's size; the disk holds the
rows twice for a while (spill files are deleted once routed, part files once written). The
files written are byte-identical to the GroupByKey path's: the same rows reach the same file, and
the writers sort them. The folder must be on this machine's disk, shared by its worker
processes: distributed runners keep the GroupByKey (`pipelines.writers.GroupIntoParts`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from alp_dataset.schema import n_parts
from pipelines import manifest as m

__all__ = [
    "ROUTE_BUFFER_BYTES",
    "GroupThroughDisk",
    "RouteSpillsFn",
    "SpillFn",
    "WriteSpilledPartFn",
    "read_part",
    "spill_folder",
]

SPILL_HEADER = struct.Struct("<QI")  # the row's hash, its pickle's length
PART_HEADER = struct.Struct("<I")  # the row's pickle's length
ROUTE_BUFFER_BYTES = 32 * 2**20  # rows routed are buffered up to this much before appending
FILE_BUFFER_BYTES = 2**20

SpillSummary = tuple[str, int]  # (spill file path, rows in it)


@contextlib.contextmanager
def spill_folder(enabled: bool) -> Iterator[str | None]:
    """A fresh folder for a local run's spill files under the system's temporary folder
    (``TMPDIR``), removed when the block ends; None when not ``enabled`` (distributed runs)."""
    if not enabled:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="alp-spill-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _global(value: Any) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


class SpillFn(beam.DoFn):
    """row -> appended to this bundle's spill file under ``folder``; at the bundle's end,
    ``(path, rows)`` of that file (nothing for a bundle without rows).

    ``part_of(row)`` is the non-negative hash that chooses the row's file (`RouteSpillsFn`).
    """

    def __init__(self, folder: str, part_of: Callable[[Any], int]) -> None:
        self.folder = folder
        self.part_of = part_of
        self._file: BinaryIO | None = None
        self._path = ""
        self._rows = 0
        self._seconds = 0.0  # spent spilling in this bundle, counted once at its end

    def start_bundle(self) -> None:
        self._file, self._path, self._rows, self._seconds = None, "", 0, 0.0

    def process(self, row: Any) -> Iterator[Any]:
        start = time.perf_counter()
        if self._file is None:
            self._path = os.path.join(self.folder, f"spill-{uuid.uuid4().hex}")
            self._file = open(self._path, "wb", buffering=FILE_BUFFER_BYTES)
        data = pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.write(SPILL_HEADER.pack(self.part_of(row) & (2**64 - 1), len(data)))
        self._file.write(data)
        self._rows += 1
        self._seconds += time.perf_counter() - start
        return iter(())

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        m.add_seconds("write", self._seconds)
        yield _global((self._path, self._rows))


def _spilled_rows(path: str) -> Iterator[tuple[int, bytes]]:
    """(hash, pickled row) of each row of a spill file, in order."""
    with open(path, "rb", buffering=FILE_BUFFER_BYTES) as f:
        while header := f.read(SPILL_HEADER.size):
            if len(header) != SPILL_HEADER.size:
                raise OSError(f"{path}: spill file cut short in a row's header")
            key, size = SPILL_HEADER.unpack(header)
            data = f.read(size)
            if len(data) != size:
                raise OSError(f"{path}: spill file cut short in a row ({len(data)} of {size} B)")
            yield key, data


class _PartFiles:
    """Appends rows to part files, buffered: at most ``ROUTE_BUFFER_BYTES`` held at once."""

    def __init__(self, folder: str, tag: str) -> None:
        self.folder = folder
        self.tag = tag
        self.buffers: dict[int, bytearray] = {}
        self.held = 0

    def path(self, index: int) -> str:
        return os.path.join(self.folder, f"part-{self.tag}-{index}")

    def add(self, index: int, data: bytes) -> None:
        buffer = self.buffers.setdefault(index, bytearray())
        buffer += PART_HEADER.pack(len(data))
        buffer += data
        self.held += PART_HEADER.size + len(data)
        if self.held >= ROUTE_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        for index, buffer in self.buffers.items():
            with open(self.path(index), "ab") as f:
                f.write(buffer)
        self.buffers = {}
        self.held = 0


class RouteSpillsFn(beam.DoFn):
    """None, with the spills' summaries -> ((index, n), part file or None) for every index.

    ``n = n_parts(total, rows_per_part)``, the total being the rows spilled or, when given, the
    ``n_rows`` side input (a count that is not the rows', as the images for samples). Each
    spill file is deleted once routed.
    """

    def __init__(self, folder: str, rows_per_part: int) -> None:
        self.folder = folder
        self.rows_per_part = rows_per_part

    def process(
        self, _: None, spills: Sequence[SpillSummary], n_rows: int | None = None
    ) -> Iterator[tuple[tuple[int, int], str | None]]:
        total = sum(rows for _, rows in spills) if n_rows is None else n_rows
        n = n_parts(total, self.rows_per_part)
        parts = _PartFiles(self.folder, uuid.uuid4().hex)
        with m.timed("write"):
            for path, _ in sorted(spills):
                for key, data in _spilled_rows(path):
                    parts.add(key % n, data)
                parts.flush()  # before the spill goes: a failure here keeps every row on disk
                os.remove(path)
        for index in range(n):
            path = parts.path(index)
            yield (index, n), path if os.path.exists(path) else None


def read_part(path: str | None) -> Iterator[Any]:
    """The rows of a part file, unpickled, in the order routed (none for None)."""
    if path is None:
        return
    with open(path, "rb", buffering=FILE_BUFFER_BYTES) as f:
        while header := f.read(PART_HEADER.size):
            (size,) = PART_HEADER.unpack(header)
            data = f.read(size)
            if len(header) != PART_HEADER.size or len(data) != size:
                raise OSError(f"{path}: part file cut short")
            yield pickle.loads(data)


class GroupThroughDisk(beam.PTransform):
    """rows -> ((index, n), part file or None) for every file index: steps 1 and 2 above.

    ``part_of(row)`` chooses the row's file; ``n_rows``, a PCollection of one count, sets the
    number of files when it is not the number of rows.
    """

    def __init__(
        self,
        folder: str,
        rows_per_part: int,
        part_of: Callable[[Any], int],
        n_rows: pvalue.PCollection | None = None,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.rows_per_part = rows_per_part
        self.part_of = part_of
        self.n_rows = n_rows

    def expand(self, rows: pvalue.PCollection) -> pvalue.PCollection:
        spills = rows | "Spill" >> beam.ParDo(SpillFn(self.folder, self.part_of))
        counts = {} if self.n_rows is None else {"n_rows": pvalue.AsSingleton(self.n_rows)}
        route = RouteSpillsFn(self.folder, self.rows_per_part)
        return (
            rows.pipeline
            | "Once" >> beam.Create([None])
            | "Route" >> beam.ParDo(route, spills=pvalue.AsList(spills), **counts)
            | "SpreadParts" >> beam.Reshuffle()
        )


class WriteSpilledPartFn(beam.DoFn):
    """((index, n), part file) -> ``write_fn.process(((index, n), rows), *side_inputs)``.

    ``prepare`` turns the part's rows into what ``write_fn`` takes (the identity by default:
    samples built from their images' ALPs, for one); the part file is deleted once written.
    Every DoFn method of ``write_fn`` that Beam would call is called.
    """

    def __init__(
        self,
        write_fn: beam.DoFn,
        prepare: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    ) -> None:
        self.write_fn = write_fn
        self.prepare = prepare

    def setup(self) -> None:
        self.write_fn.setup()

    def start_bundle(self) -> None:
        self.write_fn.start_bundle()

    def process(self, element: tuple[tuple[int, int], str | None], *side_inputs) -> Iterator[Any]:
        key, path = element
        rows: Iterable[Any] = read_part(path)
        if self.prepare is not None:
            rows = self.prepare(rows)
        yield from self.write_fn.process((key, rows), *side_inputs)
        if path is not None:
            os.remove(path)

    def finish_bundle(self) -> Iterator[Any]:
        return self.write_fn.finish_bundle()

    def teardown(self) -> None:
        self.write_fn.teardown()
