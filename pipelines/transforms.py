"""The curation stages as Beam transforms: read, parse, tag + curate, embed each unique phrase.

Each DoFn unpacks its input, calls one ``alp_curation`` function and yields; every outcome is
counted with `pipelines.manifest.stat`. DoFns live at module level in this importable module so
they pickle by reference and run in separate worker processes (``--direct_running_mode
multi_processing``, Dataflow). Models (spaCy, the text encoder) load in ``setup``, once per worker
process (`shared_tagger`, `shared_encoder`), never in the launcher's pickled state.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue

from alp_curation.curate import curate_record
from alp_curation.embedding_cache import EmbeddingCache, embed_with_cache
from alp_curation.encoders import load_text_encoder
from alp_curation.locnar import InvalidRecord, parse_record, record_to_json
from alp_curation.tagging import Tagger
from alp_dataset.schema import image_key, phrase_id
from pipelines import manifest as m
from pipelines import progress
from pipelines.elements import AlpRow, DeadLetter, Narrative, PhraseRow, SourcedRecord
from pipelines.io import BeamStorage, RawLine, StreamDamaged, iter_lines, open_input
from pipelines.samples import NARRATIVES

DEAD_LETTERS = "dead_letters"
INT64_MAX = 2**63 - 1

# ---------------------------------------------------------------------------------------------
# Models, once per worker process

_MODELS: dict[Hashable, Any] = {}
_MODELS_LOCK = threading.Lock()


@dataclass(eq=False)
class SharedModel:
    """A model and the lock its users hold: spaCy pipelines are not documented as thread-safe."""

    model: Any
    lock: threading.Lock


def _process_shared(key: Hashable, load: Callable[[], Any]) -> SharedModel:
    """One instance per process and key, however many DoFn instances and threads ask for it."""
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = SharedModel(load(), threading.Lock())
        return _MODELS[key]


def shared_tagger(model: str, batch_size: int) -> SharedModel:
    """This process's spaCy tagger for ``model`` (loaded on first use)."""
    return _process_shared(
        ("tagger", model, batch_size), lambda: Tagger(model, batch_size=batch_size)
    )


@dataclass(frozen=True)
class EncoderConfig:
    """Which text encoder to run, and where: a worker builds its encoder from this."""

    spec: str
    device: str = "cpu"
    num_threads: int | None = None  # torch threads per worker process; None = torch's default


def shared_encoder(config: EncoderConfig) -> SharedModel:
    """This process's text encoder for ``config`` (its weights load on the first encode)."""
    return _process_shared(
        ("encoder", config),
        lambda: load_text_encoder(
            config.spec, device=config.device, num_threads=config.num_threads
        ),
    )


# ---------------------------------------------------------------------------------------------
# Read


class ReadLane(NamedTuple):
    """Lines ``number % lanes == lane`` of one input file: the unit of work of `ReadLinesFn`."""

    path: str
    lane: int = 0
    lanes: int = 1


