"""Torch iterable datasets over WebDataset shards: curated ALPs and COCO instances.

    from alp_dataset.datasets import AlpShardDataset, CocoShardDataset
    from alp_dataset.transforms import TrainTransform

    alps = AlpShardDataset("out/shards/shard-{000000..000099}.tar",
                           transform=TrainTransform(size=1024), seed=0, epoch_length=100_000)
    coco = CocoShardDataset("coco/shards/shard-{000000..000117}.tar",
                            transform=TrainTransform(size=1024), seed=0)
    image, target = next(iter(coco))

Both yield ``(image, target)``: the image a uint8 (3, H, W) tensor, RGB, 0-255 (a quarter of
float32's bytes between loader workers and the model; the model divides by 255 and
normalises), and a target dict, N = instances:

=================== ==========================================================================
``boxes_xyxy_px``   float32 (N, 4), pixels of the output image
``masks``           bool (N, H, W) for COCO (all-False rows where ``has_mask`` is False);
                    None for ALPs
``is_alp``          bool (N,): True for ALP boxes, which must not train box regression
``has_mask``        bool (N,): the mask row is a real mask
``source``          tuple of N strings: "mask", "box" (COCO) or "alp"
``phrase_ids``      int64 (N,): ``alp_dataset.schema.phrase_id`` of the phrase, or of the COCO
                    class name (so the class "dog" and the ALP phrase "dog" share an id)
``phrases``         tuple of N strings: the ALP phrases, or the COCO class names
``text_embeddings`` float32 (N, D): the phrase embeddings of the shard (ALPs); for COCO the
                    rows of ``class_embeddings`` when given, else None
``key``             the sample key; ``image_hw``: (H, W) of the stored image
``geometry``        the `alp_dataset.transforms.Geometry` of the transform, None without one
=================== ==========================================================================

ALP targets add ``image_key`` (``dataset_id/image_id``); COCO targets add ``image_id``,
``category_ids``, ``annotation_ids`` (int64 (N,)) and, with ``keep_crowd``, ``iscrowd``. Open
Images shards (`alp_dataset.oid_shards`) read as COCO shards: ``image_id`` is then the ImageID
string, group-of instances are crowds, and ``image_labels`` holds the image's verified labels
(``{"positive", "negative"}``: tuples of LabelNames).

How shards reach workers (``R`` ranks, ``W`` DataLoader workers per rank):

- **Exact epochs** (``epoch_length=None``): each epoch every shard is read once. The shard list
  is permuted by (seed, epoch), dealt to ranks (``shards[rank::R]``), then to the rank's workers.
  The shard count must be a multiple of R (checked at construction), so ranks read equally many
  shards; workers of a rank may read unequal counts, or none, without harm. Ranks yield equal
  sample counts only when their shards hold equal counts: for DDP training prefer resampling.
- **Resampled epochs** (``epoch_length=L``): each worker draws shards with replacement from all
  shards, with a generator seeded by (seed, epoch, rank, worker), and the rank yields exactly L
  samples per epoch (its workers split L), whatever the shard count: no rank runs dry or waits
  for another. Needed when shards are fewer than ranks, or do not divide over them.

Rank and world size come from the arguments, else from ``torch.distributed`` when it is
initialised at construction, else (0, 1). ``set_epoch(e)`` before each epoch (or let
`alp_dataset.loader.MixedLoader` do it); the epoch lives in shared memory, so workers started
later (or persistent ones, at their next iteration) see it.

Randomness: every random draw is seeded by the arguments: shards by (seed, epoch[, rank,
worker]), the shuffle buffer by (seed, epoch, rank, worker), and each sample's transform by
(seed, epoch, sample key) in exact mode, so a sample gets the same augmentation in an epoch
whichever rank or worker reads it (by (seed, epoch, rank, worker, position) when resampling).

Bad data never stops an epoch (``on_error="warn"``, the default): a shard that cannot be opened
or read to its end (garbage, truncated) is skipped from that point, the samples read before the
damage kept; a corrupt header in the middle of a shard is skipped to the next valid header, so
the samples after it are read too (`read_shards`); a sample that cannot be decoded, or that
lost a member to the damage, is skipped. Each is a `CorruptDataWarning` and a count in
``dataset.error_counts()``. The counts live in shared memory
written by every worker of this process's loaders (one slot per worker), so the training
process reads them without any message passing; they count events (a bad shard drawn twice when
resampling counts twice) for this rank only. ``on_error="raise"`` raises instead.

Stages are plain iterator -> iterator functions (`read_shards`, `shuffle_samples`,
`map_samples`, `exact_shards`, `resampled_shards`), testable on lists.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from alp_dataset.coco_shards import SAMPLE_INSTANCES, SOURCE_BOX, SOURCE_MASK, decode_masks
from alp_dataset.rle_masks import RleMasks
from alp_dataset.schema import (
    IMAGE_EXTENSIONS,
    MANIFEST_NAME,
    SAMPLE_EMBEDDINGS,
    SAMPLE_JSON,
    SHARDS_DIR,
    phrase_id,
)
from alp_dataset.tar_members import shard_stream, tar_members
from alp_dataset.transforms import GEOMETRY, INSTANCES, EvalTransform, Instances, TrainTransform

__all__ = [
    "SOURCE_ALP",
    "SOURCE_BOX",
    "SOURCE_MASK",
    "AlpShardDataset",
    "CocoShardDataset",
    "CorruptDataWarning",
    "WorkerSlot",
    "decode_image",
    "exact_shards",
    "map_samples",
    "output_shards",
    "read_shards",
    "resampled_shards",
    "shard_urls",
    "shuffle_samples",
    "worker_quota",
]

SOURCE_ALP = "alp"
# Before the transform, a target holds an `Instances` whose only field is INDEX, and the
# per-instance values under INSTANCE_FIELDS (a transform passes unknown keys through).
INDEX = "index"
INSTANCE_FIELDS = "instance_fields"
MAX_WORKERS = 255  # DataLoader workers per process whose error counts are kept apart
# A resampling worker that draws this many shards per shard in the list without producing a
# sample gives up: every shard is empty, unreadable or undecodable (P < e^-50 otherwise when
# at least one shard holds a good sample).
DRAWS_PER_SHARD_WITHOUT_SAMPLE = 50

RawSample = dict[str, Any]  # {"__key__": str, "__url__": str, extension: bytes, ...}
Sample = tuple[torch.Tensor, dict[str, Any]]
ErrorHandler = Callable[[str, str, BaseException], None]  # (kind, where, exception)


class CorruptDataWarning(UserWarning):
    """A shard or sample was skipped because it could not be read or decoded."""


def _seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts, the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------
# Which shards a worker reads


@dataclass(frozen=True)
class WorkerSlot:
    """A DataLoader worker of a rank: ``worker`` of ``num_workers`` (0 of 1 without workers)."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.rank < self.world_size and 0 <= self.worker < self.num_workers):
            raise ValueError(f"invalid worker slot {self}")


