"""Output directories to query: a tiny one written by hand (known answers, no encoder model), and
one real pipeline run over a small synthetic world (offline MiniLM encoder, built once per test
session, used by the slow tests)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alp_curation.prompts import ensemble_embeddings
from alp_dataset.schema import (
    ALP_SCHEMA,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    part_name,
    phrase_id,
    phrase_schema,
)
from alp_dataset.synthetic import WorldPaths, write_world

N_WORLD_IMAGES = 20


class KeywordEncoder:
    """A toy text encoder: counts of four keywords in the text (tests only, no model)."""

    KEYWORDS = ("circle", "square", "dog", "cat")

    def __init__(self, id: str = "toy:keywords") -> None:
        self.id = id
        self.dim = len(self.KEYWORDS)

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = text.lower().replace(".", " ").split()
            for j, key in enumerate(self.KEYWORDS):
                out[i, j] = sum(w.startswith(key) for w in words)
        return out


@dataclass(frozen=True)
class TinyAlp:
    image_id: str
    phrase: str
    box: tuple[float, float, float, float]
    dataset_id: str = "d"
    annotator_id: int = 1


# Known answers: "red circle" 3 ALPs in 2 images, "dog" 2 in 2, "square" 1; image "2" has two
# ALPs; image "1" exists in dataset "d" and "e".
TINY_ALPS = (
    TinyAlp("1", "red circle", (0.0, 0.0, 0.5, 0.25)),
    TinyAlp("1", "dog", (0.1, 0.1, 0.3, 0.5)),
    TinyAlp("2", "red circle", (0.0, 0.0, 1.0, 1.0)),
    TinyAlp("2", "red circle", (0.2, 0.2, 0.4, 0.2)),  # zero height: no aspect
    TinyAlp("3", "square", (0.5, 0.5, 0.75, 1.0)),
    TinyAlp("1", "dog", (0.0, 0.0, 0.2, 0.2), dataset_id="e"),
)


def write_run(
    root: Path,
    alps: Sequence[TinyAlp],
    *,
    encoder: KeywordEncoder | None = None,
    alp_files: int = 2,
    schema_version: str = SCHEMA_VERSION,
) -> Path:
    """An output directory as the pipeline lays it out, from hand-made ALPs (no manifest counts
    beyond what the readers use)."""
    encoder = encoder or KeywordEncoder()
    (root / "alps").mkdir(parents=True)
    (root / "phrases").mkdir()
    rows: list[dict[str, Any]] = []
    index: dict[tuple[str, str, int], int] = {}
    for line, alp in enumerate(alps, start=1):
        key = (alp.dataset_id, alp.image_id, alp.annotator_id)
        index[key] = index.get(key, -1) + 1
        rows.append(
            {
                "dataset_id": alp.dataset_id,
                "image_id": alp.image_id,
                "annotator_id": alp.annotator_id,
                "alp_index": index[key],
                "phrase": alp.phrase,
                "phrase_id": phrase_id(alp.phrase),
                "head_lemma": alp.phrase.split()[-1],
                "start_char": 0,
                "end_char": len(alp.phrase),
                "t_start": 1.0 + index[key],
                "t_end": 1.5 + index[key],
                "box_xyxy_norm": list(alp.box),
                "n_points": 5,
                "source_file": "narratives.jsonl",
                "source_line": line,
            }
        )
    rows.sort(key=lambda r: (r["dataset_id"], r["image_id"], r["annotator_id"], r["alp_index"]))
    files = {"alps": [], "phrases": [], "shards": [], "dead_letters": []}
    for f in range(alp_files):
        # An image's ALPs share a file, as in the pipeline.
        part = [r for r in rows if int(r["image_id"]) % alp_files == f]
        path = f"alps/{part_name(f, alp_files, 'parquet')}"
        pq.write_table(pa.Table.from_pylist(part, schema=ALP_SCHEMA), root / path)
        files["alps"].append({"path": path, "rows": len(part)})
    texts = sorted({r["phrase"] for r in rows})
    embeddings = ensemble_embeddings(encoder, texts)  # (P, D)
    table = pa.Table.from_pylist(
        [
            {
                "phrase_id": phrase_id(t),
                "phrase": t,
                "n_alps": sum(r["phrase"] == t for r in rows),
                "embedding": e.tolist(),
            }
            for t, e in zip(texts, embeddings, strict=True)
        ],
        schema=phrase_schema(encoder.dim, encoder.id),
    )
    # Two phrase files, so nearest_phrases merges per-file results.
    for f, part in enumerate((table.slice(0, len(texts) // 2), table.slice(len(texts) // 2))):
        path = f"phrases/{part_name(f, 2, 'parquet')}"
        pq.write_table(part, root / path)
        files["phrases"].append({"path": path, "rows": part.num_rows})
    n_images = len({(r["dataset_id"], r["image_id"]) for r in rows})
    manifest = {
        "schema_version": schema_version,
        "alp_version": "test",
        "options": {"temporal_padding": 0.5, "images": None},
        "inputs": [{"path": "narratives.jsonl", "size_bytes": 1}],
        "tagger": {"model": "en_core_web_sm", "resolved": "test-tagger"},
        "encoder": {"id": encoder.id, "dim": encoder.dim},
        "counts": {
            "input_lines": 9,
            "blank_lines_skipped": 0,
            "dead_letters": {"total": 2, "by_reason": {"json_decode": 2, "wrong_type": 0}},
            "records": {
                "total": 7,
                "with_alps": 6,
                "without_alps": {"total": 1, "by_reason": {"no_traces": 1}},
            },
            "alps": len(rows),
            "phrases_dropped": {"total": 4, "by_reason": {"stuff": 3, "generic": 1}},
            "unique_phrases": len(texts),
            "embeddings": {"computed": len(texts), "reused": 0},
            "shards": {"samples": n_images, "image_files_found": 0, "image_files_missing": 0},
        },
        "files": files,
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return root


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """TINY_ALPS written as a run, encoder KeywordEncoder() ("toy:keywords", 4-d)."""
    return write_run(tmp_path / "tiny", TINY_ALPS)


@pytest.fixture
def tiny_alps() -> tuple[TinyAlp, ...]:
    return TINY_ALPS


@pytest.fixture
def keyword_encoder() -> type[KeywordEncoder]:
    """The toy encoder class (test modules take it from here rather than import conftest)."""
    return KeywordEncoder


@pytest.fixture
def run_writer() -> Any:
    """``write_run(root, alps, **options)``, and ``run_writer.TinyAlp`` to make ALPs."""
    return write_run


@dataclass(frozen=True)
class WorldRun:
    out: Path  # the pipeline's output directory
    world: WorldPaths  # narratives.jsonl, instances.json, images/


@pytest.fixture(scope="session")
def world_run(tmp_path_factory: pytest.TempPathFactory) -> WorldRun:
    """extract_alps over a synthetic world of N_WORLD_IMAGES images, several files per table."""
    from pipelines.extract_alps import run

    root = tmp_path_factory.mktemp("world_run")
    world = write_world(root / "world", N_WORLD_IMAGES, seed=3)
    out = root / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = run(
            [
                "--input", str(world.narratives), "--output", str(out),
                "--text-encoder", "minilm", "--runner", "FnApiRunner",
                "--alp-rows-per-file", "16", "--phrase-rows-per-file", "16",
            ]
        )  # fmt: skip
    assert status == 0, stderr.getvalue()
    return WorldRun(out=out, world=world)
