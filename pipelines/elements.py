"""The elements that flow between the curation stages: frozen dataclasses, picklable by reference.

`DeadLetter` is a line that became no record; `AlpRow` a row of the ALP table; `PhraseRow` a row of
the phrase table; `Narrative` and `Sample` feed the WebDataset shards. Field names follow
`alp_dataset.schema`, where the files they become are defined. Dead letters and samples have what
the shared writers (`pipelines.writers`) ask of them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alp_curation.curate import Alp
from alp_curation.locnar import LocNarRecord
from alp_dataset.schema import (
    ALP_SORT_KEY,
    SAMPLE_EMBEDDINGS,
    SAMPLE_JSON,
    image_key,
    phrase_id,
)
from pipelines.io import RawLine


@dataclass(frozen=True)
class DeadLetter:
    """An input line that became no record, and why (JSON keys: schema.DEAD_LETTER_FIELDS)."""

    source: str
    number: int
    reason: str
    field: str
    message: str
    record_key: str
    raw: bytes  # the line, or its first bytes when truncated
    n_bytes: int
    sha256: str
    truncated: bool

    @classmethod
    def of(cls, line: RawLine, reason: str, field: str, message: str, key: str = "") -> DeadLetter:
        return cls(
            line.source,
            line.number,
            reason,
            field,
            message,
            key,
            line.data,
            line.n_bytes,
            line.sha256,
            line.truncated,
        )

    def sort_key(self) -> tuple[str, int, str]:
        """Order of dead letters in a file."""
        return self.source, self.number, self.reason

    def part_key(self) -> str:
        """What chooses the dead letter's file (hashed)."""
        return f"{self.source}\n{self.number}"

    def to_json(self) -> dict[str, Any]:
        try:
            raw: dict[str, str] = {"raw": self.raw.decode("utf-8")}
        except UnicodeDecodeError:
            raw = {"raw_base64": base64.b64encode(self.raw).decode("ascii")}
        return {
            "source_file": self.source,
            "source_line": self.number,
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
            "record_key": self.record_key,
            **raw,
            "raw_bytes": self.n_bytes,
            "raw_sha256": self.sha256,
            "raw_truncated": self.truncated,
        }


@dataclass(frozen=True, eq=False)
class SourcedRecord:
    source: str
    number: int
    record: LocNarRecord


@dataclass(frozen=True)
class AlpRow:
    """One row of the ALP table; fields in alp_dataset.schema.ALP_SCHEMA order."""

    dataset_id: str
    image_id: str
    annotator_id: int
    alp_index: int
    phrase: str
    phrase_id: int
    head_lemma: str
    start_char: int
    end_char: int
    t_start: float
    t_end: float
    box_xyxy_norm: tuple[float, float, float, float]
    n_points: int
    source_file: str
    source_line: int

    @classmethod
    def of(cls, alp: Alp, index: int, source: str, number: int) -> AlpRow:
        return cls(
            alp.dataset_id,
            alp.image_id,
            alp.annotator_id,
            index,
            alp.phrase,
            phrase_id(alp.phrase),
            alp.head_lemma,
            alp.start_char,
            alp.end_char,
            alp.t_start,
            alp.t_end,
            alp.box_xyxy_norm,
            alp.n_points,
            source,
            number,
        )

    @property
    def image_key(self) -> str:
        return image_key(self.dataset_id, self.image_id)

    def sort_key(self) -> tuple[Any, ...]:
        """Order of rows in an ALP file (alp_dataset.schema.ALP_SORT_KEY)."""
        return tuple(getattr(self, name) for name in ALP_SORT_KEY)


@dataclass(frozen=True)
class Narrative:
    """What a shard sample tells of one narrative of its image."""

    annotator_id: int
    caption: str
    source_file: str
    source_line: int


@dataclass(frozen=True, eq=False)
class PhraseRow:
    """One row of the phrase table."""

    phrase_id: int
    phrase: str
    n_alps: int
    embedding: np.ndarray  # (D,) float32, unit length


@dataclass(frozen=True)
class Sample:
    """One WebDataset sample before it is written: its members' bytes and its image file."""

    key: str
    alps_json: bytes
    embeddings_npy: bytes
    image: tuple[str, str] | None = None  # (path, extension) under --images, when found

    def members(self) -> dict[str, bytes]:
        return {SAMPLE_JSON: self.alps_json, SAMPLE_EMBEDDINGS: self.embeddings_npy}


def embeddings_npy(rows: Sequence[np.ndarray]) -> bytes:
    """A sample's embeddings.npy: the rows stacked, little-endian float32 (N, D)."""
    stacked = np.stack(list(rows)).astype("<f4", copy=False)  # (N, D)
    buffer = io.BytesIO()
    np.save(buffer, stacked, allow_pickle=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class SampleWithoutEmbeddings:
    """A `Sample` whose embeddings.npy is made where the sample is written, from the phrase
    embeddings: until then it holds each ALP's phrase (a few bytes) instead of its float row
    (4 * D bytes). Local runs build these in the shard writer (`pipelines.samples.SamplesOfImages`),
    so no embedding row per ALP is ever pickled."""

    key: str
    alps_json: bytes
    phrases: tuple[str, ...]  # the phrase of each ALP, in the order of alps.json
    image: tuple[str, str] | None = None

    def complete(self, embeddings: Mapping[str, np.ndarray]) -> Sample:
        missing = [p for p in self.phrases if p not in embeddings]
        if missing:
            raise RuntimeError(
                f"sample {self.key}: no embedding for the phrases {sorted(set(missing))}"
            )
        npy = embeddings_npy([embeddings[p] for p in self.phrases])
        return Sample(self.key, self.alps_json, npy, self.image)
