"""The curated ALP dataset on disk: ids, Parquet schemas, shard layout and manifest, in one place.

`pipelines/extract_alps.py` writes these files and `alp_dataset` reads them; both take every name,
type and layout rule from here, and `docs/data_format.md` documents them field by field. A change to
any of them bumps `SCHEMA_VERSION`.

Output directory of one curation run::

    alps/part-NNNNN-of-MMMMM.parquet          ALP_SCHEMA, one row per ALP
    phrases/part-NNNNN-of-MMMMM.parquet       phrase_schema(dim), one row per unique phrase
    shards/shard-NNNNNN.tar                   WebDataset, one sample per image with at least one ALP
    dead_letters/part-NNNNN-of-MMMMM.jsonl    DEAD_LETTER_FIELDS, one line per rejected input line
    manifest.json                             MANIFEST_KEYS; written last: its presence marks a
                                              complete run

Embeddings and boxes are Arrow fixed-size lists of float32, which polars reads as
``pl.Array(pl.Float32, n)`` and numpy gets without a copy per row
(``column.combine_chunks().flatten().to_numpy().reshape(-1, n)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from alp_curation.locnar import join_key  # the key encoding records and images share
from alp_curation.phrases import phrase_id  # the id the tables and the cache share

__all__ = [
    "ALPS_DIR",
    "ALP_JSON_FIELDS",
    "ALP_SCHEMA",
    "ALP_SORT_KEY",
    "DEAD_LETTERS_DIR",
    "DEAD_LETTER_FIELDS",
    "IMAGE_EXTENSIONS",
    "MANIFEST_KEYS",
    "MANIFEST_NAME",
    "PHRASES_DIR",
    "PIPELINE_REASONS",
    "SAMPLE_EMBEDDINGS",
    "SAMPLE_JSON",
    "SAMPLE_JSON_FIELDS",
    "SCHEMA_VERSION",
    "SHARDS_DIR",
    "image_key",
    "image_key_of_sample",
    "manifest_problems",
    "n_parts",
    "part_name",
    "phrase_id",
    "phrase_schema",
    "sample_key",
    "shard_name",
]

# 1.1: image and record keys escape "%" and "/" inside each id, so distinct ids never share a key.
SCHEMA_VERSION = "1.1"

# Folders and files under the output directory.
ALPS_DIR = "alps"
PHRASES_DIR = "phrases"
SHARDS_DIR = "shards"
DEAD_LETTERS_DIR = "dead_letters"
MANIFEST_NAME = "manifest.json"

# Metadata keys on every Parquet schema (bytes, as Arrow stores them).
META_SCHEMA_VERSION = b"alp.schema_version"
META_TABLE = b"alp.table"
META_ENCODER_ID = b"alp.encoder_id"
META_EMBEDDING_DIM = b"alp.embedding_dim"


def image_key(dataset_id: str, image_id: str) -> str:
    """``"dataset_id/image_id"``, each id's "%" and "/" escaped (`alp_curation.locnar.join_key`):
    one shard sample per image key, and two images never share one."""
    return join_key(dataset_id, image_id)


# WebDataset splits a member name into sample key and extension at the first "." of its base
# name, and treats "/" as a folder; so a sample key keeps letters, digits, "_" and "-" and writes
# every other byte of the UTF-8 image key as %XX, which `image_key_of_sample` reverses.
_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def sample_key(image_key: str) -> str:
    """The WebDataset sample key of an image key: "synthetic/img.1" -> "synthetic%2Fimg%2E1"."""
    return "".join(
        c if c in _KEY_SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in image_key
    )


def image_key_of_sample(key: str) -> str:
    """Inverse of `sample_key`."""
    from urllib.parse import unquote

    return unquote(key, encoding="utf-8", errors="strict")


def part_name(index: int, n_parts: int, extension: str) -> str:
    """``part-00003-of-00016.parquet``: Hadoop-style names, sorted by index."""
    return f"part-{index:05d}-of-{n_parts:05d}.{extension}"


def shard_name(index: int) -> str:
    """``shard-000003.tar``: brace-expandable as ``shard-{000000..000015}.tar``."""
    return f"shard-{index:06d}.tar"


def _field(name: str, type_: pa.DataType, description: str) -> pa.Field:
    return pa.field(name, type_, nullable=False, metadata={b"description": description.encode()})


def _box_type() -> pa.DataType:
    return pa.list_(pa.float32(), 4)


ALP_SCHEMA = pa.schema(
    [
        _field("dataset_id", pa.string(), "LocNar dataset_id of the narrative"),
        _field("image_id", pa.string(), "LocNar image_id of the narrative"),
        _field("annotator_id", pa.int64(), "LocNar annotator_id of the narrative"),
        _field(
            "alp_index",
            pa.int32(),
            "position of this ALP among the ALPs of its narrative, in caption order (0, 1, ...)",
        ),
        _field(
            "phrase", pa.string(), 'normalised phrase text: lower case, single spaces ("red car")'
        ),
        _field("phrase_id", pa.int64(), "phrase_id(phrase); joins with the phrase table"),
        _field("head_lemma", pa.string(), 'lower-cased lemma of the phrase\'s last noun ("car")'),
        _field("start_char", pa.int32(), "start of the phrase in the narrative's caption"),
        _field("end_char", pa.int32(), "end (exclusive) of the phrase in the caption"),
        _field(
            "t_start",
            pa.float64(),
            "seconds: start of the union of the utterance intervals of the phrase's words, "
            "before the temporal padding",
        ),
        _field("t_end", pa.float64(), "seconds: end of that union, before the temporal padding"),
        _field(
            "box_xyxy_norm",
            _box_type(),
            "(x0, y0, x1, y1) of the trace points inside the padded time window, normalised to "
            "the image, origin top-left, clipped to [0, 1]",
        ),
        _field("n_points", pa.int32(), "trace points inside the padded time window"),
        _field("source_file", pa.string(), "input file the narrative was read from"),
        _field("source_line", pa.int64(), "1-based line number of the narrative in source_file"),
    ],
    metadata={META_SCHEMA_VERSION: SCHEMA_VERSION.encode(), META_TABLE: b"alps"},
)

# Rows of an ALP file are sorted by these columns.
ALP_SORT_KEY = ("dataset_id", "image_id", "annotator_id", "source_file", "source_line", "alp_index")


def phrase_schema(dim: int, encoder_id: str) -> pa.Schema:
    """Schema of the phrase table for embeddings of width ``dim`` from encoder ``encoder_id``."""
    if dim < 1:
        raise ValueError(f"phrase_schema: dim = {dim}, expected >= 1")
    return pa.schema(
        [
            _field("phrase_id", pa.int64(), "phrase_id(phrase)"),
            _field("phrase", pa.string(), "normalised phrase text, unique in the table"),
            _field("n_alps", pa.int64(), "number of ALPs with this phrase in the run"),
            _field(
                "embedding",
                pa.list_(pa.float32(), dim),
                "prompt-ensemble text embedding: mean of the L2-normalised embeddings of the "
                "phrase in each prompt template, re-normalised (unit length)",
            ),
        ],
        metadata={
            META_SCHEMA_VERSION: SCHEMA_VERSION.encode(),
            META_TABLE: b"phrases",
            META_ENCODER_ID: encoder_id.encode(),
            META_EMBEDDING_DIM: str(dim).encode(),
        },
    )


# Dead-letter reasons the pipeline adds to alp_curation.locnar.REASONS (which parse_record raises).
PIPELINE_REASONS: Mapping[str, str] = {
    "read_error": "the input file could not be read from this line on: a compressed stream cut "
    "short or corrupt, or a file that cannot be opened (a folder, a FIFO, no permission)",
    "out_of_range": "a valid JSON value the output cannot hold (annotator_id beyond int64)",
    "curation_error": "the record parsed but tagging or curating it raised; message says what",
}

# One JSON object per line of dead_letters/*.jsonl, with exactly these keys (raw and raw_base64:
# exactly one of the two).
DEAD_LETTER_FIELDS: Mapping[str, str] = {
    "source_file": "input file of the line",
    "source_line": "1-based line number in source_file",
    "reason": "reason code: alp_curation.locnar.REASONS or PIPELINE_REASONS",
    "field": 'path of the offending field ("traces[0][12].x"); "" for the whole line',
    "message": "what was found and what was expected",
    "record_key": '"dataset_id/image_id/annotator_id" (ids escaped as in image keys) when those '
    'were read; "dataset_id/image_id" when annotator_id is missing or not an integer; else ""',
    "raw": "the line (UTF-8 text, newline stripped); absent when raw_base64 is given",
    "raw_base64": "the line's bytes, base64, when they are not valid UTF-8",
    "raw_bytes": "length of the whole line in bytes",
    "raw_sha256": "SHA-256 of the whole line, hex",
    "raw_truncated": "true when raw / raw_base64 hold only the first bytes of a line_too_long line",
}

# Shard samples: members <sample key>.<extension>.
SAMPLE_JSON = "alps.json"
SAMPLE_EMBEDDINGS = "embeddings.npy"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")

SAMPLE_JSON_FIELDS: Mapping[str, str] = {
    "schema_version": "SCHEMA_VERSION",
    "image_key": '"dataset_id/image_id", each id escaped: "%" as %25, "/" as %2F',
    "dataset_id": "LocNar dataset_id",
    "image_id": "LocNar image_id",
    "embedding_dim": "width D of embeddings.npy",
    "narratives": "narratives of the image: list of {annotator_id, caption, source_file, "
    "source_line}, sorted by (annotator_id, source_file, source_line)",
    "alps": "the image's ALPs (ALP_JSON_FIELDS), sorted by narrative then caption order; "
    "row i of embeddings.npy is the embedding of alps[i]",
}

ALP_JSON_FIELDS: Mapping[str, str] = {
    name: ALP_SCHEMA.field(name).metadata[b"description"].decode()
    for name in (
        "annotator_id",
        "alp_index",
        "phrase",
        "phrase_id",
        "head_lemma",
        "start_char",
        "end_char",
        "t_start",
        "t_end",
        "box_xyxy_norm",
        "n_points",
    )
}

MANIFEST_KEYS: Mapping[str, str] = {
    "schema_version": "SCHEMA_VERSION of every file of the run",
    "alp_version": "version of the alp package that wrote the run",
    "options": "the curation options (not the runner's): they and the inputs determine the output",
    "inputs": "matched input files: list of {path, size_bytes}, sorted by path",
    "tagger": "{model: as asked, resolved: spaCy package and version}",
    "encoder": "{id, dim} of the text encoder of the embeddings",
    "counts": "counts per stage; see manifest_problems for the identities they satisfy",
    "files": "{alps, phrases, shards, dead_letters}: lists of {path (relative), rows}",
}


def _total(counts: Mapping[str, Any], name: str) -> int:
    return int(counts[name]["total"])


def manifest_problems(manifest: Mapping[str, Any]) -> list[str]:
    """The identities a manifest's counts must satisfy that it breaks; [] for a sound manifest.

    Every input line is a record or a dead letter; every record has ALPs or a no-ALP reason;
    totals equal the sums of their reasons; every unique phrase was embedded or reused; and the
    files hold as many rows as the counts say.
    """
    problems: list[str] = []

    def check(name: str, left: int, right: int) -> None:
        if left != right:
            problems.append(f"{name}: {left} != {right}")

    c = manifest["counts"]
    records = c["records"]
    check(
        "input_lines = records + dead_letters",
        c["input_lines"],
        records["total"] + _total(c, "dead_letters"),
    )
    check(
        "records = with_alps + without_alps",
        records["total"],
        records["with_alps"] + _total(records, "without_alps"),
    )
    for name, block in (
        ("dead_letters", c["dead_letters"]),
        ("records.without_alps", records["without_alps"]),
        ("phrases_dropped", c["phrases_dropped"]),
    ):
        check(f"{name}.total = sum(by_reason)", block["total"], sum(block["by_reason"].values()))
    emb = c["embeddings"]
    check(
        "unique_phrases = computed + reused", c["unique_phrases"], emb["computed"] + emb["reused"]
    )
    files = manifest["files"]
    for kind, count in (
        ("alps", c["alps"]),
        ("phrases", c["unique_phrases"]),
        ("shards", c["shards"]["samples"]),
        ("dead_letters", _total(c, "dead_letters")),
    ):
        check(f"rows in {kind} files", sum(f["rows"] for f in files[kind]), count)
    shards = c["shards"]
    if manifest["options"].get("images"):
        check(
            "samples = image_files_found + image_files_missing",
            shards["samples"],
            shards["image_files_found"] + shards["image_files_missing"],
        )
    return problems


def n_parts(n_rows: int, rows_per_part: int) -> int:
    """How many files a table of ``n_rows`` is split into: ceil(n / rows_per_part), at least 1."""
    return max(1, math.ceil(n_rows / rows_per_part))
