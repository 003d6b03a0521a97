"""Shard samples made with embeddings joined per ALP (distributed runners) or built where the
shards are written, from ALPs and narratives grouped through the disk (local runners): the same
bytes either way."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from alp_curation.curate import Alp
from alp_dataset.schema import phrase_id
from pipelines.elements import AlpRow, Narrative, PhraseRow
from pipelines.samples import (
    BuildSamples,
    build_sample,
    build_sample_without_embeddings,
    phrase_embeddings,
    spilled_samples,
)
from pipelines.writers import write_shards


def beam_pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner="FnApiRunner", options=PipelineOptions([]))


def alp_row(image_id: str, index: int, phrase: str) -> AlpRow:
    alp = Alp("ds", image_id, 7, phrase, phrase.split()[-1], 0, len(phrase), 1.0, 2.5,
              (0.1, 0.2, 0.30000001, 0.9), 12)  # fmt: skip
    return AlpRow.of(alp, index, "in.jsonl", 3)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_sample_without_embeddings_completes_to_the_same_bytes() -> None:
    rows = [alp_row("i.1", 1, "dog"), alp_row("i.1", 0, "red car")]
    embeddings = {"dog": np.arange(4, dtype=np.float32), "red car": np.ones(4, np.float32)}
    told = [Narrative(7, "A red car and a dog.", "in.jsonl", 3)]
    joined = build_sample("ds/i.1", [(r, embeddings[r.phrase]) for r in rows], told, 4)
    deferred = build_sample_without_embeddings("ds/i.1", rows, told, 4)
    assert deferred is not None and deferred.phrases == ("red car", "dog")  # alps.json order
    assert deferred.complete(embeddings) == joined
    with pytest.raises(RuntimeError, match=r"sample ds%2Fi%2E1: no embedding for .*'dog'"):
        deferred.complete({"red car": np.ones(4, np.float32)})
    assert build_sample_without_embeddings("ds/x", [], told, 4) is None


def test_shards_are_the_same_bytes_with_embeddings_joined_or_made_at_write(
    tmp_path: Path,
) -> None:
    # Image i5 has a narrative and no ALP (no sample); i0 has two narratives.
    alps = [alp_row(f"i{k % 5}", k // 5, p) for k, p in enumerate(["dog", "red car"] * 6)]
    embeddings = {
        p: np.full(4, i + 0.5, dtype=np.float32) for i, p in enumerate(["dog", "red car"])
    }
    phrases = [PhraseRow(phrase_id(p), p, 1, e) for p, e in embeddings.items()]
    narratives = [(f"ds/i{k}", Narrative(7, f"caption {k}", "in.jsonl", k + 1)) for k in range(6)]
    narratives.append(("ds/i0", Narrative(3, "another caption", "in.jsonl", 40)))
    spill = tmp_path / "spill"
    spill.mkdir()
    for mode in ("joined", "at-write"):
        with beam_pipeline() as p:
            alp_rows = p | "Alps" >> beam.Create(alps)
            phrase_rows = p | "Phrases" >> beam.Create(phrases)
            told = p | "Narratives" >> beam.Create(narratives)
            if mode == "joined":
                samples = (alp_rows, phrase_rows, told) | BuildSamples(dim=4)
                _ = samples | write_shards(str(tmp_path / mode), 2)
            else:
                items, spilled = spilled_samples(alp_rows, told, str(spill), 4)
                side = phrase_embeddings(phrase_rows)
                _ = items | write_shards(str(tmp_path / mode), 2, embeddings=side, spilled=spilled)
    joined = tree_bytes(tmp_path / "joined")
    assert joined == tree_bytes(tmp_path / "at-write")
    assert len(joined) == 3  # 5 images with an ALP, 2 per shard
    assert list(spill.iterdir()) == []  # spill and part files are removed once used
