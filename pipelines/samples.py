"""Shard samples: each image's ALPs joined with their phrase embeddings, as WebDataset members.

The join goes through CoGroupByKey on the phrase, not a side input, so it scales with the number of
phrases: an embedding travels once per ALP that uses it. Members are serialised here (JSON with
sorted keys, ``np.save``), so a sample's bytes depend on its content alone.

Naming convention in shapes: N = ALPs of one image, D = embedding width.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from alp_dataset.schema import SCHEMA_VERSION, sample_key
from pipelines.elements import AlpRow, Narrative, PhraseRow, Sample
from pipelines.io import find_image

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
    first = pairs[0][0]
    told = sorted(narratives, key=lambda n: (n.annotator_id, n.source_file, n.source_line))
    document = {
        "schema_version": SCHEMA_VERSION,
        "image_key": key,
        "dataset_id": first.dataset_id,
        "image_id": first.image_id,
        "embedding_dim": dim,
        "narratives": [vars(n) for n in told],
        "alps": [alp_json(row) for row, _ in pairs],
    }
    embeddings = np.stack([e for _, e in pairs]).astype("<f4", copy=False)  # (N, D)
    buffer = io.BytesIO()
    np.save(buffer, embeddings, allow_pickle=False)
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    image = None
    if images_root is not None:
        image = find_image(images_root, first.dataset_id, first.image_id)
    return Sample(sample_key(key), text.encode("utf-8"), buffer.getvalue(), image)


class BuildSampleFn(beam.DoFn):
    def __init__(self, dim: int, images_root: str | None) -> None:
        self.dim = dim
        self.images_root = images_root

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Sample]:
        key, joined = element
        sample = build_sample(key, joined["alps"], joined[NARRATIVES], self.dim, self.images_root)
        if sample is not None:
            yield sample


class BuildSamples(beam.PTransform):
    """(AlpRow, PhraseRow, (image key, Narrative)) -> Sample, one per image with an ALP; its
    image file is looked up under ``images_root`` (the shard writer reads it)."""

    def __init__(self, dim: int, images_root: str | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.images_root = images_root

    def expand(self, inputs: tuple[pvalue.PCollection, ...]) -> pvalue.PCollection:
        alps, phrases, narratives = inputs
        with_embeddings = (
            {
                "alps": alps | "ByPhrase" >> beam.Map(_by_phrase),
                "embedding": phrases | "EmbeddingByPhrase" >> beam.Map(_phrase_embedding),
            }
            | "JoinEmbeddings" >> beam.CoGroupByKey()
            | "AttachEmbedding" >> beam.FlatMap(_attach_embedding)
        )
        return (
            {"alps": with_embeddings, NARRATIVES: narratives}
            | "GroupByImage" >> beam.CoGroupByKey()
            | "BuildSample" >> beam.ParDo(BuildSampleFn(self.dim, self.images_root))
        )