def exact_shards(urls: Sequence[str], *, seed: int, epoch: int, slot: WorkerSlot) -> list[str]:
    """The shards one worker reads in an exact epoch: a (seed, epoch) permutation of ``urls``,
    dealt to ranks, then to the rank's workers. Every shard goes to exactly one worker."""
    order = list(urls)
    random.Random(_seed(seed, epoch, "shards")).shuffle(order)
    return order[slot.rank :: slot.world_size][slot.worker :: slot.num_workers]


def resampled_shards(
    urls: Sequence[str], *, seed: int, epoch: int, slot: WorkerSlot
) -> Iterator[str]:
    """Endless shards drawn with replacement, seeded by (seed, epoch, rank, worker)."""
    if not urls:
        raise ValueError("resampled_shards: no shards")
    rng = random.Random(_seed(seed, epoch, slot.rank, slot.worker, "resample"))
    while True:
        yield urls[rng.randrange(len(urls))]


def worker_quota(epoch_length: int, slot: WorkerSlot) -> int:
    """Samples this worker yields per epoch: the rank's ``epoch_length`` split over its workers."""
    base, extra = divmod(epoch_length, slot.num_workers)
    return base + (slot.worker < extra)


# ---------------------------------------------------------------------------------------------
# Stages


def read_shards(
    urls: Iterable[str],
    *,
    on_error: ErrorHandler,
    open_url: Callable[[str], Any] = gopen,
) -> Iterator[RawSample]:
    """Tar shards -> raw samples ``{"__key__", "__url__", ext: bytes}``, members grouped by key.

    Every damage is reported to ``on_error("shard", url, exc)``: a shard that fails to open; a
    corrupt header in the middle (reading resumes at the next valid header, `tar_members`); a
    shard cut short, inside a member or between two (no end-of-archive marker); a compressed
    shard whose stream breaks. Every member read whole is kept, and grouped by key as if the
    damage were not there: a sample that lost a member to it is yielded without, and decoding
    rejects it (a bad sample), so every sample is either read or counted.
    """
    for url in urls:
        try:
            stream = open_url(url)
        except Exception as exc:
            on_error("shard", url, exc)
            continue
        try:
            pending: RawSample | None = None
            damage = functools.partial(on_error, "shard", url)
            for name, data in tar_members(shard_stream(stream, url), on_damage=damage):
                key, ext = base_plus_ext(name)
                if key is None:
                    continue
                if pending is not None and pending["__key__"] != key:
                    yield pending  # complete: members of a sample are consecutive
                    pending = None
                if pending is None:
                    pending = {"__key__": key, "__url__": url}
                pending[ext.lower()] = data
            if pending is not None:
                yield pending
        except Exception as exc:
            on_error("shard", url, exc)
        finally:
            stream.close()


