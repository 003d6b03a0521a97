"""Shard samples: each image's ALPs joined with their phrase embeddings, as WebDataset members.

On distributed runners (`BuildSamples`) the join goes through CoGroupByKey on the phrase, not a
side input, so it scales with the number of phrases: an embedding travels once per ALP that uses
it. A local runner would keep every PCollection that crosses a shuffle in its memory; there
(`spilled_samples`) the ALPs and narratives go to the shard writer's files through the local disk
(`pipelines.spill`), each file's samples are built from them when it is written
(`SamplesOfImages`), with each ALP's phrase in place of its embedding
(`SampleWithoutEmbeddings`), and the shard writer makes embeddings.npy from the phrase table, a
side input as large as the vocabulary. Members are serialised the same way either way (JSON with
sorted keys, `pipelines.elements.embeddings_npy`), so a sample's bytes depend on its content
alone.

Naming convention in shapes: N = ALPs of one image, D = embedding width.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from alp_dataset.schema import SCHEMA_VERSION, sample_key
from pipelines.elements import (
    AlpRow,
    Narrative,
    PhraseRow,
    Sample,
    SampleWithoutEmbeddings,
    embeddings_npy,
)
from pipelines.io import find_image
from pipelines.writers import Spilled, stable_hash

NARRATIVES = "narratives"


def _by_phrase(row: AlpRow) -> tuple[str, AlpRow]:
    return row.phrase, row


def _phrase_embedding(row: PhraseRow) -> tuple[str, np.ndarray]:
    return row.phrase, row.embedding


def _attach_embedding(
    element: tuple[str, dict[str, Iterable[Any]]],
) -> Iterator[tuple[str, tuple[AlpRow, np.ndarray]]]:
    phrase, joined = element
    embeddings = list(joined["embedding"])
    if len(embeddings) != 1:
        raise RuntimeError(f"phrase {phrase!r} has {len(embeddings)} embeddings; expected 1")
    for row in joined["alps"]:
        yield row.image_key, (row, embeddings[0])


def _float32(value: float) -> float:
    """The float32 nearest ``value``, as the shortest decimal that reads back to it ("0.3")."""
    return float(str(np.float32(value)))


def alp_json(row: AlpRow) -> dict[str, Any]:
    """An ALP as it appears in a sample's alps.json (alp_dataset.schema.ALP_JSON_FIELDS)."""
    return {
        "annotator_id": row.annotator_id,
        "alp_index": row.alp_index,
        "phrase": row.phrase,
        "phrase_id": row.phrase_id,
        "head_lemma": row.head_lemma,
        "start_char": row.start_char,
        "end_char": row.end_char,
        "t_start": row.t_start,
        "t_end": row.t_end,
        "box_xyxy_norm": [_float32(v) for v in row.box_xyxy_norm],
        "n_points": row.n_points,
    }


def _document(
    key: str,
    rows: Sequence[AlpRow],
    narratives: Iterable[Narrative],
    dim: int,
    images_root: str | None,
) -> tuple[bytes, tuple[str, str] | None]:
    """alps.json of an image's ALPs (``rows``, sorted), and its image file under the root."""
    first = rows[0]
    told = sorted(narratives, key=lambda n: (n.annotator_id, n.source_file, n.source_line))
    document = {
        "schema_version": SCHEMA_VERSION,
        "image_key": key,
        "dataset_id": first.dataset_id,
        "image_id": first.image_id,
        "embedding_dim": dim,
        "narratives": [vars(n) for n in told],
        "alps": [alp_json(row) for row in rows],
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    image = None
    if images_root is not None:
        image = find_image(images_root, first.dataset_id, first.image_id)
    return text.encode("utf-8"), image


def build_sample(
    key: str,
    alps: Iterable[tuple[AlpRow, np.ndarray]],
    narratives: Iterable[Narrative],
    dim: int,
    images_root: str | None = None,
) -> Sample | None:
    """The sample of one image, with its image file when ``images_root`` holds one; None when the
    image has no ALP."""
    pairs = sorted(alps, key=lambda pair: pair[0].sort_key())
    if not pairs:
        return None
    text, image = _document(key, [row for row, _ in pairs], narratives, dim, images_root)
    return Sample(sample_key(key), text, embeddings_npy([e for _, e in pairs]), image)


def build_sample_without_embeddings(
    key: str,
    alps: Iterable[AlpRow],
    narratives: Iterable[Narrative],
    dim: int,
    images_root: str | None = None,
) -> SampleWithoutEmbeddings | None:
    """`build_sample` with each ALP's phrase in place of its embedding row."""
    rows = sorted(alps, key=AlpRow.sort_key)
    if not rows:
        return None
    text, image = _document(key, rows, narratives, dim, images_root)
    return SampleWithoutEmbeddings(sample_key(key), text, tuple(row.phrase for row in rows), image)


class BuildSampleFn(beam.DoFn):
    def __init__(self, dim: int, images_root: str | None) -> None:
        self.dim = dim
        self.images_root = images_root

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Sample]:
        key, joined = element
        sample = build_sample(key, joined["alps"], joined[NARRATIVES], self.dim, self.images_root)
        if sample is not None:
            yield sample


