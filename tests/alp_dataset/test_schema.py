from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alp_curation.embedding_cache import phrase_id as cache_phrase_id
from alp_curation.locnar import REASONS, record_key, split_key
from alp_dataset import schema
from alp_dataset.schema import (
    ALP_SCHEMA,
    SCHEMA_VERSION,
    image_key,
    image_key_of_sample,
    manifest_problems,
    n_parts,
    part_name,
    phrase_id,
    phrase_schema,
    sample_key,
    shard_name,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "data_format.md"


def test_phrase_id_is_the_signed_little_endian_blake2b_prefix() -> None:
    digest = hashlib.blake2b(b"red car", digest_size=8).digest()
    assert phrase_id("red car") == int.from_bytes(digest, "little", signed=True)
    assert phrase_id("red car") == 2672228660538616010  # golden: ids must never change


# Lone surrogates never reach a phrase or a key: parse_record rejects them.
UNICODE = st.characters(exclude_categories=("Cs",))


@settings(max_examples=100, deadline=None)
@given(st.text(UNICODE, max_size=40))
def test_phrase_id_is_an_int64_shared_with_the_embedding_cache(text: str) -> None:
    value = phrase_id(text)
    assert -(2**63) <= value < 2**63
    assert value == cache_phrase_id(text)


@settings(max_examples=200, deadline=None)
@given(st.text(UNICODE, min_size=1, max_size=40))
def test_sample_keys_round_trip_and_hold_no_dot_or_slash(image_key: str) -> None:
    key = sample_key(image_key)
    assert re.fullmatch(r"[A-Za-z0-9_%-]+", key)
    assert image_key_of_sample(key) == image_key


IDS = st.text(UNICODE, min_size=1, max_size=12) | st.sampled_from(["x", "a/b", "x/a", "%2F", "/"])


@settings(max_examples=300, deadline=None)
@given(first=st.tuples(IDS, IDS), second=st.tuples(IDS, IDS))
def test_image_keys_of_different_images_differ(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    key = image_key(*first)
    assert split_key(key) == first  # the ids come back from the key
    assert image_key_of_sample(sample_key(key)) == key  # and from the sample key
    if first != second:
        assert key != image_key(*second)
        assert sample_key(key) != sample_key(image_key(*second))


def test_image_keys_escape_only_ids_holding_the_separator_or_the_escape() -> None:
    assert image_key("x/a", "b") == "x%2Fa/b"
    assert image_key("x", "a/b") == "x/a%2Fb"
    assert image_key("mscoco_val2017", "137576") == "mscoco_val2017/137576"  # as in 1.0
    assert image_key("d", "50%") == "d/50%25"
    assert record_key("x/a", "b", 7) == "x%2Fa/b/7"


def test_sample_key_examples() -> None:
    assert sample_key("synthetic/img.1") == "synthetic%2Fimg%2E1"
    assert sample_key("open_images/0a1b-c") == "open_images%2F0a1b-c"
    assert sample_key("a%b") == "a%25b"  # "%" itself is escaped, so decoding is unambiguous


def test_file_names() -> None:
    assert part_name(3, 16, "parquet") == "part-00003-of-00016.parquet"
    assert shard_name(12) == "shard-000012.tar"
    assert [n_parts(n, 10) for n in (0, 1, 10, 11, 100)] == [1, 1, 1, 2, 10]


def test_every_field_is_described_and_required() -> None:
    for table_schema in (ALP_SCHEMA, phrase_schema(512, "open_clip:ViT-B-32:openai")):
        assert table_schema.metadata[b"alp.schema_version"] == SCHEMA_VERSION.encode()
        for field in table_schema:
            assert not field.nullable, field.name
            assert field.metadata[b"description"], field.name
    assert ALP_SCHEMA.field("box_xyxy_norm").type == pa.list_(pa.float32(), 4)
    phrases = phrase_schema(384, "enc")
    assert phrases.field("embedding").type == pa.list_(pa.float32(), 384)
    assert phrases.metadata[b"alp.encoder_id"] == b"enc"
    with pytest.raises(ValueError, match="dim = 0"):
        phrase_schema(0, "enc")


def test_polars_reads_boxes_and_embeddings_as_arrays(tmp_path: Path) -> None:
    pq.write_table(ALP_SCHEMA.empty_table(), tmp_path / "alps.parquet")
    pq.write_table(phrase_schema(8, "enc").empty_table(), tmp_path / "phrases.parquet")
    assert pl.read_parquet(tmp_path / "alps.parquet").schema["box_xyxy_norm"] == pl.Array(
        pl.Float32, 4
    )
    assert pl.read_parquet(tmp_path / "phrases.parquet").schema["embedding"] == pl.Array(
        pl.Float32, 8
    )


def sound_manifest() -> dict[str, Any]:
    return {
        "options": {"images": None},
        "counts": {
            "input_lines": 10,
            "dead_letters": {"total": 3, "by_reason": {"json_decode": 2, "not_utf8": 1}},
            "records": {
                "total": 7,
                "with_alps": 5,
                "without_alps": {"total": 2, "by_reason": {"no_traces": 2}},
            },
            "alps": 9,
            "phrases_dropped": {"total": 4, "by_reason": {"stuff": 4}},
            "unique_phrases": 6,
            "embeddings": {"computed": 4, "reused": 2},
            "shards": {"samples": 5, "image_files_found": 0, "image_files_missing": 0},
        },
        "files": {
            "alps": [{"path": "alps/part-00000-of-00002.parquet", "rows": 4},
                     {"path": "alps/part-00001-of-00002.parquet", "rows": 5}],
            "phrases": [{"path": "phrases/part-00000-of-00001.parquet", "rows": 6}],
            "shards": [{"path": "shards/shard-000000.tar", "rows": 5}],
            "dead_letters": [{"path": "dead_letters/part-00000-of-00001.jsonl", "rows": 3}],
        },
    }  # fmt: skip


def test_manifest_problems_names_each_broken_identity() -> None:
    assert manifest_problems(sound_manifest()) == []
    cases = {
        "input_lines = records + dead_letters": ("input_lines",),
        "records = with_alps + without_alps": ("records", "with_alps"),
        "unique_phrases = computed + reused": ("embeddings", "computed"),
        "dead_letters.total = sum(by_reason)": ("dead_letters", "by_reason", "not_utf8"),
        "rows in alps files": ("alps",),
    }
    for problem, path in cases.items():
        broken = copy.deepcopy(sound_manifest())
        holder = broken["counts"]
        for name in path[:-1]:
            holder = holder[name]
        holder[path[-1]] += 1
        assert any(p.startswith(problem) for p in manifest_problems(broken)), problem
    with_images = sound_manifest()
    with_images["options"]["images"] = "/images"
    assert manifest_problems(with_images) == [
        "samples = image_files_found + image_files_missing: 5 != 0"
    ]


def test_the_data_format_doc_covers_every_field() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert f"schema version {SCHEMA_VERSION}" in doc
    names = [
        *ALP_SCHEMA.names,
        *phrase_schema(4, "x").names,
        *schema.DEAD_LETTER_FIELDS,
        *schema.SAMPLE_JSON_FIELDS,
        *schema.ALP_JSON_FIELDS,
        *schema.MANIFEST_KEYS,
        *schema.PIPELINE_REASONS,
        *REASONS,
    ]
    missing = [name for name in names if f"`{name}`" not in doc and f" {name}," not in doc]
    assert missing == []
