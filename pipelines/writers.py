"""Output files that are byte-identical whatever the runner, worker count or bundle order.

One writer per kind of file serves both pipelines (`extract_alps`, `build_coco_shards`): Parquet
parts, WebDataset shards, dead-letter parts and the manifest.

Beam's file sinks name shards after the bundles that wrote them, so their bytes change from run
to run. Here instead every row goes to file ``stable_hash(key) % n_files``, with ``n_files``
derived from the row count (a side input); each file's rows are grouped, sorted, and written by
one DoFn through FileSystems (gs:// works) under a temporary name, then renamed. Every file index
gets an element, so a file is written even when the hash leaves it no row (an empty table), and
the set of file names depends on the counts alone. On a runner that runs on this machine, the
grouping goes through the local disk instead of the runner's memory (`Spilled`,
`pipelines.spill`), with the same files as the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam import pvalue
from webdataset import TarWriter

from alp_dataset.schema import (
    ALP_SCHEMA,
    ALP_SORT_KEY,
    ALPS_DIR,
    DEAD_LETTERS_DIR,
    MANIFEST_NAME,
    PHRASES_DIR,
    SHARDS_DIR,
    n_parts,
    part_name,
    phrase_schema,
    shard_name,
)
from pipelines import manifest as m
from pipelines import progress, spill
from pipelines.elements import AlpRow, PhraseRow
from pipelines.io import join, read_file, remove_temp_files, write_atomic, write_bytes_atomic

ALP_ROW_GROUP_ROWS = 65_536
TABLE_CHUNK_ROWS = 8_192  # rows turned into Arrow columns at a time (`table_sorted_by`)
PHRASE_ROW_GROUP_ROWS = 8_192  # rows carry a (D,) embedding: ~16 MiB per group at D = 512
PARQUET_OPTIONS: Mapping[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
}

PartKey = tuple[int, int]  # (file index, number of files)


def stable_hash(text: str) -> int:
    """A non-negative 64-bit hash that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def alp_part(row: AlpRow) -> int:
    return stable_hash(row.image_key)  # an image's ALPs share a file


def phrase_part(row: PhraseRow) -> int:
    return row.phrase_id


class DeadLetterRow(Protocol):
    """What the dead-letter writer needs of a pipeline's dead letters."""

    def to_json(self) -> dict[str, Any]: ...

    def sort_key(self) -> tuple[Any, ...]: ...

    def part_key(self) -> str: ...  # hashed to choose the file


class ShardSample(Protocol):
    """What the shard writer needs of a pipeline's samples: the key, the members' bytes by
    extension, and the image file, if any, whose bytes become the member ``<key>.<extension>``."""

    key: str
    image: tuple[str, str] | None  # (path, extension)

    def members(self) -> dict[str, bytes]: ...


def dead_letter_part(letter: DeadLetterRow) -> int:
    return stable_hash(letter.part_key())


def sample_part(sample: ShardSample) -> int:
    return stable_hash(sample.key)


def _assign_part(row: Any, part_of: Callable[[Any], int], per_part: int, n_rows: int) -> Any:
    n = n_parts(n_rows, per_part)
    return (part_of(row) % n, n), row


def _every_part(n_rows: int, per_part: int) -> list[tuple[PartKey, None]]:
    n = n_parts(n_rows, per_part)
    return [((i, n), None) for i in range(n)]


class GroupIntoParts(beam.PTransform):
    """rows -> ((file index, n files), rows of that file, with None fillers), for every index."""

    def __init__(self, rows_per_part: int, part_of: Callable[[Any], int]) -> None:
        super().__init__()
        if rows_per_part < 1:
            raise ValueError(f"rows_per_part = {rows_per_part}, expected >= 1")
        self.rows_per_part = rows_per_part
        self.part_of = part_of

    def expand(self, rows: pvalue.PCollection) -> pvalue.PCollection:
        n_rows = rows | "CountRows" >> beam.combiners.Count.Globally()
        keyed = rows | "AssignPart" >> beam.Map(
            _assign_part, self.part_of, self.rows_per_part, pvalue.AsSingleton(n_rows)
        )
        every = n_rows | "EveryPart" >> beam.FlatMap(_every_part, self.rows_per_part)
        return (keyed, every) | "WithEmptyParts" >> beam.Flatten() | beam.GroupByKey()


