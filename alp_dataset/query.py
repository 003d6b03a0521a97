"""polars queries over a curation run's output directory (layout in docs/data_format.md).

``AlpStore.open(path)`` reads ``manifest.json`` (whose presence marks a complete run) and scans
the Parquet tables lazily; nothing else is read until a query is collected. The helpers return
``pl.LazyFrame``s built from plain filters, projections, group-bys and joins, so polars pushes a
filter and a column selection down into the Parquet scan: ``alps_of_image(store, "42")
.select("phrase")`` reads two columns of the row groups whose statistics may hold image 42, not the
table. ``nearest_phrases`` is the one eager helper: it embeds the query text and scores it against
the phrase table's embeddings with numpy, one Parquet file at a time.

    from alp_dataset.query import AlpStore, alps_of_image, phrase_frequencies

    store = AlpStore.open("out")
    phrase_frequencies(store).head(20).collect()
    alps_of_image(store, "00000003").select("phrase", "box_xyxy_norm").collect()

Worked examples with their output: docs/querying.md.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from alp_dataset.schema import ALPS_DIR, MANIFEST_NAME, PHRASES_DIR, SCHEMA_VERSION

if TYPE_CHECKING:
    from alp_curation.encoders import TextEncoder

__all__ = [
    "READABLE_SCHEMA_VERSIONS",
    "AlpStore",
    "alps_near_text",
    "alps_of_image",
    "alps_with_embeddings",
    "box_stats",
    "embed_query",
    "encoder_spec",
    "nearest_phrases",
    "normalise_query",
    "phrase_frequencies",
]

# Schema versions of output directories this module reads.
# 1.0 differs only in keys of ids holding "%" or "/", which it let collide.
READABLE_SCHEMA_VERSIONS = frozenset({"1.0", SCHEMA_VERSION})

_REQUIRED_MANIFEST_KEYS = ("schema_version", "encoder", "files", "counts", "options")


@dataclass(frozen=True, eq=False)
class AlpStore:
    """A complete curation run, opened for queries. Build it with ``AlpStore.open(path)``.

    ``alps`` and ``phrases`` are fresh ``pl.LazyFrame``s over the files the manifest lists, so
    every query starts from the scan and polars can push filters and projections into it.
    """

    root: Path
    alp_files: tuple[str, ...]  # paths of alps/*.parquet, as the manifest lists them
    phrase_files: tuple[str, ...]  # paths of phrases/*.parquet
    _manifest: Mapping[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> AlpStore:
        """Open the output directory of a curation run (``pipelines/extract_alps.py --output``).

        Raises:
            FileNotFoundError: ``path`` is missing, is not an output directory, or holds an
                incomplete run (no ``manifest.json``: the run failed or is still writing), or a
                file the manifest lists is missing.
            ValueError: the manifest is not valid JSON, lacks a key, or has a schema version this
                module does not read.
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"ALP output directory {root}: no such directory")
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            if (root / ALPS_DIR).is_dir() or (root / PHRASES_DIR).is_dir():
                raise FileNotFoundError(
                    f"ALP output directory {root}: {MANIFEST_NAME} is missing, so the run is "
                    "incomplete (it failed or is still writing; the manifest is written last). "
                    "Run the pipeline again with --overwrite."
                )
            raise FileNotFoundError(
                f"{root} is not an ALP output directory: it has no {MANIFEST_NAME} (expected the "
                "--output folder of pipelines/extract_alps.py)"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{manifest_path}: not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict):
            raise ValueError(f"{manifest_path}: expected a JSON object, found {type(manifest)}")
        missing = [key for key in _REQUIRED_MANIFEST_KEYS if key not in manifest]
        if missing:
            raise ValueError(f"{manifest_path}: keys {missing} are missing")
        version = manifest["schema_version"]
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(
                f"{manifest_path}: schema_version is {version!r}; this version of alp_dataset "
                f"reads {sorted(READABLE_SCHEMA_VERSIONS)}"
            )
        files = {kind: _listed_files(root, manifest, kind) for kind in (ALPS_DIR, PHRASES_DIR)}
        return cls(
            root=root,
            alp_files=files[ALPS_DIR],
            phrase_files=files[PHRASES_DIR],
            _manifest=manifest,
        )

    @property
    def manifest(self) -> dict[str, Any]:
        """The run's manifest.json (a copy: changing it changes nothing here)."""
        return copy.deepcopy(dict(self._manifest))

    @property
    def alps(self) -> pl.LazyFrame:
        """The ALP table (``alp_dataset.schema.ALP_SCHEMA``), one row per ALP."""
        return pl.scan_parquet(list(self.alp_files))

    @property
    def phrases(self) -> pl.LazyFrame:
        """The phrase table: phrase_id, phrase, n_alps, embedding (``Array(Float32, D)``)."""
        return pl.scan_parquet(list(self.phrase_files))

    @property
    def encoder_id(self) -> str:
        """Id of the text encoder of the embeddings ("sentence-transformers:all-MiniLM-L6-v2")."""
        return str(self._manifest["encoder"]["id"])

    @property
    def embedding_dim(self) -> int:
        return int(self._manifest["encoder"]["dim"])

    @property
    def temporal_padding(self) -> float:
        """t_p (s): an ALP box bounds the trace points within (t_start - t_p, t_end + t_p)."""
        return float(self._manifest["options"]["temporal_padding"])

    def __repr__(self) -> str:
        counts = self._manifest["counts"]
        return (
            f"AlpStore({str(self.root)!r}, alps={counts.get('alps')}, "
            f"phrases={counts.get('unique_phrases')}, encoder={self.encoder_id!r})"
        )