class ReadLinesFn(beam.DoFn):
    """Input file (a path: the whole file; or a `ReadLane`) -> its non-blank lines (RawLine); a
    file that cannot be read to its end gives, after the lines read before the damage, one
    "read_error" dead letter on the line after the last good one.

    The damage may be a compressed stream cut short (even at a line boundary) or corrupt
    (`StreamDamaged`), or a file that cannot be read at all: a folder, a FIFO, no permission.
    Each is one dead letter, never a failed run: the runner's retries would fail the same way.
    A lane reads the whole file and keeps its own lines (blank ones counted by the lane they
    fall in); damage is reported by lane 0 only, so the lanes of a file add up to the file. A
    read error that is not damage to the stream nor a failure to open (an I/O error in the
    middle of a file) raises in lanes other than 0, since it may not repeat in lane 0.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes

    def process(self, element: ReadLane | str) -> Iterator[Any]:
        path, lane, lanes = ReadLane(element) if isinstance(element, str) else element
        lines = blank = number = 0
        try:
            with open_input(path) as f:
                for line in iter_lines(f, path, max_line_bytes=self.max_line_bytes):
                    number = line.number
                    if number % lanes != lane:
                        continue
                    if not line.truncated and not line.data.strip():
                        blank += 1
                        continue
                    lines += 1
                    yield line
        except (StreamDamaged, OSError) as exc:
            if lane == 0:
                yield from self._read_error(path, number + 1, exc)
                lines += 1
            elif not (isinstance(exc, StreamDamaged) or number == 0):
                # Damage to the stream, and a file that cannot be opened, stop every lane at the
                # same line, and lane 0 reports it. Any other read error may have hit this lane
                # alone: the run fails rather than lose the lane's remaining lines unreported.
                raise
        yield m.stat(m.INPUT_LINES, lines)
        yield m.stat(m.BLANK_LINES, blank)

    @staticmethod
    def _read_error(path: str, number: int, exc: BaseException) -> Iterator[Any]:
        line = RawLine(path, number, b"", 0)
        good = f"after line {number - 1}" if number > 1 else "from its first line"
        detail = exc.message if isinstance(exc, StreamDamaged) else f"{type(exc).__name__}: {exc}"
        message = f"{path}: cannot be read {good}: {detail}"
        yield pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter.of(line, "read_error", "", message))
        yield m.stat(m.DEAD_LETTER + "read_error")


class ReadLocNar(beam.PTransform):
    """Matched input paths -> {"lines": RawLine, "dead_letters", "stats"}.

    Two ways to spread the lines over workers, so that parsing and tagging scale with the lines
    rather than the files:

    - ``lanes=1, spread_lines=True`` (distributed runners): files are spread over workers, and
      their lines again after reading, through a Reshuffle; the runner's shuffle holds them.
    - ``lanes=N, spread_lines=False`` (local runners, N = local workers): each file is read as N
      lanes, lines ``number % N``, spread over the workers; no PCollection of lines is ever
      materialised, so memory does not grow with the input. A local runner keeps a Reshuffle's
      whole PCollection in its own memory: about the input's size, which a large input cannot
      afford, where reading a file N times costs little next to parsing and tagging it.

    Either way the same lines come out, with the same numbers.
    """

    def __init__(
        self,
        paths: Sequence[str],
        max_line_bytes: int,
        *,
        lanes: int = 1,
        spread_lines: bool = True,
    ) -> None:
        super().__init__()
        if lanes < 1:
            raise ValueError(f"ReadLocNar: lanes = {lanes}, expected an integer >= 1")
        self.paths = list(paths)
        self.max_line_bytes = max_line_bytes
        self.lanes = lanes
        self.spread_lines = spread_lines

    def expand(self, pbegin: pvalue.PBegin) -> dict[str, pvalue.PCollection]:
        units = [
            ReadLane(path, lane, self.lanes) for path in self.paths for lane in range(self.lanes)
        ]
        read = (
            pbegin
            | "Paths" >> beam.Create(units)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadLines"
            >> beam.ParDo(ReadLinesFn(self.max_line_bytes)).with_outputs(
                DEAD_LETTERS, m.STATS, main="lines"
            )
        )
        lines = read.lines
        if self.spread_lines:
            lines = lines | "SpreadLines" >> beam.Reshuffle()
        return {"lines": lines, DEAD_LETTERS: read[DEAD_LETTERS], m.STATS: read[m.STATS]}


# ---------------------------------------------------------------------------------------------
# Parse


class ParseLineFn(beam.DoFn):
    """RawLine -> SourcedRecord, or a dead letter with parse_record's reason code."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes

    def process(self, line: RawLine) -> Iterator[Any]:
        try:
            if line.truncated:
                raise InvalidRecord(
                    "line_too_long", "", f"is {line.n_bytes} bytes, limit is {self.max_line_bytes}"
                )
            with m.timed("parse"):
                record = parse_record(line.data, max_line_bytes=self.max_line_bytes)
        except InvalidRecord as exc:
            yield pvalue.TaggedOutput(
                DEAD_LETTERS, DeadLetter.of(line, exc.reason, exc.field, str(exc), exc.record_key)
            )
            yield m.stat(m.DEAD_LETTER + exc.reason)
            return
        if not -INT64_MAX - 1 <= record.annotator_id <= INT64_MAX:
            message = f"annotator_id = {record.annotator_id} does not fit in a signed 64-bit int"
            letter = DeadLetter.of(line, "out_of_range", "annotator_id", message, record.key)
            yield pvalue.TaggedOutput(DEAD_LETTERS, letter)
            yield m.stat(m.DEAD_LETTER + "out_of_range")
            return
        yield SourcedRecord(line.source, line.number, record)


class ParseRecords(beam.PTransform):
    """RawLine -> {"records": SourcedRecord, "dead_letters", "stats"}."""

    def __init__(self, max_line_bytes: int) -> None:
        super().__init__()
        self.max_line_bytes = max_line_bytes

    def expand(self, lines: pvalue.PCollection) -> pvalue.DoOutputsTuple:
        return lines | "Parse" >> beam.ParDo(ParseLineFn(self.max_line_bytes)).with_outputs(
            DEAD_LETTERS, m.STATS, main="records"
        )


# ---------------------------------------------------------------------------------------------
# Tag and curate


