"""Tests for alp_curation.embedding_cache: layout, determinism, robustness, embed_with_cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from alp_curation.embedding_cache import (
    CorruptPartError,
    EmbeddingCache,
    EmbeddingCacheError,
    EncoderMismatchError,
    LocalStorage,
    Storage,
    embed_with_cache,
    encode_part,
    encoder_slug,
    phrase_id,
)
from alp_curation.prompts import ensemble_embeddings, load_templates

PHRASES = ["dog", "cat", "red car", "double-decker bus", "café table", "日本の猫", "tree", "a"]


class HashEncoder:
    """A tiny deterministic stand-in for a real text encoder (CLIP, MiniLM).

    Each text maps to a vector drawn from a generator seeded by the text's hash, so a text gets the
    same row in any batch and any run. Every text it is asked to encode is recorded, so tests can
    tell which phrases were embedded (see ``embedded_phrases``).
    """

    id = "test:hash-encoder"
    dim = 8

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        rows = [
            np.random.default_rng(
                int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little")
            ).standard_normal(self.dim)
            for t in texts
        ]
        return np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)

    def embedded_phrases(self) -> list[str]:
        """Phrases seen so far, read back from the prompts of the first ViLD template."""
        first = re.escape(load_templates()[0]).replace(r"\{article\}", "(?:a|an)")
        pattern = re.compile(first.replace(r"\{\}", "(.*)"))
        return [m.group(1) for t in self.texts if (m := pattern.fullmatch(t))]


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill_cache(cache: EmbeddingCache, table: dict[str, np.ndarray]) -> None:
    """Add ``table`` with one part per bucket, as embed_with_cache does."""
    by_bucket: dict[int, list[str]] = {}
    for phrase in table:
        by_bucket.setdefault(cache.bucket_of(phrase), []).append(phrase)
    for bucket, phrases in by_bucket.items():
        cache.add(bucket, phrases, np.stack([table[p] for p in phrases]))


def part_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# -- ids and layout -------------------------------------------------------------------------


def test_phrase_id_is_the_specs_blake2b_int64() -> None:
    digest = hashlib.blake2b(b"dog", digest_size=8).digest()
    assert phrase_id("dog") == int.from_bytes(digest, "little", signed=True)
    assert phrase_id("dog") == -6945572266024926151  # golden: alp_dataset.schema must agree
    assert phrase_id("café") == int.from_bytes(
        hashlib.blake2b("café".encode(), digest_size=8).digest(), "little", signed=True
    )


def test_bucket_of_is_non_negative_phrase_id_modulo(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 4, n_buckets=64)
    assert phrase_id("dog") < 0
    for phrase in PHRASES:
        assert cache.bucket_of(phrase) == phrase_id(phrase) % 64
        assert 0 <= cache.bucket_of(phrase) < 64


def test_encoder_slug_is_a_safe_folder_name_and_keeps_ids_apart() -> None:
    slug = encoder_slug("open_clip:ViT-B-32:/models/clip/open_clip_pytorch_model.bin")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", slug)
    assert slug.startswith("open_clip_ViT-B-32_models_clip")
    assert encoder_slug("a:b") != encoder_slug("a/b")


def test_layout_on_disk(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 4, n_buckets=16)
    bucket = cache.bucket_of("dog")
    path = cache.add(bucket, ["dog"], unit_rows(1, 4))
    assert path is not None
    slug_dir = tmp_path / encoder_slug("test:x")
    assert Path(path).parent == slug_dir / f"bucket-{bucket:02d}"
    assert re.fullmatch(r"part-[0-9a-f]{16}\.npz", Path(path).name)
    assert Path(path).name[5:21] == hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    assert json.loads((slug_dir / "encoder.json").read_text()) == {
        "dim": 4,
        "encoder_id": "test:x",
        "format": 1,
        "n_buckets": 16,
    }
    with np.load(path) as npz:  # a plain .npz
        assert npz["phrases"].tolist() == ["dog"]
        assert npz["embeddings"].dtype == np.float32


# -- round trip and lookup ------------------------------------------------------------------


def test_round_trip_one_bucket(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 5, n_buckets=1)
    emb = unit_rows(len(PHRASES), 5)
    cache.add(0, PHRASES, emb)
    table = EmbeddingCache(str(tmp_path), "test:x", 5, n_buckets=1).load_bucket(0)
    assert sorted(table) == sorted(PHRASES)
    for phrase, row in zip(PHRASES, emb, strict=True):
        assert table[phrase].dtype == np.float32
        np.testing.assert_array_equal(table[phrase], row)


def test_lookup_hits_and_misses_across_buckets(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 3, n_buckets=4)
    stored = dict(zip(PHRASES[:5], unit_rows(5, 3), strict=True))
    fill_cache(cache, stored)
    assert len({cache.bucket_of(p) for p in stored}) >= 3  # the lookup spans several buckets
    asked = ["tree", "dog", "café table", "tree", "a", "dog", "red car"]
    hits, misses = cache.lookup(asked)
    assert sorted(hits) == ["café table", "dog", "red car"]
    for phrase, row in hits.items():
        np.testing.assert_array_equal(row, stored[phrase])
    assert misses == ["tree", "a"]  # first-seen order, each once
    assert cache.lookup([]) == ({}, [])


def test_lookup_on_an_empty_cache_misses_everything_and_writes_nothing(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path / "cache"), "test:x", 3)
    assert cache.lookup(PHRASES) == ({}, PHRASES)
    assert not (tmp_path / "cache").exists()


def test_bucket_is_the_union_of_its_parts_first_part_wins(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 2, n_buckets=1)
    a = cache.add(0, ["dog", "cat"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    b = cache.add(0, ["cat", "tree"], np.array([[5, 5], [1, 1]], dtype=np.float32))
    assert a is not None and b is not None and a != b
    table = cache.load_bucket(0)
    assert sorted(table) == ["cat", "dog", "tree"]
    expected_cat = [0, 1] if a < b else [5, 5]  # parts are read in name order
    np.testing.assert_array_equal(table["cat"], expected_cat)


def test_add_checks_its_input(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 2, n_buckets=4)
    bucket = cache.bucket_of("dog")
    other = (bucket + 1) % 4
    with pytest.raises(ValueError, match=r"'dog' belongs to bucket"):
        cache.add(other, ["dog"], np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"shape \(1, 3\); expected \(1, 2\)"):
        cache.add(bucket, ["dog"], np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        cache.add(bucket, ["dog"], np.array([[np.nan, 0]], np.float32))
    with pytest.raises(ValueError, match="out of range"):
        cache.add(4, [], np.zeros((0, 2), np.float32))
    assert cache.add(bucket, [], np.zeros((0, 2), np.float32)) is None
    assert list(tmp_path.rglob("*")) == []  # nothing written, not even encoder.json


def test_adding_the_same_content_again_writes_nothing_new(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 3, n_buckets=1)
    emb = unit_rows(3, 3)
    first = cache.add(0, ["dog", "cat", "tree"], emb)
    assert first is not None
    mtime = os.stat(first).st_mtime_ns
    # Same pairs in another order, one repeated: the same part.
    again = cache.add(0, ["tree", "dog", "cat", "dog"], emb[[2, 0, 1, 0]])
    assert again == first
    assert os.stat(first).st_mtime_ns == mtime
    assert len(cache.part_paths(0)) == 1


# -- determinism ----------------------------------------------------------------------------


def test_same_content_gives_byte_identical_parts_in_two_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = unit_rows(len(PHRASES), 6, seed=3)
    order = np.random.default_rng(1).permutation(len(PHRASES))
    fill_cache(
        EmbeddingCache(str(tmp_path / "one"), "test:x", 6, n_buckets=4),
        dict(zip(PHRASES, emb, strict=True)),
    )
    # Written later (the clock says 2031) and in another order: the same bytes.
    later = time.time() + 10 * 365 * 86400
    monkeypatch.setattr(time, "time", lambda: later)
    shuffled = {PHRASES[i]: emb[i] for i in order}
    fill_cache(EmbeddingCache(str(tmp_path / "two"), "test:x", 6, n_buckets=4), shuffled)
    one, two = part_files(tmp_path / "one"), part_files(tmp_path / "two")
    assert len(one) >= 4  # encoder.json and parts in several buckets
    assert one == two


def test_part_zip_headers_are_fixed() -> None:
    data = encode_part(["cat", "dog"], np.zeros((2, 3), np.float32))
    assert data == encode_part(["cat", "dog"], np.zeros((2, 3), np.float64))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_STORED


# -- robustness -----------------------------------------------------------------------------


def test_encoder_json_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 3, n_buckets=8)
    cache.add(cache.bucket_of("dog"), ["dog"], unit_rows(1, 3))
    with pytest.raises(EncoderMismatchError, match=r"n_buckets=8 \(asked for 16\)"):
        EmbeddingCache(str(tmp_path), "test:x", 3, n_buckets=16)
    with pytest.raises(EncoderMismatchError, match=r"dim=3 \(asked for 4\)") as info:
        EmbeddingCache(str(tmp_path), "test:x", 4, n_buckets=8)
    assert str(tmp_path) in str(info.value)
    EmbeddingCache(str(tmp_path), "test:x", 3, n_buckets=8)  # the settings it was made with
    EmbeddingCache(str(tmp_path), "test:y", 4, n_buckets=16)  # another encoder: its own folder


def test_unreadable_encoder_json_is_an_error(tmp_path: Path) -> None:
    meta = tmp_path / encoder_slug("test:x") / "encoder.json"
    meta.parent.mkdir()
    meta.write_text("{not json")
    with pytest.raises(EmbeddingCacheError, match="not valid JSON"):
        EmbeddingCache(str(tmp_path), "test:x", 3)
    meta.write_text(json.dumps({"encoder_id": "test:x", "dim": 3, "n_buckets": 64, "format": 2}))
    with pytest.raises(EmbeddingCacheError, match="format 2 is not supported"):
        EmbeddingCache(str(tmp_path), "test:x", 3)


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "empty"])
def test_corrupt_part_names_the_file(tmp_path: Path, damage: str) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 3, n_buckets=1)
    path = Path(str(cache.add(0, ["dog", "cat"], unit_rows(2, 3))))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip-byte":
        path.write_bytes(data[:-30] + bytes([data[-30] ^ 0xFF]) + data[-29:])
    else:
        path.write_bytes(b"")
    with pytest.raises(CorruptPartError, match=re.escape(str(path))):
        cache.load_bucket(0)
    with pytest.raises(CorruptPartError, match="corrupt or truncated"):
        cache.lookup(["dog"])


def test_part_with_the_right_name_but_wrong_content_names_the_file(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 3, n_buckets=1)
    folder = Path(cache.bucket_dir(0))
    folder.mkdir(parents=True)

    def plant(data: bytes) -> Path:
        path = folder / f"part-{hashlib.sha256(data).hexdigest()[:16]}.npz"
        path.write_bytes(data)
        return path

    garbage = plant(b"this is not a zip file")
    with pytest.raises(CorruptPartError, match=f"{re.escape(str(garbage))} cannot be read"):
        cache.load_bucket(0)
    garbage.unlink()
    wrong_dim = plant(encode_part(["dog"], np.zeros((1, 2), np.float32)))
    with pytest.raises(
        CorruptPartError, match=rf"{re.escape(str(wrong_dim))}: embeddings .*\(1, 3\)"
    ):
        cache.load_bucket(0)
    wrong_dim.unlink()
    cache4 = EmbeddingCache(str(tmp_path / "four"), "test:x", 3, n_buckets=4)
    stray = next(p for p in PHRASES if cache4.bucket_of(p) != 0)
    Path(cache4.bucket_dir(0)).mkdir(parents=True)
    data = encode_part([stray], np.zeros((1, 3), np.float32))
    (Path(cache4.bucket_dir(0)) / f"part-{hashlib.sha256(data).hexdigest()[:16]}.npz").write_bytes(
        data
    )
    with pytest.raises(CorruptPartError, match="does not belong to bucket 0"):
        cache4.load_bucket(0)


def test_other_files_in_a_bucket_are_ignored(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:x", 3, n_buckets=1)
    cache.add(0, ["dog"], unit_rows(1, 3))
    folder = Path(cache.bucket_dir(0))
    (folder / ".part-0123456789abcdef.npz.x1y2.tmp").write_bytes(b"half a write")
    (folder / "README").write_text("notes")
    assert sorted(cache.load_bucket(0)) == ["dog"]


# -- storage --------------------------------------------------------------------------------


def test_local_storage_is_a_storage() -> None:
    assert isinstance(LocalStorage(), Storage)


def test_write_atomic_leaves_only_the_complete_file(tmp_path: Path) -> None:
    storage = LocalStorage()
    target = tmp_path / "deep" / "folder" / "file.bin"
    storage.write_atomic(str(target), b"x" * 100_000)
    assert target.read_bytes() == b"x" * 100_000
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]
    storage.write_atomic(str(target), b"new")  # replaces
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_failed_write_atomic_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage()
    target = tmp_path / "file.bin"
    storage.write_atomic(str(target), b"old content")

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        storage.write_atomic(str(target), b"new content, never complete")
    with pytest.raises(OSError, match="disk full"):
        storage.write_atomic(str(tmp_path / "other.bin"), b"never complete")
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
    assert target.read_bytes() == b"old content"


def test_local_storage_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage()
    for name in ["a/bucket-01/p1", "a/bucket-01/p2", "a/bucket-010/p3", "a/encoder.json"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    root = str(tmp_path)
    assert storage.list(storage.join(root, "a", "bucket-01", "")) == [
        storage.join(root, "a", "bucket-01", "p1"),
        storage.join(root, "a", "bucket-01", "p2"),
    ]
    assert storage.list(storage.join(root, "a", "encoder.json")) == [
        storage.join(root, "a", "encoder.json")
    ]
    assert len(storage.list(storage.join(root, "a", ""))) == 4
    assert storage.list(storage.join(root, "missing", "")) == []
    monkeypatch.chdir(tmp_path)
    assert storage.list("a/bucket-010/") == ["a/bucket-010/p3"]
    assert storage.list("a/enc") == ["a/encoder.json"]


# -- embed_with_cache -----------------------------------------------------------------------


def test_embed_with_cache_embeds_only_new_phrases(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), HashEncoder.id, HashEncoder.dim, n_buckets=4)
    first_batch = ["dog", "cat", "dog", "red car"]
    encoder = HashEncoder()
    first, reused = embed_with_cache(cache, encoder, first_batch, batch_size=63 * 2)
    assert reused == 0
    assert encoder.embedded_phrases() == ["dog", "cat", "red car"]  # "dog" once
    assert len(encoder.texts) == 3 * 63
    np.testing.assert_array_equal(first[0], first[2])

    superset = ["tree", "red car", "bus", "dog", "tree", "cat"]
    encoder = HashEncoder()
    second, reused = embed_with_cache(cache, encoder, superset)
    assert reused == 3
    assert encoder.embedded_phrases() == ["tree", "bus"]
    expected = ensemble_embeddings(HashEncoder(), superset)
    np.testing.assert_allclose(second, expected, rtol=0, atol=1e-6)
    no_cache, reused = embed_with_cache(None, HashEncoder(), superset)
    assert reused == 0
    np.testing.assert_array_equal(second, no_cache)

    encoder = HashEncoder()
    third, reused = embed_with_cache(cache, encoder, list(reversed(superset)))
    assert (reused, encoder.texts) == (5, [])  # everything cached: the encoder is not called
    np.testing.assert_array_equal(third, second[::-1])


def test_embed_with_cache_output_shape_and_dtype(tmp_path: Path) -> None:
    encoder = HashEncoder()
    out, reused = embed_with_cache(None, encoder, ["dog", "dog", "cat"])
    assert out.shape == (3, HashEncoder.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    assert encoder.embedded_phrases() == ["dog", "cat"]
    empty, reused = embed_with_cache(
        EmbeddingCache(str(tmp_path), encoder.id, encoder.dim), encoder, []
    )
    assert empty.shape == (0, HashEncoder.dim) and reused == 0


def test_embed_with_cache_writes_one_part_per_touched_bucket(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), HashEncoder.id, HashEncoder.dim, n_buckets=4)
    embed_with_cache(cache, HashEncoder(), PHRASES)
    touched = {cache.bucket_of(p) for p in PHRASES}
    for bucket in range(4):
        assert len(cache.part_paths(bucket)) == (1 if bucket in touched else 0)


def test_embed_with_cache_refuses_a_cache_of_another_encoder(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), "test:other", HashEncoder.dim)
    with pytest.raises(EncoderMismatchError, match="test:other"):
        embed_with_cache(cache, HashEncoder(), ["dog"])


def test_cache_object_pickles_small(tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path), HashEncoder.id, HashEncoder.dim, n_buckets=4)
    embed_with_cache(cache, HashEncoder(), PHRASES)
    copy = pickle.loads(pickle.dumps(cache))
    assert len(pickle.dumps(cache)) < 2000
    hits, misses = copy.lookup(PHRASES)
    assert sorted(hits) == sorted(PHRASES) and misses == []


@pytest.mark.slow
def test_embed_with_cache_with_the_real_minilm_encoder(tmp_path: Path) -> None:
    from alp_curation.encoders import load_text_encoder

    encoder = load_text_encoder("minilm")
    cache = EmbeddingCache(str(tmp_path), encoder.id, encoder.dim)
    phrases = ["couch", "sofa", "dog", "couch"]
    first, reused = embed_with_cache(cache, encoder, phrases)
    assert reused == 0 and first.shape == (4, 384)
    second, reused = embed_with_cache(cache, encoder, ["dog", "sofa", "couch"])
    assert reused == 3
    np.testing.assert_array_equal(second, first[[2, 1, 0]])
    cos_couch_sofa = float(first[0] @ first[1])
    cos_couch_dog = float(first[0] @ first[2])
    assert cos_couch_sofa > cos_couch_dog + 0.2