def _listed_files(root: Path, manifest: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    entries = manifest["files"].get(kind)
    if not entries:
        raise ValueError(f"{root / MANIFEST_NAME}: files.{kind} lists no file")
    paths = tuple(str(root / entry["path"]) for entry in entries)
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(
            f"ALP output directory {root}: {len(absent)} file(s) the manifest lists are missing, "
            f"e.g. {absent[0]}"
        )
    return paths


# ---------------------------------------------------------------------------------------------
# Lazy queries


def alps_of_image(
    store: AlpStore, image_id: str | int, dataset_id: str | None = None
) -> pl.LazyFrame:
    """The ALPs of one image, in table order (by annotator, then caption order).

    ``image_id`` is LocNar's image id, a string; an int is written as its decimal string. With
    ``dataset_id`` None, images of that id from every dataset of the run are returned.
    """
    predicate = pl.col("image_id") == str(image_id)
    if dataset_id is not None:
        predicate = (pl.col("dataset_id") == dataset_id) & predicate
    return store.alps.filter(predicate)


def phrase_frequencies(store: AlpStore) -> pl.LazyFrame:
    """One row per phrase: phrase, phrase_id, n_alps, n_images; most frequent first.

    Ties are broken by phrase text, so the order is deterministic. Rows are grouped on the
    integer ``phrase_id`` (a function of the phrase, so one group per phrase), the phrase taken by
    ``first()``. Grouping on the phrase string instead gives the same table and measured slower
    on an idle 2-core machine (0.88x and 0.93x in two runs over 5,000,000 rows,
    benchmarks/bench_polars.py, docs/benchmarks.md). Most of the query is the distinct-image
    count, which makes the top 20 about 4x a plain ``group_by("phrase").len()`` top 20.
    ``n_images`` counts distinct image keys (dataset_id, image_id) through a 64-bit hash of each
    key, so two images of one phrase would have to share a hash to be counted once (odds below
    1e-7 for a phrase in a million images).
    """
    image_key_hash = pl.struct("dataset_id", "image_id").hash()
    return (
        store.alps.group_by("phrase_id")
        .agg(
            pl.col("phrase").first(),  # phrase_id is a function of the phrase
            pl.len().cast(pl.Int64).alias("n_alps"),
            image_key_hash.n_unique().cast(pl.Int64).alias("n_images"),
        )
        .select("phrase", "phrase_id", "n_alps", "n_images")
        .sort(["n_alps", "phrase"], descending=[True, False])
    )


def box_stats(store: AlpStore) -> pl.LazyFrame:
    """Box shape per phrase: n_alps, then mean and median of width, height, area and aspect.

    Sizes are fractions of the image side (area: of the image area), read from
    ``box_xyxy_norm``; aspect is width / height, null for a box of zero height (one that bounds
    points on a horizontal line) and left out of its mean and median. Most frequent phrase first.
    """
    box = pl.col("box_xyxy_norm")
    width = box.arr.get(2) - box.arr.get(0)
    height = box.arr.get(3) - box.arr.get(1)
    sizes = store.alps.select(
        "phrase",
        width.alias("width"),
        height.alias("height"),
        (width * height).alias("area"),
        pl.when(height > 0).then(width / height).alias("aspect"),
    )
    stats = [
        getattr(pl.col(name), how)().alias(f"{how}_{name}")
        for name in ("width", "height", "area", "aspect")
        for how in ("mean", "median")
    ]
    return (
        sizes.group_by("phrase")
        .agg(pl.len().cast(pl.Int64).alias("n_alps"), *stats)
        .sort(["n_alps", "phrase"], descending=[True, False])
    )


def alps_with_embeddings(store: AlpStore) -> pl.LazyFrame:
    """The ALP table with its phrase's ``embedding`` column (``Array(Float32, D)``, unit rows).

    A left join on phrase_id: every ALP is kept, and the run guarantees each has an embedding.
    Filter before collecting: the embeddings of a whole run (D floats per ALP) are large.
    """
    embeddings = store.phrases.select("phrase_id", "embedding")
    return store.alps.join(embeddings, on="phrase_id", how="left", validate="m:1")


# ---------------------------------------------------------------------------------------------
# Nearest phrases in embedding space


def normalise_query(text: str) -> str:
    """The phrase tables' normalisation: lower case, words joined by single spaces."""
    normalised = " ".join(text.lower().split())
    if not normalised:
        raise ValueError("query text is empty; expected at least one word")
    return normalised


def encoder_spec(encoder_id: str) -> str:
    """The ``load_text_encoder`` spec that rebuilds the encoder with id ``encoder_id``.

    ``sentence-transformers:all-MiniLM-L6-v2`` -> ``minilm``; an open_clip id
    (``open_clip:<model>:<tag or checkpoint path>``) is its own spec.
    """
    from alp_curation.encoders import MINILM_ID

    return "minilm" if encoder_id == MINILM_ID else encoder_id


@functools.lru_cache(maxsize=2)
def _load_encoder(encoder_id: str) -> TextEncoder:
    """Encoder of a run, built once per process (its model loads on first use and stays)."""
    from alp_curation.encoders import EncoderUnavailable, load_text_encoder

    try:
        return load_text_encoder(encoder_spec(encoder_id))
    except (EncoderUnavailable, ValueError) as exc:
        raise EncoderUnavailable(
            f"the run's embeddings come from text encoder {encoder_id!r}, which cannot be built "
            f"here: {exc}. Build it yourself and pass it as encoder=."
        ) from exc


def _checked_encoder(store: AlpStore, encoder: TextEncoder | None) -> TextEncoder:
    if encoder is None:
        encoder = _load_encoder(store.encoder_id)
    if encoder.id != store.encoder_id:
        raise ValueError(
            f"encoder {encoder.id!r} cannot query this run: its phrase embeddings come from "
            f"{store.encoder_id!r}, and embeddings of different encoders are not comparable. "
            "Pass encoder=None to load the run's own encoder."
        )
    if encoder.dim != store.embedding_dim:
        raise ValueError(
            f"encoder {encoder.id!r} gives {encoder.dim}-d embeddings; the run's are "
            f"{store.embedding_dim}-d"
        )
    return encoder


def embed_query(store: AlpStore, query: str, encoder: TextEncoder | None = None) -> np.ndarray:
    """float32 (D,) unit prompt-ensemble embedding of ``query``, as the run embedded its phrases."""
    from alp_curation.prompts import ensemble_embeddings

    encoder = _checked_encoder(store, encoder)
    return ensemble_embeddings(encoder, [normalise_query(query)])[0]  # (D,)


def nearest_phrases(
    store: AlpStore, query: str, k: int = 10, encoder: TextEncoder | None = None
) -> pl.DataFrame:
    """The ``k`` phrases whose embeddings are nearest to ``query``'s (cosine similarity).

    The query is normalised and embedded with the prompt ensemble (ALP paper, Sec. 3.2) by the
    encoder the run was built with: ``encoder=None`` loads it from the manifest's id (cached per
    process); a passed encoder with another id raises ValueError naming both. Rows are unit
    length, so the cosine is a dot product; the phrase table is read one file at a time, so memory
    stays at one file's embeddings.

    Returns:
        rank (1..k), phrase, phrase_id, n_alps, cosine; highest cosine first, ties by phrase.
    """
    if k < 1:
        raise ValueError(f"nearest_phrases: k must be >= 1, got {k}")
    q = embed_query(store, query, encoder)  # (D,)
    best: list[pl.DataFrame] = []
    for path in store.phrase_files:
        table = pl.read_parquet(path, columns=["phrase", "phrase_id", "n_alps", "embedding"])
        if table.height == 0:
            continue
        matrix = table["embedding"].to_numpy()  # (P, D) float32
        scores = matrix @ q  # (P,)
        keep = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
        best.append(
            table.drop("embedding")[keep].with_columns(
                cosine=pl.Series(scores[keep], dtype=pl.Float32)
            )
        )
    if not best:
        return pl.DataFrame(
            schema={
                "rank": pl.UInt32,
                "phrase": pl.String,
                "phrase_id": pl.Int64,
                "n_alps": pl.Int64,
                "cosine": pl.Float32,
            }
        )
    top = pl.concat(best).sort(["cosine", "phrase"], descending=[True, False]).head(k)
    return top.with_row_index("rank", offset=1)


def alps_near_text(
    store: AlpStore, query: str, k: int = 10, encoder: TextEncoder | None = None
) -> pl.LazyFrame:
    """The ALPs whose phrase is among the ``k`` nearest to ``query`` (see ``nearest_phrases``).

    Adds ``cosine`` (the phrase's similarity to the query) and sorts by it, highest first, then
    by table order. The phrase filter is pushed into the Parquet scan.
    """
    nearest = nearest_phrases(store, query, k, encoder).select("phrase_id", "cosine")
    return (
        store.alps.filter(pl.col("phrase_id").is_in(nearest["phrase_id"].implode()))
        .join(nearest.lazy(), on="phrase_id", how="left", maintain_order="left")
        .sort("cosine", descending=True, maintain_order=True)
    )
