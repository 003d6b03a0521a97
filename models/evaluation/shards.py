"""What `models.evaluate` checks about its shards before it loads a model: that the files exist,
that they are evaluation shards (COCO or Open Images, not ALP shards), and how many images they
hold when their manifests say so (the progress bar's total).

    shards = inspect_eval_shards(urls)   # ShardsError naming the path when they cannot serve
    shards.num_images                     # None when some shard is not listed in a manifest

A shard's manifest is the ``manifest.json`` two folders above it (``out/shards/shard-*.tar``,
the layout of every pipeline of this project: `alp_dataset.schema`). Shards without a manifest
(remote URLs, copied files) are told apart by their members: an ALP sample has
``<key>.alps.json`` (`alp_dataset.schema.SAMPLE_JSON`), a COCO or Open Images one
``<key>.instances.json`` (`alp_dataset.coco_shards.SAMPLE_INSTANCES`).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alp_dataset.coco_shards import COCO_SHARDS_FORMAT, SAMPLE_INSTANCES
from alp_dataset.oid_shards import OID_SHARDS_FORMAT
from alp_dataset.schema import MANIFEST_NAME, SAMPLE_JSON

__all__ = ["ALP_SHARDS_MESSAGE", "EvalShards", "ShardsError", "inspect_eval_shards"]

ALP_SHARDS_MESSAGE = (
    "these are ALP shards from pipelines/extract_alps.py; evaluate needs COCO or Open Images "
    "shards from pipelines/build_coco_shards.py / build_oid_shards.py"
)
PEEK_MEMBERS = 8  # members read from the first shard to tell its kind without a manifest


class ShardsError(ValueError):
    """Shards that cannot be evaluated; the message names the path and what to give instead."""


@dataclass(frozen=True)
class EvalShards:
    """What the manifests (or the first shard's members) say about evaluation shards.

    Attributes:
        kind: "coco", "oid" or "unknown" (no manifest, no member that tells).
        num_images: samples in all the shards, when a manifest lists every one of them.
    """

    kind: str
    num_images: int | None


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _manifest_of(shard: str, cache: dict[Path, dict[str, Any] | None]) -> dict[str, Any] | None:
    folder = Path(shard).resolve().parent.parent
    if folder not in cache:
        path = folder / MANIFEST_NAME
        try:
            cache[folder] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            cache[folder] = None
        except (OSError, ValueError) as exc:
            raise ShardsError(f"{path}: not a readable manifest: {exc}") from None
    return cache[folder]


def _manifest_kind(manifest: dict[str, Any]) -> str:
    fmt = manifest.get("format")
    if fmt == COCO_SHARDS_FORMAT:
        return "coco"
    if fmt == OID_SHARDS_FORMAT:
        return "oid"
    if fmt is None and "tagger" in manifest and "encoder" in manifest:
        return "alp"  # extract_alps.py's manifest (alp_dataset.schema.MANIFEST_KEYS)
    return "unknown"


def _member_kind(shard: str) -> str:
    try:
        with tarfile.open(shard, mode="r:*") as tar:
            for n, member in enumerate(tar):
                if member.name.endswith("." + SAMPLE_JSON):
                    return "alp"
                if member.name.endswith("." + SAMPLE_INSTANCES):
                    return "coco"
                if n + 1 >= PEEK_MEMBERS:
                    break
    except (OSError, tarfile.TarError):
        return "unknown"  # a damaged shard: the dataset skips it and counts it (on_error)
    return "unknown"


def inspect_eval_shards(urls: Sequence[str], where: str = "shards") -> EvalShards:
    """Check evaluation shards before a model is loaded; ShardsError naming the path when no
    shard file exists, some are missing, they hold no image, or they are ALP shards."""
    if not urls:
        raise ShardsError(f"{where}: no shard files")
    local = [u for u in urls if _is_local(u)]
    missing = [u for u in local if not os.path.isfile(u)]
    if missing and len(missing) == len(urls):
        raise ShardsError(
            f"{where}: no shard file matches {missing[0]}"
            + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if missing:
        raise ShardsError(
            f"{where}: {len(missing)} of {len(urls)} shard files do not exist, e.g. {missing[0]}"
        )
    cache: dict[Path, dict[str, Any] | None] = {}
    kinds: set[str] = set()
    rows: dict[str, int] = {}
    known = bool(local) and len(local) == len(urls)
    for url in local:
        manifest = _manifest_of(url, cache)
        if manifest is None:
            known = False
            continue
        kind = _manifest_kind(manifest)
        if kind == "alp":
            raise ShardsError(f"{where} {url}: {ALP_SHARDS_MESSAGE}")
        kinds.add(kind)
        folder = Path(url).resolve().parent.parent
        for entry in manifest.get("files", {}).get("shards", []):
            rows[os.fspath(folder / entry["path"])] = int(entry.get("rows", -1))
    if local and not kinds:
        member_kind = _member_kind(local[0])
        if member_kind == "alp":
            raise ShardsError(f"{where} {local[0]}: {ALP_SHARDS_MESSAGE}")
        kinds.add(member_kind)
    counts = [rows.get(os.fspath(Path(u).resolve()), -1) for u in local]
    num_images = sum(counts) if known and all(c >= 0 for c in counts) else None
    if num_images == 0:
        raise ShardsError(
            f"{where} {local[0]}: the shards hold no image (their manifest lists 0 samples)"
        )
    kind = kinds.pop() if len(kinds) == 1 else "unknown"
    return EvalShards(kind=kind, num_images=num_images)