class CurateBatchFn(beam.DoFn):
    """A batch of records -> AlpRows (main), (image key, Narrative), dead letters, stats.

    Captions are POS-tagged together (spaCy batches them); each record is then curated alone.
    An exception from tagging or curating one record makes that record a "curation_error" dead
    letter instead of failing the run (DESIGN.md: bad input never crashes a run). Tagged
    narratives are counted as they go (`pipelines.progress`; ``progress_folder``: a local run's
    display, None for counters only).
    """

    def __init__(
        self,
        spacy_model: str,
        tagger_batch_size: int,
        temporal_padding: float,
        progress_folder: str | None = None,
    ) -> None:
        self.spacy_model = spacy_model
        self.tagger_batch_size = tagger_batch_size
        self.temporal_padding = temporal_padding
        self.progress_folder = progress_folder
        self._tagger: SharedModel | None = None

    def setup(self) -> None:
        self._tagger = shared_tagger(self.spacy_model, self.tagger_batch_size)

    def _tag(self, captions: list[str]) -> list[Any]:
        assert self._tagger is not None
        with self._tagger.lock, m.timed("tag"):
            try:
                return self._tagger.model.tag(captions)
            except Exception:
                pass  # find the caption at fault: tag one by one
            out: list[Any] = []
            for caption in captions:
                try:
                    out.append(self._tagger.model.tag([caption])[0])
                except Exception as exc:
                    out.append(exc)
            return out

    def finish_bundle(self) -> None:
        progress.flush(self.progress_folder)

    def process(self, batch: Sequence[SourcedRecord]) -> Iterator[Any]:
        counts: Counter[str] = Counter()
        tagged = self._tag([s.record.caption for s in batch])
        progress.advance(self.progress_folder, progress.NARRATIVES_TAGGED, len(batch))
        for item, tokens in zip(batch, tagged, strict=True):
            record = item.record
            try:
                if isinstance(tokens, Exception):
                    raise tokens
                with m.timed("extract"):
                    result = curate_record(record, tokens, temporal_padding=self.temporal_padding)
            except Exception as exc:
                raw = json.dumps(record_to_json(record), sort_keys=True).encode("utf-8")
                line = RawLine(item.source, item.number, raw, len(raw))
                message = f"{record.key}: {type(exc).__name__}: {exc}"
                yield pvalue.TaggedOutput(
                    DEAD_LETTERS, DeadLetter.of(line, "curation_error", "", message, record.key)
                )
                counts[m.DEAD_LETTER + "curation_error"] += 1
                continue
            counts[m.RECORDS] += 1
            narrative = Narrative(record.annotator_id, record.caption, item.source, item.number)
            key = image_key(record.dataset_id, record.image_id)
            yield pvalue.TaggedOutput(NARRATIVES, (key, narrative))
            if result.alps:
                counts[m.RECORDS_WITH_ALPS] += 1
                counts[m.ALPS] += len(result.alps)
            else:
                counts[m.NO_ALP + str(result.no_alp_reason)] += 1
            counts.update(m.PHRASE_DROPPED + d.reason for d in result.dropped)
            for index, alp in enumerate(result.alps):
                yield AlpRow.of(alp, index, item.source, item.number)
        for name, n in sorted(counts.items()):
            yield m.stat(name, n)


class CurateRecords(beam.PTransform):
    """SourcedRecord -> {"alps": AlpRow, "narratives", "dead_letters", "stats"}."""

    def __init__(
        self,
        spacy_model: str,
        batch_size: int,
        temporal_padding: float,
        progress_folder: str | None = None,
    ) -> None:
        super().__init__()
        self.spacy_model = spacy_model
        self.batch_size = batch_size
        self.temporal_padding = temporal_padding
        self.progress_folder = progress_folder

    def expand(self, records: pvalue.PCollection) -> pvalue.DoOutputsTuple:
        return (
            records
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "TagAndCurate"
            >> beam.ParDo(
                CurateBatchFn(
                    self.spacy_model, self.batch_size, self.temporal_padding, self.progress_folder
                )
            ).with_outputs(NARRATIVES, DEAD_LETTERS, m.STATS, main="alps")
        )


# ---------------------------------------------------------------------------------------------
# Embed each unique phrase once


def _phrase_one(row: AlpRow) -> tuple[str, int]:
    return row.phrase, 1


def _key_by_bucket(item: tuple[str, int], n_buckets: int) -> tuple[int, tuple[str, int]]:
    return phrase_id(item[0]) % n_buckets, item