def shuffle_samples(
    samples: Iterable[RawSample], *, buffer_size: int, rng: random.Random
) -> Iterator[RawSample]:
    """Shuffle through a buffer of ``buffer_size`` samples (0 or 1: keep the order)."""
    if buffer_size <= 1:
        yield from samples
        return
    buffer: list[RawSample] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= buffer_size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def map_samples(
    samples: Iterable[RawSample], fn: Callable[[RawSample], Sample], *, on_error: ErrorHandler
) -> Iterator[Sample]:
    """``fn`` of each sample; a sample ``fn`` raises on goes to ``on_error("sample", key, exc)``."""
    for raw in samples:
        try:
            out = fn(raw)
        except Exception as exc:
            on_error("sample", f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}", exc)
            continue
        yield out


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_image(data: bytes) -> torch.Tensor:
    """Image file bytes -> uint8 (3, H, W) RGB. EXIF orientation is not applied (COCO's boxes
    and LocNar's traces refer to the stored pixels)."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = np.array(image if image.mode == "RGB" else image.convert("RGB"))  # (H, W, 3)
    return torch.from_numpy(rgb).permute(2, 0, 1)  # (3, H, W)


def _image_member(raw: RawSample) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if ext in raw:
            return raw[ext]
    raise KeyError(f"sample has no image member ({', '.join(IMAGE_EXTENSIONS)})")


def _json_member(raw: RawSample, name: str) -> dict[str, Any]:
    if name not in raw:
        raise KeyError(f"sample has no {name} member")
    doc = json.loads(raw[name])
    if not isinstance(doc, dict):
        raise ValueError(f"{name}: expected a JSON object")
    return doc


def decode_alp_sample(raw: RawSample) -> tuple[torch.Tensor, dict[str, Any]]:
    """An ALP shard sample -> image, target with ``"instances"`` (before any transform)."""
    # Naming convention: N = ALPs of the image, D = embedding width.
    doc = _json_member(raw, SAMPLE_JSON)
    alps = doc["alps"]
    if SAMPLE_EMBEDDINGS not in raw:
        raise KeyError(f"sample has no {SAMPLE_EMBEDDINGS} member")
    embeddings = np.load(io.BytesIO(raw[SAMPLE_EMBEDDINGS]), allow_pickle=False)
    n, dim = len(alps), int(doc["embedding_dim"])
    if embeddings.shape != (n, dim):
        raise ValueError(f"embeddings are {embeddings.shape}, expected ({n}, {dim})")
    image = decode_image(_image_member(raw))
    h, w = image.shape[-2:]
    boxes_norm = np.asarray([a["box_xyxy_norm"] for a in alps], dtype=np.float32).reshape(n, 4)
    boxes = torch.from_numpy(boxes_norm * np.asarray([w, h, w, h], dtype=np.float32))  # (N, 4)
    fields = {
        "source": (SOURCE_ALP,) * n,
        "has_mask": torch.zeros(n, dtype=torch.bool),
        "phrase_ids": torch.tensor([int(a["phrase_id"]) for a in alps], dtype=torch.int64),
        "phrases": tuple(str(a["phrase"]) for a in alps),
        "text_embeddings": torch.from_numpy(embeddings.astype(np.float32, copy=False)),
    }
    target = {
        **_instances(boxes, None, torch.ones(n, dtype=torch.bool), fields),
        "key": raw["__key__"],
        "image_key": str(doc["image_key"]),
        "image_hw": (h, w),
    }
    return image, target


def decode_coco_sample(
    raw: RawSample,
    *,
    keep_crowd: bool = False,
    class_embeddings: Mapping[str, np.ndarray] | None = None,
    lazy_masks: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A COCO shard sample -> image, target with ``"instances"`` (before any transform).

    The masks are a bool (N, H, W) tensor, or with ``lazy_masks`` an `RleMasks` (checked, not
    decoded) that `apply_geometry` decodes for the instances its crop keeps, window only.
    """
    # Naming convention: N = kept instances, H, W = stored image size, D = embedding width.
    doc = _json_member(raw, SAMPLE_INSTANCES)
    instances = [i for i in doc["instances"] if keep_crowd or not i["iscrowd"]]
    image = decode_image(_image_member(raw))
    h, w = image.shape[-2:]
    if (h, w) != (doc["height"], doc["width"]):
        raise ValueError(
            f"image is {w} x {h}, instances.json says {doc['width']} x {doc['height']}"
        )
    n = len(instances)
    rles = [i["rle"] if i["has_mask"] else None for i in instances]
    masks: torch.Tensor | RleMasks = (
        RleMasks.from_rles(rles, h, w)
        if lazy_masks
        else torch.from_numpy(decode_masks(rles, h, w))  # (N, H, W) bool
    )
    names = tuple(str(i["class_name"]) for i in instances)
    fields: dict[str, Any] = {
        "source": tuple(str(i["source"]) for i in instances),
        "has_mask": torch.tensor([bool(i["has_mask"]) for i in instances], dtype=torch.bool),
        "phrase_ids": torch.tensor([phrase_id(c) for c in names], dtype=torch.int64),
        "phrases": names,
        "category_ids": torch.tensor([int(i["category_id"]) for i in instances], dtype=torch.int64),
        "annotation_ids": torch.tensor(
            [int(i["annotation_id"]) for i in instances], dtype=torch.int64
        ),
    }
    if keep_crowd:
        fields["iscrowd"] = torch.tensor([bool(i["iscrowd"]) for i in instances], dtype=torch.bool)
    if class_embeddings is not None:
        rows = [np.asarray(class_embeddings[c], dtype=np.float32) for c in names]
        dim = next(iter(class_embeddings.values())).shape[-1] if class_embeddings else 0
        fields["text_embeddings"] = torch.from_numpy(
            np.stack(rows) if rows else np.zeros((0, dim), np.float32)
        )  # (N, D)
    boxes = np.asarray([i["box_xyxy_px"] for i in instances], dtype=np.float32).reshape(n, 4)
    target = {
        **_instances(torch.from_numpy(boxes), masks, torch.zeros(n, dtype=torch.bool), fields),
        "key": raw["__key__"],
        # COCO's ids are ints; Open Images shards (alp_dataset.oid_shards) hold ImageID strings
        # and the image's verified labels.
        "image_id": doc["image_id"] if isinstance(doc["image_id"], str) else int(doc["image_id"]),
        "image_hw": (h, w),
    }
    if "image_labels" in doc:
        labels = doc["image_labels"]
        target["image_labels"] = {
            "positive": tuple(labels["positive"]),
            "negative": tuple(labels["negative"]),
        }
    return image, target


