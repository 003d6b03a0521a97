"""Persistent phrase embeddings keyed by (encoder id, phrase text): re-runs embed only new phrases.

The cache holds prompt-ensemble embeddings (``prompts.ensemble_embeddings`` with the shipped ViLD
templates). Layout under ``root``::

    <root>/<encoder slug>/encoder.json            {"dim", "encoder_id", "format": 1, "n_buckets"}
    <root>/<encoder slug>/bucket-<NN>/part-<h>.npz   h = first 16 hex of the file's sha256

A phrase lives in bucket ``phrase_id(phrase) % n_buckets``. A part is a zip (stored, not deflated)
of two ``.npy`` arrays, readable with ``np.load``: ``phrases`` (unicode, sorted, unique) and
``embeddings`` (little-endian float32 ``(N, dim)``). Parts are written once and never changed;
a bucket is the union of its parts (the first part in name order wins for a phrase stored twice).

Why content-addressed parts: concurrent workers and retried bundles may add the same phrases.
The same set of (phrase, embedding) pairs always serialises to the same bytes, hence to the same
file name, so a retry rewrites an identical file instead of adding a duplicate, and writers never
coordinate. ``np.savez`` is not used: its bytes depend on numpy's zip code (older releases stamped
entries with the time of writing); the zip is written here with every header field fixed.

Storage goes through the small ``Storage`` protocol, so the Beam pipeline can pass one backed by
Beam's FileSystems (gs://, s3://) while local use and tests take ``LocalStorage``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from alp_curation.phrases import phrase_id
from alp_curation.prompts import ensemble_embeddings

if TYPE_CHECKING:
    from alp_curation.encoders import TextEncoder

__all__ = [
    "FORMAT_VERSION",
    "CorruptPartError",
    "EmbeddingCache",
    "EmbeddingCacheError",
    "EncoderMismatchError",
    "LocalStorage",
    "Storage",
    "decode_part",
    "embed_with_cache",
    "encode_part",
    "encoder_slug",
    "phrase_id",
]

FORMAT_VERSION = 1
ENCODER_JSON = "encoder.json"
_PART_NAME = re.compile(r"part-([0-9a-f]{16})\.npz")
_PHRASES_ENTRY = "phrases.npy"
_EMBEDDINGS_ENTRY = "embeddings.npy"
# Fixed zip header fields: the earliest date a zip can hold, "Unix" as the creating system
# (zipfile's default depends on the platform), and rw-r--r-- permissions.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_CREATE_SYSTEM = 3
_ZIP_EXTERNAL_ATTR = 0o100644 << 16


class EmbeddingCacheError(RuntimeError):
    """The embedding cache on storage cannot be used as asked."""


class EncoderMismatchError(EmbeddingCacheError):
    """The cache directory was made for another encoder id, dim or bucket count."""


class CorruptPartError(EmbeddingCacheError):
    """A part file is truncated, corrupt or does not hold what its bucket expects."""


@runtime_checkable
class Storage(Protocol):
    """Where the cache's files live. Paths are plain strings ("/data/cache", "gs://bucket/c")."""

    def list(self, prefix: str) -> list[str]:
        """Full paths of the files whose path starts with ``prefix`` (a "dir/" lists a folder)."""
        ...

    def read(self, path: str) -> bytes: ...

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``data``; the file appears under ``path`` only once it is complete."""
        ...

    def join(self, *parts: str) -> str: ...


class LocalStorage:
    """``Storage`` on the local filesystem; a write goes to a temp file, then ``os.replace``."""

    def list(self, prefix: str) -> list[str]:
        base = os.path.dirname(prefix)
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base or os.curdir):
            # Descend only into folders that can hold a match ("a/bucket-01" for "a/bucket-01/").
            dirnames[:] = [
                d
                for d in dirnames
                if (full := self._shown(os.path.join(dirpath, d), base)).startswith(prefix)
                or prefix.startswith(full + os.sep)
            ]
            for name in filenames:
                path = self._shown(os.path.join(dirpath, name), base)
                if path.startswith(prefix):
                    found.append(path)
        return sorted(found)

    @staticmethod
    def _shown(path: str, base: str) -> str:
        # A prefix without a folder is relative to the working directory: drop the walk's "./".
        return path if base else os.path.normpath(path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_atomic(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path) or os.curdir
        os.makedirs(directory, exist_ok=True)
        # Same folder as the target, so os.replace is a rename within one filesystem.
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0o600
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def __repr__(self) -> str:
        return "LocalStorage()"


def encoder_slug(encoder_id: str) -> str:
    """Folder name for an encoder id: a readable part plus 8 hex of the id's hash.

    The hash keeps ids that read the same once cleaned ("a:b" and "a/b") apart, and bounds the
    length of ids that hold a checkpoint path.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_id).strip("._-")[:64]
    digest = hashlib.blake2b(encoder_id.encode("utf-8"), digest_size=4).hexdigest()
    return f"{readable}-{digest}" if readable else digest