class EmbedBucketFn(beam.DoFn):
    """(bucket, [(phrase, n_alps)]) -> PhraseRow per phrase, taking cached embeddings first.

    A bucket is the embedding cache's unit (``phrase_id % n_buckets``): one worker reads its
    parts once and adds one part of new phrases. Phrases are embedded in sorted order, so the
    batches the encoder sees, hence the floats, do not depend on the runner.

    Progress (`pipelines.progress`): the side input ``n_unique`` (distinct phrases of the run)
    is the stage's total; cache hits, phrases to embed and phrases embedded (after each encoder
    batch) are counted as they go.
    """

    def __init__(
        self,
        encoder: EncoderConfig,
        cache_root: str | None,
        n_buckets: int,
        batch_size: int,
        progress_folder: str | None = None,
    ) -> None:
        self.encoder_config = encoder
        self.cache_root = cache_root
        self.n_buckets = n_buckets
        self.batch_size = batch_size
        self.progress_folder = progress_folder
        self._total_given = False
        self._encoder: SharedModel | None = None
        self._cache: EmbeddingCache | None = None

    def setup(self) -> None:
        self._encoder = shared_encoder(self.encoder_config)
        if self.cache_root is not None:
            encoder = self._encoder.model
            self._cache = EmbeddingCache(
                self.cache_root,
                encoder.id,
                encoder.dim,
                storage=BeamStorage(),
                n_buckets=self.n_buckets,
            )

    def finish_bundle(self) -> None:
        progress.flush(self.progress_folder)

    def _looked_up(self, hits: int, misses: int) -> None:
        progress.advance(self.progress_folder, progress.PHRASES_FROM_CACHE, hits)
        progress.advance(self.progress_folder, progress.PHRASES_TO_EMBED, misses)

    def _embedded(self, n: int) -> None:
        progress.advance(self.progress_folder, progress.PHRASES_EMBEDDED, n)

    def process(
        self, element: tuple[int, Iterable[tuple[str, int]]], n_unique: int | None = None
    ) -> Iterator[Any]:
        assert self._encoder is not None
        if n_unique is not None and not self._total_given:
            progress.set_total(self.progress_folder, progress.TOTAL_UNIQUE_PHRASES, n_unique)
            self._total_given = True
        _, items = element
        counts = dict(sorted(items))
        phrases = list(counts)
        # numpy's unicode arrays drop trailing NULs, so the cache refuses such phrases.
        cached = [p for p in phrases if "\x00" not in p]
        uncached = [p for p in phrases if "\x00" in p]
        with self._encoder.lock, m.timed("embed"):
            emb, reused = embed_with_cache(
                self._cache,
                self._encoder.model,
                cached,
                batch_size=self.batch_size,
                on_lookup=self._looked_up,
                on_embedded=self._embedded,
            )  # (U, D)
            rest, _ = embed_with_cache(
                None,
                self._encoder.model,
                uncached,
                batch_size=self.batch_size,
                on_lookup=self._looked_up,
                on_embedded=self._embedded,
            )
        for phrase, row in zip(cached + uncached, [*emb, *rest], strict=True):
            yield PhraseRow(phrase_id(phrase), phrase, counts[phrase], row)
        yield m.stat(m.UNIQUE_PHRASES, len(phrases))
        yield m.stat(m.EMBEDDINGS_REUSED, reused)
        yield m.stat(m.EMBEDDINGS_COMPUTED, len(phrases) - reused)


class EmbedPhrases(beam.PTransform):
    """AlpRow -> {"phrases": PhraseRow, one per unique phrase, "stats"}."""

    def __init__(
        self,
        encoder: EncoderConfig,
        cache_root: str | None,
        n_buckets: int,
        batch_size: int,
        progress_folder: str | None = None,
    ) -> None:
        super().__init__()
        self.embed = EmbedBucketFn(encoder, cache_root, n_buckets, batch_size, progress_folder)
        self.n_buckets = n_buckets

    def expand(self, alps: pvalue.PCollection) -> pvalue.DoOutputsTuple:
        counted = (
            alps
            | "PhraseOnes" >> beam.Map(_phrase_one)
            | "CountPerPhrase" >> beam.CombinePerKey(sum)
        )
        # One number, for the progress display's total; the phrases themselves go on below.
        n_unique = counted | "CountUniquePhrases" >> beam.combiners.Count.Globally()
        return (
            counted
            | "KeyByBucket" >> beam.Map(_key_by_bucket, self.n_buckets)
            | "GroupByBucket" >> beam.GroupByKey()
            | "Embed"
            >> beam.ParDo(self.embed, n_unique=pvalue.AsSingleton(n_unique)).with_outputs(
                m.STATS, main="phrases"
            )
        )