def _instances(
    boxes: torch.Tensor, masks: torch.Tensor | None, is_alp: torch.Tensor, fields: dict[str, Any]
) -> dict[str, Any]:
    """Target entries for N instances: an `Instances` holding only their indices as a field,
    and the other per-instance values beside it, gathered by `flatten_target` after the
    transform (one index instead of every field through each crop filter)."""
    index = torch.arange(len(boxes))
    return {
        INSTANCES: Instances(boxes, masks=masks, is_alp=is_alp, fields={INDEX: index}),
        INSTANCE_FIELDS: fields,
    }


def _take(value: Any, keep: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[keep]
    return tuple(value[i] for i in keep.tolist())


def flatten_target(target: Mapping[str, Any]) -> dict[str, Any]:
    """The target dict the datasets yield: the `Instances` spread into named entries, with the
    per-instance values of the instances the transform kept."""
    out = dict(target)
    instances: Instances = out.pop(INSTANCES)
    fields: Mapping[str, Any] = out.pop(INSTANCE_FIELDS, {})
    out["boxes_xyxy_px"] = instances.boxes_xyxy_px
    masks = instances.masks
    out["masks"] = masks.decode() if isinstance(masks, RleMasks) else masks
    out["is_alp"] = instances.alp()
    keep = instances.fields[INDEX]
    out.update((name, _take(value, keep)) for name, value in fields.items())
    out.setdefault("text_embeddings", None)
    out.setdefault(GEOMETRY, None)
    return out


# ---------------------------------------------------------------------------------------------
# Errors shared between loader workers


class ErrorCounts:
    """Bad shards and bad samples seen by this process and its DataLoader workers.

    A shared-memory array with one row per worker (row 0: the process itself), so each worker
    writes only its own row and no lock is needed; it reaches workers started by fork or spawn.
    """

    KINDS = ("shard", "sample")

    def __init__(self) -> None:
        self._counts = multiprocessing.RawArray("q", (MAX_WORKERS + 1) * len(self.KINDS))

    def add(self, kind: str) -> None:
        info = get_worker_info()
        row = 0 if info is None else 1 + info.id % MAX_WORKERS
        self._counts[row * len(self.KINDS) + self.KINDS.index(kind)] += 1

    def totals(self) -> dict[str, int]:
        counts = np.frombuffer(self._counts, dtype=np.int64).reshape(-1, len(self.KINDS))
        sums = counts.sum(axis=0)
        return {"bad_shards": int(sums[0]), "bad_samples": int(sums[1])}

    def reset(self) -> None:
        np.frombuffer(self._counts, dtype=np.int64)[:] = 0


class _NoSampleGuard:
    """Counts shard draws since the last sample; raises when resampling can never succeed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.draws = 0

    def watch(self, shards: Iterator[str]) -> Iterator[str]:
        for url in shards:
            self.draws += 1
            if self.draws > self.limit:
                raise RuntimeError(
                    f"{self.limit} shard draws without a single sample: every shard is empty, "
                    "unreadable or undecodable"
                )
            yield url

    def produced(self, samples: Iterator[Sample]) -> Iterator[Sample]:
        for sample in samples:
            self.draws = 0
            yield sample


def shard_urls(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Shard URLs: a local folder holding a pipeline output (its ``manifest.json`` lists the
    shards), else a string split at "::" and brace-expanded (webdataset's rules); a sequence is
    taken as it is."""
    if isinstance(urls, (str, os.PathLike)):
        folder = os.fspath(urls)
        if os.path.isdir(folder):
            return output_shards(folder)
        return list(expand_urls(folder))
    return [os.fspath(u) for u in urls]


def output_shards(folder: str | os.PathLike[str]) -> list[str]:
    """The shard files of a finished `pipelines/extract_alps.py` or `build_coco_shards.py` run:
    those its manifest lists, checked to exist."""
    path = os.path.join(os.fspath(folder), MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"{folder}: no {MANIFEST_NAME} (not a pipeline output folder, or its run did not "
            "finish)"
        )
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    listed = manifest.get("files", {}).get(SHARDS_DIR, [])
    urls = [os.path.join(os.fspath(folder), entry["path"]) for entry in listed]
    if not urls:
        raise ValueError(f"{path}: lists no shards")
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise ValueError(f"{path}: {len(missing)} listed shard(s) missing, e.g. {missing[0]}")
    return urls


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Shards -> (image, target) samples; the base of `AlpShardDataset` and `CocoShardDataset`.

    Args:
        urls: shard paths or URLs: a brace pattern ("shard-{000000..000009}.tar"), a list, or
            several patterns joined by "::"; anything webdataset's ``gopen`` opens.
        transform: `TrainTransform` (called with a seeded generator), `EvalTransform`, any
            callable ``(image, target, generator) -> (image, target)``, or None.
        seed: seeds every random draw (module doc).
        epoch_length: None for exact epochs; else samples per rank per epoch, resampled.
        rank, world_size: this process's place in distributed training (module doc).
        shuffle_buffer: samples shuffled through a buffer of this many raw (undecoded) samples.
        on_error: "warn" (skip, warn, count) or "raise".
    """

    def __init__(
        self,
        urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        transform: Callable[..., Sample] | None = None,
        seed: int = 0,
        epoch_length: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = 64,
        on_error: str = "warn",
    ) -> None:
        super().__init__()
        self.urls = shard_urls(urls)
        if not self.urls:
            raise ValueError(f"no shards in {urls!r}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1 or None, got {epoch_length}")
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world_size {self.world_size}")
        if epoch_length is None and len(self.urls) % self.world_size:
            raise ValueError(
                f"{len(self.urls)} shards do not divide over {self.world_size} ranks: exact "
                "epochs would give ranks unequal work; pass epoch_length (samples per rank and "
                "epoch) to resample shards"
            )
        self.transform = transform
        self.seed = seed
        self.epoch_length = epoch_length
        self.shuffle_buffer = shuffle_buffer
        self.on_error = on_error
        self._epoch = multiprocessing.RawValue("q", 0)
        self._errors = ErrorCounts()

    # -- state shared with workers

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch the next iteration reads (shard order, resampling, augmentation)."""
        self._epoch.value = epoch

    def error_counts(self) -> dict[str, int]:
        """``{"bad_shards": n, "bad_samples": m}`` seen so far by this rank (module doc)."""
        return self._errors.totals()

    def reset_error_counts(self) -> None:
        self._errors.reset()

    # -- per-sample work, defined by the subclasses

    def decode(self, raw: RawSample) -> Sample:
        raise NotImplementedError

    # -- iteration

    def _handle(self, kind: str, where: str, exc: BaseException) -> None:
        if self.on_error == "raise":
            raise exc
        self._errors.add(kind)
        warnings.warn(
            f"bad {kind} {where}: {type(exc).__name__}: {exc}",
            CorruptDataWarning,
            stacklevel=2,
        )

    def _slot(self) -> WorkerSlot:
        info = get_worker_info()
        worker, n = (0, 1) if info is None else (info.id, info.num_workers)
        return WorkerSlot(self.rank, self.world_size, worker, n)

    def _transform(self, generator_seed: int, raw: RawSample) -> Sample:
        image, target = self.decode(raw)
        if self.transform is not None:
            if isinstance(self.transform, EvalTransform):
                image, target = self.transform(image, target)
            else:
                generator = torch.Generator().manual_seed(generator_seed)
                image, target = self.transform(image, target, generator)
        return image, flatten_target(target)

    def __iter__(self) -> Iterator[Sample]:
        slot, epoch = self._slot(), self.epoch
        shuffle_rng = random.Random(_seed(self.seed, epoch, slot.rank, slot.worker, "buffer"))
        if self.epoch_length is None:
            shards: Iterator[str] = iter(
                exact_shards(self.urls, seed=self.seed, epoch=epoch, slot=slot)
            )
            raw = shuffle_samples(
                read_shards(shards, on_error=self._handle),
                buffer_size=self.shuffle_buffer,
                rng=shuffle_rng,
            )
            yield from map_samples(
                raw,
                lambda r: self._transform(_seed(self.seed, epoch, r["__key__"]), r),
                on_error=self._handle,
            )
            return
        guard = _NoSampleGuard(DRAWS_PER_SHARD_WITHOUT_SAMPLE * len(self.urls))
        shards = guard.watch(resampled_shards(self.urls, seed=self.seed, epoch=epoch, slot=slot))
        raw = shuffle_samples(
            read_shards(shards, on_error=self._handle),
            buffer_size=self.shuffle_buffer,
            rng=shuffle_rng,
        )
        position = itertools.count()
        samples = map_samples(
            raw,
            lambda r: self._transform(
                _seed(self.seed, epoch, slot.rank, slot.worker, next(position)), r
            ),
            on_error=self._handle,
        )
        yield from itertools.islice(guard.produced(samples), worker_quota(self.epoch_length, slot))


class AlpShardDataset(ShardDataset):
    """Samples of the ALP shards of `pipelines/extract_alps.py` (built with ``--images``).

    Every instance is an ALP: box from ``box_xyxy_norm`` times the image size, ``is_alp`` True,
    no mask, the phrase embedding of ``embeddings.npy``. Arguments: `ShardDataset`.
    """

    def decode(self, raw: RawSample) -> Sample:
        return decode_alp_sample(raw)


class CocoShardDataset(ShardDataset):
    """Samples of the COCO shards of `pipelines/build_coco_shards.py`.

    Masks are decoded for ``has_mask`` instances (all-False rows for box-only ones); with a
    `TrainTransform` only those of the instances its crop keeps, and only the pixels its window
    reads (a `TrainTransform` subclass gets `RleMasks` in its input target). Crowd
    instances are left out unless ``keep_crowd``. ``class_embeddings`` (class name -> (D,)
    array, e.g. prompt-ensemble embeddings of the class names) fills ``text_embeddings``.
    Other arguments: `ShardDataset`.
    """

    def __init__(
        self,
        urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        keep_crowd: bool = False,
        class_embeddings: Mapping[str, np.ndarray] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(urls, **kwargs)
        self.keep_crowd = keep_crowd
        self.class_embeddings = None if class_embeddings is None else dict(class_embeddings)

    def decode(self, raw: RawSample) -> Sample:
        return decode_coco_sample(
            raw,
            keep_crowd=self.keep_crowd,
            class_embeddings=self.class_embeddings,
            lazy_masks=isinstance(self.transform, TrainTransform),
        )
