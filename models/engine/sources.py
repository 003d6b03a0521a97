"""Training data: each ``--shards`` value resolved to a source, and its resampling dataset.

    sources = [describe_source(spec) for spec in train_cfg.shards]
    encoder_id = resolve_text_encoder(sources, text_dim, train_cfg.text_encoder)
    datasets = build_datasets(sources, train_cfg, encoder_id=encoder_id, text_dim=512,
                              rank=0, world_size=1)

Each ``--shards`` is an output folder of `pipelines/extract_alps.py` (ALPs; built with
``--images``) or of `pipelines/build_coco_shards.py` (COCO instances) or
`pipelines/build_oid_shards.py` (Open Images instances, read as COCO ones), told apart by their
manifest.json, or a brace pattern of such .tar shards (its manifest is looked for two folders
up; without one the first sample says which kind it is). ALP samples carry their phrase
embeddings; COCO samples get the prompt-ensemble embedding of their class name from the text
encoder the ALP output was made with (``manifest["encoder"]["id"]``) or ``--text-encoder``,
which must agree with it. Every source is read in resampled epochs of ``--epoch-length``
samples per rank, so no rank of a DDP run waits for another.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from webdataset.gopen import gopen

from alp_curation.encoders import MINILM_ID, EncoderUnavailable, load_text_encoder
from alp_curation.prompts import ensemble_embeddings
from alp_dataset.class_splits import get_coco_split
from alp_dataset.coco_shards import COCO_SHARDS_FORMAT, SAMPLE_INSTANCES
from alp_dataset.datasets import (
    AlpShardDataset,
    CocoShardDataset,
    ShardDataset,
    output_shards,
    shard_urls,
)
from alp_dataset.oid_shards import OID_SHARDS_FORMAT
from alp_dataset.schema import MANIFEST_NAME, SAMPLE_JSON
from alp_dataset.tar_members import shard_stream, tar_members
from alp_dataset.transforms import TrainTransform
from models.config import TrainConfig
from models.engine import TrainError

__all__ = [
    "Source",
    "build_datasets",
    "canonical_encoder_id",
    "class_embeddings",
    "describe_source",
    "resolve_text_encoder",
]


@dataclass(frozen=True)
class Source:
    """One ``--shards`` value, resolved: its kind, shard URLs and what its manifest says."""

    name: str  # "alp" or "coco" (a digit added when both sources are of one kind)
    kind: str  # "alp" | "coco"
    spec: str  # the --shards value
    urls: tuple[str, ...]
    samples: int | None = None  # samples with an image, from the manifest
    encoder_id: str | None = None  # ALP: encoder of the phrase embeddings
    embedding_dim: int | None = None  # ALP: width of the phrase embeddings
    class_names: tuple[str, ...] = ()  # COCO: classes of the instances, from the manifest


def canonical_encoder_id(spec: str) -> str:
    """The ``id`` the encoder a spec names reports ("minilm" -> MiniLM's full id)."""
    return MINILM_ID if spec in ("minilm", MINILM_ID) else spec


def _peek(url: str, spec: str) -> tuple[str, dict[str, Any]]:
    """(kind, JSON document) of the first sample of a shard, read past damaged headers as the
    datasets read shards (`alp_dataset.tar_members`); the damage seen is named when no sample
    is found."""
    damage: list[str] = []
    try:
        with gopen(url) as raw:
            stream = shard_stream(raw, url)
            for name, data in tar_members(stream, on_damage=lambda d: damage.append(str(d))):
                for kind, member in (("alp", SAMPLE_JSON), ("coco", SAMPLE_INSTANCES)):
                    if name.endswith("." + member):
                        return kind, json.loads(data)
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise TrainError(f"--shards {spec}: cannot read {url}: {exc}") from exc
    seen = f" (the shard {'; '.join(damage)})" if damage else ""
    raise TrainError(
        f"--shards {spec}: {url} holds no {SAMPLE_JSON} (ALP) or {SAMPLE_INSTANCES} (COCO) "
        f"sample{seen}"
    )


def _from_manifest(spec: str, manifest: Mapping[str, Any], urls: Sequence[str]) -> Source:
    if manifest.get("format") in (COCO_SHARDS_FORMAT, OID_SHARDS_FORMAT):
        classes = manifest.get("classes", {})
        names = sorted({*classes.get("mask", ()), *classes.get("box_only", ())})
        samples = manifest["counts"]["images"]["samples"]
        return Source("coco", "coco", spec, tuple(urls), samples, class_names=tuple(names))
    if "encoder" not in manifest:
        raise TrainError(
            f"--shards {spec}: {MANIFEST_NAME} is neither an ALP output's (no 'encoder') nor a "
            f"COCO shards output's (format {COCO_SHARDS_FORMAT!r})"
        )
    found = manifest["counts"]["shards"].get("image_files_found", 0)
    if not manifest.get("options", {}).get("images") or found == 0:
        raise TrainError(
            f"--shards {spec}: the ALP shards hold no images (run pipelines/extract_alps.py "
            "with --images ROOT to add them)"
        )
    encoder = manifest["encoder"]
    return Source("alp", "alp", spec, tuple(urls), found, str(encoder["id"]), int(encoder["dim"]))


def describe_source(spec: str) -> Source:
    """Resolve a ``--shards`` value: a pipeline output folder, or a pattern of its shards."""
    folder = Path(spec)
    if folder.is_dir():
        try:
            urls = output_shards(folder)
        except ValueError as exc:
            raise TrainError(
                f"--shards {spec}: {exc} (expected an output of pipelines/extract_alps.py or "
                "build_coco_shards.py)"
            ) from exc
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        return _from_manifest(spec, manifest, urls)
    try:
        urls = shard_urls(spec)
    except ValueError as exc:
        raise TrainError(f"--shards {spec}: not a folder, nor a shard pattern ({exc})") from exc
    local = "://" not in spec and not spec.startswith("pipe:")
    if not urls or (local and not all(Path(u).is_file() for u in urls)):
        raise TrainError(f"--shards {spec}: no such folder, nor shard files matching it")
    manifest_path = Path(urls[0]).parent.parent / MANIFEST_NAME
    if local and manifest_path.is_file():
        return _from_manifest(spec, json.loads(manifest_path.read_text(encoding="utf-8")), urls)
    kind, doc = _peek(urls[0], spec)
    dim = int(doc["embedding_dim"]) if kind == "alp" else None
    return Source(kind, kind, spec, tuple(urls), embedding_dim=dim)


def resolve_text_encoder(sources: Sequence[Source], text_dim: int, text_encoder: str) -> str:
    """The id of the encoder of every phrase embedding of the run (``text_encoder``: the
    ``--text-encoder`` flag, '' when not given); TrainError on disagreement."""
    for s in sources:
        if s.embedding_dim is not None and s.embedding_dim != text_dim:
            raise TrainError(
                f"--shards {s.spec}: the phrase embeddings are {s.embedding_dim}-d, but "
                f"--text-dim is {text_dim}"
            )
    alp_ids = {canonical_encoder_id(s.encoder_id): s for s in sources if s.encoder_id}
    if len(alp_ids) > 1:
        raise TrainError(
            "--shards: the ALP outputs were embedded with different encoders: "
            + ", ".join(f"{s.spec} ({i})" for i, s in alp_ids.items())
        )
    flag = canonical_encoder_id(text_encoder) if text_encoder else None
    if flag and alp_ids and flag not in alp_ids:
        ((alp_id, source),) = alp_ids.items()
        raise TrainError(
            f"--text-encoder {text_encoder} disagrees with the encoder of the ALP "
            f"output {source.spec} ({alp_id}); class names and phrases must share one encoder"
        )
    encoder_id = flag or next(iter(alp_ids), None)
    if encoder_id is None:
        raise TrainError(
            "--text-encoder: no ALP output's manifest names the phrase encoder; give it "
            "(e.g. --text-encoder minilm)"
        )
    return encoder_id


_EMBEDDING_CACHE: dict[tuple[str, tuple[str, ...]], dict[str, np.ndarray]] = {}


def class_embeddings(encoder_id: str, names: Sequence[str], text_dim: int) -> dict[str, np.ndarray]:
    """Prompt-ensemble embedding (D,) of each class name (cached for the process)."""
    key = (encoder_id, tuple(sorted(set(names))))
    if key not in _EMBEDDING_CACHE:
        try:
            encoder = load_text_encoder(encoder_id)
        except (EncoderUnavailable, ValueError) as exc:
            raise TrainError(f"--text-encoder {encoder_id}: {exc}") from exc
        if encoder.dim != text_dim:
            raise TrainError(
                f"--text-encoder {encoder_id} gives {encoder.dim}-d embeddings, but --text-dim "
                f"is {text_dim}"
            )
        rows = ensemble_embeddings(encoder, list(key[1]))  # (C, D)
        _EMBEDDING_CACHE[key] = dict(zip(key[1], rows, strict=True))
    return _EMBEDDING_CACHE[key]


def _coco_names(source: Source, train_cfg: TrainConfig) -> tuple[str, ...]:
    if source.class_names:
        return source.class_names
    if train_cfg.class_names:
        return train_cfg.class_names
    if train_cfg.class_split:
        return get_coco_split(train_cfg.class_split).classes
    raise TrainError(
        f"--shards {source.spec}: COCO shards without a manifest; name their classes with "
        "--class-names or --class-split"
    )


def build_datasets(
    sources: Sequence[Source],
    train_cfg: TrainConfig,
    *,
    encoder_id: str,
    text_dim: int,
    rank: int,
    world_size: int,
) -> list[ShardDataset]:
    """One resampling dataset per source, with the LSJ transform of the config."""
    transform = TrainTransform(
        size=train_cfg.image_size,
        scale_range=train_cfg.scale_range,
        flip_prob=train_cfg.flip_prob,
        **({} if train_cfg.quantize else {"quantize": (None,)}),
    )
    datasets: list[ShardDataset] = []
    for i, source in enumerate(sources):
        length = train_cfg.epoch_length
        if not length:
            if not source.samples:
                raise TrainError(
                    f"--epoch-length: needed for --shards {source.spec} (no manifest counts its "
                    "samples)"
                )
            length = math.ceil(source.samples / world_size)
        common = {
            "transform": transform,
            "seed": train_cfg.seed + i,
            "epoch_length": length,
            "rank": rank,
            "world_size": world_size,
            "shuffle_buffer": train_cfg.shuffle_buffer,
        }
        if source.kind == "alp":
            datasets.append(AlpShardDataset(list(source.urls), **common))
        else:
            embeddings = class_embeddings(encoder_id, _coco_names(source, train_cfg), text_dim)
            datasets.append(
                CocoShardDataset(list(source.urls), class_embeddings=embeddings, **common)
            )
    return datasets