class EmbeddingCache:
    """Embeddings of one encoder under ``root``, split into ``n_buckets`` buckets of parts.

    ``encoder.json`` is checked on construction (an existing cache made with another dim or
    bucket count raises ``EncoderMismatchError``) and written with the first part. The object
    holds no loaded data and pickles small, so a Beam worker can carry it.
    """

    def __init__(
        self,
        root: str,
        encoder_id: str,
        dim: int,
        *,
        storage: Storage | None = None,
        n_buckets: int = 64,
    ) -> None:
        if not encoder_id:
            raise ValueError("EmbeddingCache: encoder_id is empty")
        if dim < 1:
            raise ValueError(f"EmbeddingCache: dim must be >= 1, got {dim}")
        if n_buckets < 1:
            raise ValueError(f"EmbeddingCache: n_buckets must be >= 1, got {n_buckets}")
        self.root = root
        self.encoder_id = encoder_id
        self.dim = int(dim)
        self.n_buckets = int(n_buckets)
        self.storage: Storage = storage if storage is not None else LocalStorage()
        self.directory = self.storage.join(root, encoder_slug(encoder_id))
        self._encoder_json = self.storage.join(self.directory, ENCODER_JSON)
        self._bucket_width = max(2, len(str(self.n_buckets - 1)))
        self._has_encoder_json = self._check_encoder_json()

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache(root={self.root!r}, encoder_id={self.encoder_id!r}, dim={self.dim}, "
            f"n_buckets={self.n_buckets})"
        )

    def bucket_of(self, phrase: str) -> int:
        return phrase_id(phrase) % self.n_buckets  # Python's % is non-negative here

    def bucket_dir(self, bucket: int) -> str:
        self._check_bucket(bucket)
        return self.storage.join(self.directory, f"bucket-{bucket:0{self._bucket_width}d}")

    def part_paths(self, bucket: int) -> list[str]:
        """Paths of the bucket's part files, in name order (other files are ignored)."""
        listed = self.storage.list(self.storage.join(self.bucket_dir(bucket), ""))
        return sorted(p for p in listed if _PART_NAME.fullmatch(_basename(p)))

    def load_bucket(self, bucket: int) -> dict[str, np.ndarray]:
        """phrase -> float32 (dim,) embedding, over all parts of the bucket."""
        table: dict[str, np.ndarray] = {}
        for path in self.part_paths(bucket):
            phrases, embeddings = self._read_part(path, bucket)
            for phrase, row in zip(phrases.tolist(), embeddings, strict=True):
                table.setdefault(phrase, row)
        return table

    def add(self, bucket: int, phrases: Sequence[str], embeddings: np.ndarray) -> str | None:
        """Write one new part holding these phrases (all of ``bucket``); its path, None if empty.

        Repeated phrases keep their first row. A part with the same content already on storage
        is not written again.
        """
        self._check_bucket(bucket)
        phrases = list(phrases)
        embeddings = np.asarray(embeddings)
        if embeddings.shape != (len(phrases), self.dim):
            raise ValueError(
                f"EmbeddingCache.add: embeddings have shape {embeddings.shape}; expected "
                f"({len(phrases)}, {self.dim}) for {len(phrases)} phrases of encoder "
                f"{self.encoder_id}"
            )
        if not phrases:
            return None
        if not np.isfinite(embeddings).all():
            raise ValueError("EmbeddingCache.add: embeddings hold NaN or inf; nothing written")
        for phrase in phrases:
            self._check_phrase(phrase, bucket)
        first = {phrase: i for i, phrase in reversed(list(enumerate(phrases)))}
        order = [first[phrase] for phrase in sorted(first)]
        data = encode_part([phrases[i] for i in order], embeddings[order].astype("<f4", copy=False))
        path = self.storage.join(self.bucket_dir(bucket), _part_name(data))
        self._write_encoder_json()
        if path not in self.storage.list(path):
            self.storage.write_atomic(path, data)
        return path

    def lookup(self, phrases: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """(hits: phrase -> (dim,) embedding, misses in first-seen order); each bucket read once."""
        unique = list(dict.fromkeys(phrases))
        by_bucket: dict[int, list[str]] = {}
        for phrase in unique:
            by_bucket.setdefault(self.bucket_of(phrase), []).append(phrase)
        hits: dict[str, np.ndarray] = {}
        for bucket in sorted(by_bucket):
            table = self.load_bucket(bucket)
            for phrase in by_bucket[bucket]:
                if phrase in table:
                    hits[phrase] = table[phrase]
        return hits, [phrase for phrase in unique if phrase not in hits]

    def _check_bucket(self, bucket: int) -> None:
        if not 0 <= bucket < self.n_buckets:
            raise ValueError(
                f"EmbeddingCache: bucket {bucket} is out of range; expected 0..{self.n_buckets - 1}"
            )

    def _check_phrase(self, phrase: object, bucket: int) -> None:
        if not isinstance(phrase, str):
            raise TypeError(f"EmbeddingCache.add: phrase {phrase!r} is not a str")
        if "\x00" in phrase:
            # numpy's unicode arrays drop trailing NULs, so such a phrase would not round-trip.
            raise ValueError(f"EmbeddingCache.add: phrase {phrase!r} holds a NUL character")
        if self.bucket_of(phrase) != bucket:
            raise ValueError(
                f"EmbeddingCache.add: phrase {phrase!r} belongs to bucket "
                f"{self.bucket_of(phrase)}, not {bucket}"
            )

    def _encoder_json_bytes(self) -> bytes:
        meta = {
            "dim": self.dim,
            "encoder_id": self.encoder_id,
            "format": FORMAT_VERSION,
            "n_buckets": self.n_buckets,
        }
        return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def _check_encoder_json(self) -> bool:
        """Compare an existing encoder.json with this cache's settings; False when there is none."""
        if self._encoder_json not in self.storage.list(self._encoder_json):
            return False
        try:
            meta = json.loads(self.storage.read(self._encoder_json).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EmbeddingCacheError(
                f"embedding cache {self._encoder_json} is not valid JSON: {exc}"
            ) from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            found = meta.get("format") if isinstance(meta, dict) else meta
            raise EmbeddingCacheError(
                f"embedding cache {self._encoder_json}: format {found!r} is not supported; "
                f"this code reads format {FORMAT_VERSION}"
            )
        wanted = {"encoder_id": self.encoder_id, "dim": self.dim, "n_buckets": self.n_buckets}
        differ = [
            f"{key}={meta.get(key)!r} (asked for {value!r})"
            for key, value in wanted.items()
            if meta.get(key) != value
        ]
        if differ:
            raise EncoderMismatchError(
                f"embedding cache {self.directory} was made with {', '.join(differ)}. "
                "Use the settings it was made with, or another cache root."
            )
        return True

    def _write_encoder_json(self) -> None:
        # Concurrent writers write identical bytes, so the race between them is harmless.
        if not self._has_encoder_json:
            if not self._check_encoder_json():
                self.storage.write_atomic(self._encoder_json, self._encoder_json_bytes())
            self._has_encoder_json = True

    def _read_part(self, path: str, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        data = self.storage.read(path)
        if _part_name(data) != _basename(path):
            raise CorruptPartError(
                f"embedding cache part {path} is corrupt or truncated: its sha256 "
                f"({hashlib.sha256(data).hexdigest()[:16]}, {len(data)} bytes) does not match "
                "its name. Delete the file; its phrases will be embedded again."
            )
        try:
            phrases, embeddings = decode_part(data)
        except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as exc:
            raise CorruptPartError(f"embedding cache part {path} cannot be read: {exc}") from exc
        problem = None
        if phrases.ndim != 1 or phrases.dtype.kind != "U":
            problem = f"phrases are {phrases.dtype} {phrases.shape}; expected a 1-d unicode array"
        elif embeddings.dtype != np.dtype("<f4") or embeddings.shape != (len(phrases), self.dim):
            problem = (
                f"embeddings are {embeddings.dtype} {embeddings.shape}; expected float32 "
                f"({len(phrases)}, {self.dim})"
            )
        else:
            strays = [p for p in phrases.tolist() if self.bucket_of(p) != bucket]
            if strays:
                problem = f"phrase {strays[0]!r} does not belong to bucket {bucket}"
        if problem is not None:
            raise CorruptPartError(f"embedding cache part {path}: {problem}")
        return phrases, embeddings


def encode_part(phrases: Sequence[str], embeddings: np.ndarray) -> bytes:
    """Serialise a part: a zip of phrases.npy and embeddings.npy with fixed header fields."""
    buffer = io.BytesIO()
    arrays = {
        _PHRASES_ENTRY: np.array(list(phrases), dtype=np.str_),
        _EMBEDDINGS_ENTRY: np.ascontiguousarray(embeddings, dtype="<f4"),
    }
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            entry = io.BytesIO()
            np.lib.format.write_array(entry, array, allow_pickle=False)
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
            info.create_system = _ZIP_CREATE_SYSTEM
            info.external_attr = _ZIP_EXTERNAL_ATTR
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, entry.getvalue())
    return buffer.getvalue()


def decode_part(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(phrases, embeddings) from a part's bytes; zip / npy errors propagate."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        arrays = []
        for name in (_PHRASES_ENTRY, _EMBEDDINGS_ENTRY):
            with zf.open(name) as f:
                arrays.append(np.lib.format.read_array(f, allow_pickle=False))
    return arrays[0], arrays[1]


def embed_with_cache(
    cache: EmbeddingCache | None,
    encoder: TextEncoder,
    phrases: Sequence[str],
    *,
    batch_size: int = 1024,
    progress: bool = False,
    on_lookup: Callable[[int, int], None] | None = None,
    on_embedded: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Prompt-ensemble embeddings of ``phrases`` (float32 (N, dim), in order) and the reuse count.

    Each distinct phrase is embedded at most once; phrases found in ``cache`` are not embedded
    at all, and the rest are embedded with ``ensemble_embeddings`` and added to the cache (one
    part per touched bucket). The count is the number of distinct phrases taken from the cache.
    With ``cache=None`` this is ``ensemble_embeddings`` over the distinct phrases.
    Progress, for callers that show it: ``on_lookup(hits, misses)`` once the cache has been
    read (distinct phrases found there, and to embed), ``on_embedded(n)`` after each batch.
    """
    if cache is not None and (cache.encoder_id != encoder.id or cache.dim != encoder.dim):
        raise EncoderMismatchError(
            f"embed_with_cache: the cache holds {cache.encoder_id} ({cache.dim}-d) embeddings; "
            f"the encoder is {encoder.id} ({encoder.dim}-d)"
        )
    unique = list(dict.fromkeys(phrases))
    if cache is not None:
        hits, misses = cache.lookup(unique)
    else:
        hits, misses = {}, unique
    if on_lookup is not None:
        on_lookup(len(hits), len(misses))
    new = ensemble_embeddings(
        encoder, misses, batch_size=batch_size, progress=progress, on_embedded=on_embedded
    )  # (M, D)
    if cache is not None and misses:
        by_bucket: dict[int, list[int]] = {}
        for i, phrase in enumerate(misses):
            by_bucket.setdefault(cache.bucket_of(phrase), []).append(i)
        for bucket in sorted(by_bucket):
            rows = by_bucket[bucket]
            cache.add(bucket, [misses[i] for i in rows], new[rows])
    row_of = {phrase: i for i, phrase in enumerate(misses)}
    table = np.empty((len(unique), encoder.dim), dtype=np.float32)  # (U, D)
    for i, phrase in enumerate(unique):
        table[i] = hits[phrase] if phrase in hits else new[row_of[phrase]]
    index = {phrase: i for i, phrase in enumerate(unique)}
    return table[[index[phrase] for phrase in phrases]], len(hits)  # (N, D)


def _part_name(data: bytes) -> str:
    return f"part-{hashlib.sha256(data).hexdigest()[:16]}.npz"


def _basename(path: str) -> str:
    """Last component of a local or URL-style path."""
    return re.split(r"[/\\]", path.rstrip("/\\"))[-1]