def phrase_embeddings(phrases: pvalue.PCollection) -> pvalue.AsDict:
    """The phrase table as a side input phrase -> embedding, for `SampleWithoutEmbeddings`."""
    return pvalue.AsDict(phrases | "EmbeddingOfPhrase" >> beam.Map(_phrase_embedding))


def _by_image(row: AlpRow) -> tuple[str, AlpRow]:
    return row.image_key, row


def _image_key(row: AlpRow) -> str:
    return row.image_key


class BuildSamples(beam.PTransform):
    """(AlpRow, PhraseRow, (image key, Narrative)) -> Sample, one per image with an ALP; its
    image file is looked up under ``images_root`` (the shard writer reads it)."""

    def __init__(self, dim: int, images_root: str | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.images_root = images_root

    def expand(self, inputs: tuple[pvalue.PCollection, ...]) -> pvalue.PCollection:
        alps, phrases, narratives = inputs
        by_image = (
            {
                "alps": alps | "ByPhrase" >> beam.Map(_by_phrase),
                "embedding": phrases | "EmbeddingByPhrase" >> beam.Map(_phrase_embedding),
            }
            | "JoinEmbeddings" >> beam.CoGroupByKey()
            | "AttachEmbedding" >> beam.FlatMap(_attach_embedding)
        )
        return (
            {"alps": by_image, NARRATIVES: narratives}
            | "GroupByImage" >> beam.CoGroupByKey()
            | "BuildSample" >> beam.ParDo(BuildSampleFn(self.dim, self.images_root))
        )


ImageItem = tuple[str, "AlpRow | Narrative"]  # (image key, one of its ALPs or narratives)


def image_item_part(item: ImageItem) -> int:
    """The hash that puts an image's ALPs and narratives in its sample's shard
    (`pipelines.writers.sample_part`)."""
    return stable_hash(sample_key(item[0]))


class SamplesOfImages:
    """Picklable: one shard's (image key, AlpRow | Narrative) items -> the
    `SampleWithoutEmbeddings` of each of its images with an ALP (in no order: the writer sorts).
    """

    def __init__(self, dim: int, images_root: str | None = None) -> None:
        self.dim = dim
        self.images_root = images_root

    def __call__(self, items: Iterable[ImageItem]) -> Iterator[SampleWithoutEmbeddings]:
        alps: dict[str, list[AlpRow]] = {}
        told: dict[str, list[Narrative]] = {}
        for key, item in items:
            (alps if isinstance(item, AlpRow) else told).setdefault(key, []).append(item)  # type: ignore[arg-type]
        for key, rows in alps.items():
            sample = build_sample_without_embeddings(
                key, rows, told.get(key, ()), self.dim, self.images_root
            )
            if sample is not None:
                yield sample


def spilled_samples(
    alps: pvalue.PCollection,
    narratives: pvalue.PCollection,
    folder: str,
    dim: int,
    images_root: str | None = None,
) -> tuple[pvalue.PCollection, Spilled]:
    """For a local run: the ALPs and narratives as one PCollection of image items, and how the
    shard writer (`pipelines.writers.write_shards`) groups them into shards through ``folder``
    and builds each image's sample; a shard per ``shard_size`` images with an ALP."""
    items = (alps | "AlpsByImage" >> beam.Map(_by_image), narratives) | (
        "ImageItems" >> beam.Flatten()
    )
    n_images = (
        alps
        | "ImageKeys" >> beam.Map(_image_key)
        | "DistinctImages" >> beam.Distinct()
        | "CountImages" >> beam.combiners.Count.Globally()
    )
    prepare = SamplesOfImages(dim, images_root)
    return items, Spilled(folder, part_of=image_item_part, prepare=prepare, n_rows=n_images)