def _rows(rows: Iterable[Any], sort_key: Callable[[Any], Any]) -> list[Any]:
    return sorted((r for r in rows if r is not None), key=sort_key)


def alp_table(rows: Sequence[AlpRow]) -> pa.Table:
    """The ALP table of ``rows``, in ALP_SCHEMA."""
    columns: list[pa.Array] = []
    for field in ALP_SCHEMA:
        if field.name == "box_xyxy_norm":
            boxes = np.asarray([r.box_xyxy_norm for r in rows], dtype=np.float32)  # (R, 4)
            flat = pa.array(boxes.reshape(-1), type=pa.float32())  # (R * 4,)
            columns.append(pa.FixedSizeListArray.from_arrays(flat, 4))
        else:
            columns.append(pa.array([getattr(r, field.name) for r in rows], type=field.type))
    return pa.Table.from_arrays(columns, schema=ALP_SCHEMA)


def phrase_table(rows: Sequence[PhraseRow], *, dim: int, encoder_id: str) -> pa.Table:
    """The phrase table of ``rows``; raises when two phrases share a phrase_id (a hash clash)."""
    schema = phrase_schema(dim, encoder_id)
    ids = [r.phrase_id for r in rows]
    if len(set(ids)) != len(ids):
        seen: dict[int, str] = {}
        for r in rows:
            if r.phrase_id in seen:
                raise RuntimeError(
                    f"phrases {seen[r.phrase_id]!r} and {r.phrase!r} share phrase_id {r.phrase_id}"
                )
            seen[r.phrase_id] = r.phrase
    embeddings = np.zeros((len(rows), dim), dtype=np.float32)  # (R, D)
    for i, r in enumerate(rows):
        embeddings[i] = r.embedding
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())  # (R * D,)
    columns = [
        pa.array(ids, type=pa.int64()),
        pa.array([r.phrase for r in rows], type=pa.string()),
        pa.array([r.n_alps for r in rows], type=pa.int64()),
        pa.FixedSizeListArray.from_arrays(flat, dim),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def table_sorted_by(
    rows: Iterable[Any], to_table: Callable[[Sequence[Any]], pa.Table], columns: Sequence[str]
) -> pa.Table:
    """``to_table`` of the rows (None fillers skipped), sorted by ``columns`` in Arrow.

    The rows become Arrow columns ``TABLE_CHUNK_ROWS`` at a time, so a file's rows are never all
    held as Python objects (several times their Arrow size). Strings sort by their UTF-8 bytes,
    which is the order of their code points, Python's order: with ``columns`` a unique key, the
    rows come out as ``sorted(rows, key=<those fields>)`` would put them.
    """
    chunks, chunk = [], []
    for row in rows:
        if row is None:
            continue
        chunk.append(row)
        if len(chunk) == TABLE_CHUNK_ROWS:
            chunks.append(to_table(chunk))
            chunk = []
    if chunk or not chunks:
        chunks.append(to_table(chunk))
    table = pa.concat_tables(chunks)
    order = pc.sort_indices(table, sort_keys=[(name, "ascending") for name in columns])
    return table.take(order).combine_chunks()


class WriteParquetPartFn(beam.DoFn):
    """((index, n), rows) -> writes <subdir>/part-index-of-n.parquet; yields (kind, path, rows).

    Rows are sorted by ``sort_key`` (a function of a row), or, given a tuple of column names
    forming a unique key, in Arrow by those columns (`table_sorted_by`: less memory).
    """

    def __init__(
        self,
        out_dir: str,
        subdir: str,
        to_table: Callable[[Sequence[Any]], pa.Table],
        sort_key: Callable[[Any], Any] | tuple[str, ...],
        row_group_rows: int,
    ) -> None:
        self.out_dir = out_dir
        self.subdir = subdir
        self.to_table = to_table
        self.sort_key = sort_key
        self.row_group_rows = row_group_rows

    def process(self, element: tuple[PartKey, Iterable[Any]]) -> Iterator[tuple[str, str, int]]:
        (index, n), rows = element
        name = part_name(index, n, "parquet")
        with m.timed("write"):
            if isinstance(self.sort_key, tuple):
                table = table_sorted_by(rows, self.to_table, self.sort_key)
            else:
                table = self.to_table(_rows(rows, self.sort_key))

            def write(f: Any) -> None:
                pq.write_table(table, f, row_group_size=self.row_group_rows, **PARQUET_OPTIONS)

            write_atomic(join(self.out_dir, self.subdir, name), write)
        yield self.subdir, f"{self.subdir}/{name}", table.num_rows


class WriteDeadLetterPartFn(beam.DoFn):
    """((index, n), dead letters) -> writes dead_letters/part-index-of-n.jsonl, sorted."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, element: tuple[PartKey, Iterable[Any]]) -> Iterator[tuple[str, str, int]]:
        (index, n), letters = element
        name = part_name(index, n, "jsonl")
        with m.timed("write"):
            rows = _rows(letters, lambda letter: letter.sort_key())
            text = "".join(
                json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) + "\n" for r in rows
            )
            write_bytes_atomic(join(self.out_dir, DEAD_LETTERS_DIR, name), text.encode("utf-8"))
        yield DEAD_LETTERS_DIR, f"{DEAD_LETTERS_DIR}/{name}", len(rows)


def _sample_order(sample: ShardSample) -> str:
    return sample.key


def _tar_writer(f: Any) -> TarWriter:
    # Fixed owner, mode and time: a shard's bytes depend on its content alone. PAX, the format
    # tarfile writes by default, keeps long and non-ASCII names; TarWriter 1.0 drops its format
    # argument and takes tarfile's default, later versions honour it: PAX either way.
    return TarWriter(f, user="", group="", mode=0o644, mtime=0, encoder=False, format="PAX_FORMAT")


class WriteShardFn(beam.DoFn):
    """((index, n), samples) -> writes shards/shard-index.tar; yields ("shards", path, samples).

    Samples are sorted by key and their members written in the order of their extensions
    (webdataset's TarWriter sorts them). ``samples_stat`` counts the samples written. With
    ``image_stats`` (found, missing), images are optional: one that cannot be read (gone, a
    folder, a FIFO, no permission) leaves its sample without an image and is counted missing.
    Without, every sample's image was checked upstream and a failed read fails the bundle.
    With the ``embeddings`` side input (phrase -> row), samples are `SampleWithoutEmbeddings`
    and get their embeddings.npy here. Samples written are counted as they go
    (`pipelines.progress`; ``progress_folder``: a local run's display).
    """

    def __init__(
        self,
        out_dir: str,
        samples_stat: str,
        image_stats: tuple[str, str] | None = None,
        progress_folder: str | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.samples_stat = samples_stat
        self.image_stats = image_stats
        self.progress_folder = progress_folder

    def finish_bundle(self) -> None:
        progress.flush(self.progress_folder)

    def _image(self, sample: ShardSample) -> dict[str, bytes]:
        if sample.image is None:
            return {}
        path, extension = sample.image
        data = read_file(path)
        if data is None:
            if self.image_stats is None:
                raise OSError(f"{path}: the image of sample {sample.key} cannot be read")
            logging.warning("%s: cannot read the image of sample %s", path, sample.key)
            return {}
        return {extension: data}

    def process(
        self,
        element: tuple[PartKey, Iterable[Any]],
        embeddings: Mapping[str, np.ndarray] | None = None,
    ) -> Iterator[Any]:
        (index, _), samples = element
        rows = _rows(samples, _sample_order)
        if embeddings is not None:
            rows = [s.complete(embeddings) for s in rows]
        found = 0

        def write(f: Any) -> None:
            nonlocal found
            with _tar_writer(f) as tar:
                for s in rows:
                    image = self._image(s)
                    found += bool(image)
                    tar.write({"__key__": s.key, **s.members(), **image})
                    progress.advance(self.progress_folder, progress.SAMPLES_WRITTEN)

        name = shard_name(index)
        with m.timed("write"):
            write_atomic(join(self.out_dir, SHARDS_DIR, name), write)
        yield SHARDS_DIR, f"{SHARDS_DIR}/{name}", len(rows)
        yield m.stat(self.samples_stat, len(rows))
        if self.image_stats is not None:
            found_stat, missing_stat = self.image_stats
            yield m.stat(found_stat, found)
            yield m.stat(missing_stat, len(rows) - found)


@dataclass(frozen=True)
class Spilled:
    """How `WriteParts` groups rows through the local disk (`pipelines.spill`), for runners on
    this machine.

    Attributes:
        folder: the run's spill folder (`pipelines.spill.spill_folder`).
        part_of: the hash of the rows given, when they are not what the writer takes (the
            default: the writer's own ``part_of``).
        prepare: the part's rows -> what the writer takes (`pipelines.spill.WriteSpilledPartFn`).
        n_rows: a PCollection of one count that sets the number of files, when it is not the
            number of rows given (samples: the images, of rows that are ALPs and narratives).
    """

    folder: str
    part_of: Callable[[Any], int] | None = None
    prepare: Callable[[Iterable[Any]], Iterable[Any]] | None = None
    n_rows: pvalue.PCollection | None = None


class WriteParts(beam.PTransform):
    """rows -> files written by ``write_fn`` -> {"files": (kind, path, rows), "stats"}.

    ``side_inputs`` are passed to ``write_fn.process`` after each part. With ``spilled`` the
    rows are grouped through the local disk (`Spilled`), else by `GroupIntoParts`."""

    def __init__(
        self,
        rows_per_part: int,
        part_of: Callable[[Any], int],
        write_fn: beam.DoFn,
        side_inputs: Sequence[Any] = (),
        spilled: Spilled | None = None,
    ):
        super().__init__()
        if rows_per_part < 1:
            raise ValueError(f"rows_per_part = {rows_per_part}, expected >= 1")
        self.rows_per_part = rows_per_part
        self.part_of = part_of
        self.write_fn = write_fn
        self.side_inputs = tuple(side_inputs)
        self.spilled = spilled

    def expand(self, rows: pvalue.PCollection) -> pvalue.DoOutputsTuple:
        if self.spilled is None:
            write = beam.ParDo(self.write_fn, *self.side_inputs)
            parts = rows | "GroupIntoFiles" >> GroupIntoParts(self.rows_per_part, self.part_of)
        else:
            write = beam.ParDo(
                spill.WriteSpilledPartFn(self.write_fn, self.spilled.prepare), *self.side_inputs
            )
            spilled = self.spilled
            group = spill.GroupThroughDisk(
                spilled.folder, self.rows_per_part, spilled.part_of or self.part_of, spilled.n_rows
            )
            parts = rows | "GroupIntoFiles" >> group
        return parts | "WriteFiles" >> write.with_outputs(m.STATS, main="files")


def write_alp_table(
    out_dir: str, rows_per_file: int, *, spilled: Spilled | None = None
) -> WriteParts:
    fn = WriteParquetPartFn(out_dir, ALPS_DIR, alp_table, ALP_SORT_KEY, ALP_ROW_GROUP_ROWS)
    return WriteParts(rows_per_file, alp_part, fn, spilled=spilled)


def _phrase_order(row: PhraseRow) -> str:
    return row.phrase


class _PhraseTable:
    """Picklable ``rows -> phrase_table(rows, dim, encoder_id)``."""

    def __init__(self, dim: int, encoder_id: str) -> None:
        self.dim = dim
        self.encoder_id = encoder_id

    def __call__(self, rows: Sequence[PhraseRow]) -> pa.Table:
        return phrase_table(rows, dim=self.dim, encoder_id=self.encoder_id)


def write_phrase_table(
    out_dir: str, rows_per_file: int, dim: int, encoder_id: str, *, spilled: Spilled | None = None
) -> WriteParts:
    to_table = _PhraseTable(dim, encoder_id)
    fn = WriteParquetPartFn(out_dir, PHRASES_DIR, to_table, _phrase_order, PHRASE_ROW_GROUP_ROWS)
    return WriteParts(rows_per_file, phrase_part, fn, spilled=spilled)


def write_dead_letters(
    out_dir: str, rows_per_file: int, *, spilled: Spilled | None = None
) -> WriteParts:
    fn = WriteDeadLetterPartFn(out_dir)
    return WriteParts(rows_per_file, dead_letter_part, fn, spilled=spilled)


def write_shards(
    out_dir: str,
    shard_size: int,
    *,
    samples_stat: str = m.SAMPLES,
    image_stats: tuple[str, str] | None = None,
    embeddings: pvalue.AsDict | None = None,
    progress_folder: str | None = None,
    spilled: Spilled | None = None,
) -> WriteParts:
    """Samples -> shards/shard-NNNNNN.tar (`WriteShardFn`), about ``shard_size`` samples each;
    with ``embeddings`` (`pipelines.samples.phrase_embeddings`) for SampleWithoutEmbeddings."""
    fn = WriteShardFn(out_dir, samples_stat, image_stats, progress_folder)
    side = () if embeddings is None else (embeddings,)
    return WriteParts(shard_size, sample_part, fn, side, spilled=spilled)


def build_alp_manifest(
    stats: Mapping[str, int], files: list[tuple[str, str, int]], about: Mapping[str, Any]
) -> dict[str, Any]:
    """The manifest of an ALP extraction run (``about``: its static entries)."""
    return m.build_manifest(stats, files, **about)


ManifestBuilder = Callable[[Mapping[str, int], list[tuple[str, str, int]], Mapping[str, Any]], Any]


class WriteManifestFn(beam.DoFn):
    """Runs once, after every file is written (its side inputs need them all): the manifest.

    ``build`` (a module-level function, so that it pickles) turns the summed statistics, the files
    written and the run's static entries into the manifest; each pipeline brings its own.
    """

    def __init__(self, out_dir: str, about: Mapping[str, Any], build: ManifestBuilder) -> None:
        self.out_dir = out_dir
        self.about = dict(about)
        self.build = build

    def process(
        self, _: None, stats: Mapping[str, int], files: list[tuple[str, str, int]]
    ) -> Iterator[str]:
        manifest = self.build(stats, files, self.about)
        remove_temp_files(self.out_dir)  # left by failed attempts of retried bundles
        path = join(self.out_dir, MANIFEST_NAME)
        write_bytes_atomic(path, m.manifest_bytes(manifest))
        yield path


class WriteManifest(beam.PTransform):
    """(files, stats) -> manifest.json, written last: its presence marks a complete run."""

    def __init__(
        self,
        out_dir: str,
        about: Mapping[str, Any],
        build: ManifestBuilder = build_alp_manifest,
    ) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.about = about
        self.build = build

    def expand(self, inputs: tuple[pvalue.PCollection, pvalue.PCollection]) -> pvalue.PCollection:
        files, stats = inputs
        totals = stats | "SumStats" >> beam.CombinePerKey(sum)
        return (
            files.pipeline
            | "Once" >> beam.Create([None])
            | "Write"
            >> beam.ParDo(
                WriteManifestFn(self.out_dir, self.about, self.build),
                stats=pvalue.AsDict(totals),
                files=pvalue.AsList(files),
            )
        )
