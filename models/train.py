"""Train FCOS-MO on COCO masks and ALPs: ``python -m models.train --shards DIR [--shards DIR]``.

    python -m models.train --preset coco-voc --shards out/coco_voc --shards out/alps_coco \\
        --backbone-weights r50.pth --output-dir runs/voc
    torchrun --nproc-per-node 8 -m models.train --preset coco-voc ...     # DDP, one GPU a rank
    python -m models.train ... --resume auto                              # continue exactly

Data (`describe_source`). Each ``--shards`` is an output folder of `pipelines/extract_alps.py`
(ALPs; built with ``--images``) or of `pipelines/build_coco_shards.py` (COCO instances), told
apart by their manifest.json, or a brace pattern of such .tar shards (its manifest is looked for
two folders up; without one the first sample says which kind it is). ALP samples carry their
phrase embeddings; COCO samples get the prompt-ensemble embedding of their class name from the
text encoder the ALP output was made with (``manifest["encoder"]["id"]``) or ``--text-encoder``,
which must agree with it. Every source is read in resampled epochs of ``--epoch-length`` samples
per rank, so no rank of a DDP run waits for another; two sources alternate batches in
``--pattern`` (`alp_dataset.loader.MixedLoader`; the paper alternates, Sec. 3.3).

Optimisation (`models.schedule`): SGD, linear warm-up then cosine to zero at ``--steps``; AMP
with ``--amp`` (CUDA: fp16 + GradScaler; CPU: bf16 autocast); DDP under torchrun (NCCL on GPUs,
gloo on CPUs; BN layers become SyncBN on GPUs).

Output in ``--output-dir``: ``step_NNNNNNN.pt`` every ``--checkpoint-every`` steps and at the
end, ``last.pt`` (a copy of the latest), ``config.json`` (the resolved config) and
``metrics.jsonl`` (one line every ``--log-every`` steps: step, lr, each loss and the total,
seconds per step, samples/s, the batch's source, each source's epoch and bad-data counts).

Exact resume: a checkpoint holds the model, optimiser, scheduler, scaler, step, the random
generators and the position of the data stream (`DataStream.state_dict`). The datasets are
deterministic given (seed, epoch, rank, worker), so the stream is rebuilt at the epoch each
source was in at the start of the current pattern round, the batches that source had already
given in that epoch are skipped (read and dropped), and the batches of the round before the
checkpoint are drawn again and dropped. Steps after a resume see the same batches, and compute
the same losses and weights, as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from webdataset.gopen import gopen

from alp_curation.encoders import MINILM_ID, EncoderUnavailable, load_text_encoder
from alp_curation.prompts import ensemble_embeddings
from alp_dataset.class_splits import get_split
from alp_dataset.coco_shards import COCO_SHARDS_FORMAT, SAMPLE_INSTANCES
from alp_dataset.datasets import (
    AlpShardDataset,
    CocoShardDataset,
    ShardDataset,
    output_shards,
    shard_urls,
)
from alp_dataset.loader import MixedLoader, make_loader
from alp_dataset.schema import MANIFEST_NAME, SAMPLE_JSON
from alp_dataset.transforms import TrainTransform
from models.checkpoint import (
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    write_config_json,
)
from models.config import ModelConfig, TrainConfig, build_model, config_to_dict, resolve_config
from models.schedule import build_optimizer, build_scheduler

__all__ = ["DataStream", "Source", "TrainError", "describe_source", "main", "train"]

LAST = "last.pt"
METRICS = "metrics.jsonl"
MODEL_KEYS = ("boxes_xyxy_px", "masks", "has_mask", "is_alp", "phrase_ids", "text_embeddings")
# Train fields that may change between a run and its resumption without changing its course
# (init_from too: a resumed run takes its weights from the checkpoint).
RESUMABLE_CHANGES = {
    "resume", "init_from", "max_steps", "log_every", "checkpoint_every", "progress"
}  # fmt: skip


class TrainError(ValueError):
    """Bad input to a training run; the message names the flag."""


# ---------------------------------------------------------------------------------------------
# Sources


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
    """(kind, JSON document) of the first sample of a shard."""
    try:
        with gopen(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                for kind, member in (("alp", SAMPLE_JSON), ("coco", SAMPLE_INSTANCES)):
                    if info.isreg() and info.name.endswith("." + member):
                        data = tar.extractfile(info)
                        assert data is not None  # a regular file
                        return kind, json.loads(data.read())
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise TrainError(f"--shards {spec}: cannot read {url}: {exc}") from exc
    raise TrainError(
        f"--shards {spec}: {url} holds no {SAMPLE_JSON} (ALP) or {SAMPLE_INSTANCES} (COCO) sample"
    )


def _from_manifest(spec: str, manifest: Mapping[str, Any], urls: Sequence[str]) -> Source:
    if manifest.get("format") == COCO_SHARDS_FORMAT:
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


def resolve_text_encoder(
    sources: Sequence[Source], model_cfg: ModelConfig, train_cfg: TrainConfig
) -> str:
    """The id of the encoder of every phrase embedding of the run; TrainError on disagreement."""
    for s in sources:
        if s.embedding_dim is not None and s.embedding_dim != model_cfg.text_dim:
            raise TrainError(
                f"--shards {s.spec}: the phrase embeddings are {s.embedding_dim}-d, but "
                f"--text-dim is {model_cfg.text_dim}"
            )
    alp_ids = {canonical_encoder_id(s.encoder_id): s for s in sources if s.encoder_id}
    if len(alp_ids) > 1:
        raise TrainError(
            "--shards: the ALP outputs were embedded with different encoders: "
            + ", ".join(f"{s.spec} ({i})" for i, s in alp_ids.items())
        )
    flag = canonical_encoder_id(train_cfg.text_encoder) if train_cfg.text_encoder else None
    if flag and alp_ids and flag not in alp_ids:
        ((alp_id, source),) = alp_ids.items()
        raise TrainError(
            f"--text-encoder {train_cfg.text_encoder} disagrees with the encoder of the ALP "
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
        return get_split(train_cfg.class_split).classes
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


# ---------------------------------------------------------------------------------------------
# The stream of batches, resumable


class _SkipFirst:
    """A loader whose first iteration starts after ``skip`` batches (read and dropped)."""

    def __init__(self, loader: DataLoader[Any], skip: int) -> None:
        self.loader = loader
        self.dataset = loader.dataset  # MixedLoader sets epochs through it
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            if next(it, None) is None:
                break
        return it


class DataStream:
    """Batches, one per step, from one loader or two mixed by ``pattern``; resumable exactly.

    ``state_dict()`` is the position after the batches yielded so far: each source's epoch and
    the batches it had given in that epoch at the start of the current pattern round, and the
    batches drawn since. A stream built with that state yields what the original would have
    yielded next (module doc). Batches are ``(source name, (images, targets))``.
    """

    def __init__(
        self,
        loaders: Sequence[DataLoader[Any]],
        names: Sequence[str],
        *,
        pattern: tuple[int, int] = (1, 1),
        state: Mapping[str, Any] | None = None,
    ) -> None:
        if not 1 <= len(loaders) <= 2 or len(names) != len(loaders):
            raise ValueError("DataStream: one or two loaders, one name each")
        self.loaders, self.names, self.pattern = list(loaders), list(names), tuple(pattern)
        n = len(loaders)
        self.round_length = sum(pattern) if n == 2 else 1
        state = state or {"epochs": [0] * n, "offsets": [0] * n, "position": 0}
        if len(state["epochs"]) != n or not 0 <= state["position"] < self.round_length:
            raise ValueError(f"DataStream: state {dict(state)} does not fit {n} source(s)")
        self.epochs = [int(e) for e in state["epochs"]]
        self.offsets = [int(o) for o in state["offsets"]]
        self._replay = int(state["position"])
        self._epoch_of = list(self.epochs)  # each source's epoch as its loader sees it
        self._round_start = (list(self.epochs), list(self.offsets))
        self._position = 0

    def state_dict(self) -> dict[str, Any]:
        epochs, offsets = self._round_start
        return {"epochs": list(epochs), "offsets": list(offsets), "position": self._position}

    def _single(self, loader: _SkipFirst) -> Iterator[tuple[int, Any]]:
        empty_epochs = 0
        while True:
            produced = False
            for batch in loader:
                produced = True
                yield 0, batch
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs > 1:
                raise RuntimeError(f"source {self.names[0]!r} yielded no batch in a whole epoch")
            self._epoch_of[0] += 1
            loader.dataset.set_epoch(self._epoch_of[0])

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        for loader, epoch in zip(self.loaders, self.epochs, strict=True):
            loader.dataset.set_epoch(epoch)
        wrapped = [_SkipFirst(lo, off) for lo, off in zip(self.loaders, self.offsets, strict=True)]
        mixed: MixedLoader | None = None
        if len(wrapped) == 1:
            self._epoch_of = [self.epochs[0]]
            batches: Iterable[tuple[int, Any]] = self._single(wrapped[0])
        else:
            mixed = MixedLoader(*wrapped, pattern=self.pattern, names=tuple(self.names))
            self._epoch_of = mixed.epochs  # the mixer moves a source to its next epoch
            batches = ((self.names.index(name), batch) for name, batch in mixed)
        try:
            for i, batch in batches:
                if self._epoch_of[i] != self.epochs[i]:
                    self.epochs[i], self.offsets[i] = self._epoch_of[i], 1
                else:
                    self.offsets[i] += 1
                self._position += 1
                if self._position == self.round_length:
                    self._position = 0
                    self._round_start = (list(self.epochs), list(self.offsets))
                if self._replay:
                    self._replay -= 1  # given before the checkpoint
                    continue
                yield self.names[i], batch
        finally:
            if mixed is not None:
                mixed.close()


# ---------------------------------------------------------------------------------------------
# Distributed setup


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialised_here: bool


def setup_distributed(device: str) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available")
    where = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(where)
    here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        here = True
    return Distributed(rank, world, local, where, here)


def _mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


# ---------------------------------------------------------------------------------------------
# The loop


def _to_device(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """The target entries the model reads, on its device."""
    return [
        {k: (t[k].to(device, non_blocking=True) if t[k] is not None else None) for k in MODEL_KEYS}
        for t in targets
    ]


def _autocast(amp: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """fp16 autocast on CUDA, bf16 on CPU (``--amp``); nothing without it."""
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _resume_path(train_cfg: TrainConfig, out: Path) -> Path | None:
    if train_cfg.resume == "auto":
        return out / LAST if (out / LAST).is_file() else None
    if train_cfg.resume:
        if not Path(train_cfg.resume).is_file():
            raise TrainError(f"--resume {train_cfg.resume}: no such checkpoint file")
        return Path(train_cfg.resume)
    if any(out.glob("*.pt")):
        raise TrainError(
            f"--output-dir {out} already holds checkpoints: pass --resume auto to continue that "
            "run, or choose another folder"
        )
    return None


def _check_resumable(saved: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> None:
    model = saved.get("model", {})
    changed = sorted(k for k, v in config["model"].items() if model.get(k) != v)
    if changed:
        raise TrainError(
            f"--resume {path}: the checkpoint's model differs from the flags in {changed}"
        )
    if saved.get("text_encoder") != config["text_encoder"]:
        raise TrainError(
            f"--resume {path}: the checkpoint's phrases were embedded by "
            f"{saved.get('text_encoder')!r}, this run's by {config['text_encoder']!r}"
        )
    changed = sorted(
        k
        for k, v in config["train"].items()
        if k not in RESUMABLE_CHANGES and saved.get("train", {}).get(k) != v
    )
    if changed:
        print(f"note: resuming with changed {changed}: not an exact continuation", file=sys.stderr)


def _load_initial_weights(
    model: nn.Module, path: str, config: Mapping[str, Any], *, leader: bool
) -> None:
    """``--init-from``: the model weights of another run's checkpoint, checked to fit this run.

    The phrase encoder must be the same (the classifier maps into its space). Model flags may
    differ as long as the weights fit (an NMS threshold, tau, the size ranges...): a note names
    them. When the weights do not fit, the error names the flags that differ.
    """
    try:
        saved = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainError(f"--init-from: {exc}") from exc
    if saved["config"].get("text_encoder") != config["text_encoder"]:
        raise TrainError(
            f"--init-from {path}: its classifier was trained against phrases embedded by "
            f"{saved['config'].get('text_encoder')!r}, this run embeds them with "
            f"{config['text_encoder']!r}"
        )
    saved_model = saved["config"].get("model", {})
    # backbone_weights only says where a random start came from: it shapes no weight.
    changed = sorted(
        k for k, v in config["model"].items() if k != "backbone_weights" and saved_model.get(k) != v
    )
    differences = ", ".join(
        f"{k}: {saved_model.get(k)!r} -> {config['model'][k]!r}" for k in changed
    )
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        reason = f"model flags differ ({differences})" if changed else str(exc).splitlines()[0]
        raise TrainError(
            f"--init-from {path}: its weights do not fit this model: {reason}"
        ) from exc
    if changed and leader:
        print(f"note: --init-from {path}: model flags differ ({differences})", file=sys.stderr)


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a run that went on after its last checkpoint)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(kept), encoding="utf-8")


def train(model_cfg: ModelConfig, train_cfg: TrainConfig) -> Path:
    """Run (or resume) training as the configs say; returns the path of ``last.pt``.

    Raises TrainError for bad input (the message names the flag). Under torchrun, call it in
    every process: it joins (and then leaves) the process group.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the encoder runs before forks
    env = setup_distributed(train_cfg.device)
    try:
        return _train(model_cfg, train_cfg, env)
    finally:
        if env.initialised_here:
            dist.destroy_process_group()


@dataclass
class _Run:
    """What the loop steps: the model (DDP-wrapped under torchrun), its optimiser, the data."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    datasets: list[ShardDataset]
    stream: DataStream
    config: dict[str, Any]
    step: int


def _check_flags(train_cfg: TrainConfig, env: Distributed) -> None:
    if not train_cfg.shards:
        raise TrainError("--shards: give the training data (an ALP or COCO shards output)")
    if len(train_cfg.shards) > 2:
        raise TrainError(f"--shards: at most two sources, got {len(train_cfg.shards)}")
    if train_cfg.batch_size % env.world_size:
        raise TrainError(
            f"--batch-size {train_cfg.batch_size} does not divide over {env.world_size} ranks"
        )


def _build_model(model_cfg: ModelConfig, env: Distributed, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(model_cfg).to(env.device)
    if env.world_size > 1 and "BN" in (model_cfg.backbone_norm, model_cfg.head_norm):
        if env.device.type == "cuda":  # paper Sec. 3.4: SyncBN in backbone, FPN and heads
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif env.rank == 0:
            print("note: SyncBN needs GPUs; BN statistics stay per rank on CPUs", file=sys.stderr)
    return model


def _make_stream(
    datasets: Sequence[ShardDataset],
    names: Sequence[str],
    train_cfg: TrainConfig,
    env: Distributed,
    state: Mapping[str, Any] | None,
) -> DataStream:
    loaders = []
    for i, dataset in enumerate(datasets):
        loader = make_loader(
            dataset,
            batch_size=train_cfg.batch_size // env.world_size,
            num_workers=train_cfg.num_workers,
            pin_memory=env.device.type == "cuda",
        )
        # Worker seeds from a generator of the loader's own: the global one stays the model's.
        loader.generator = torch.Generator().manual_seed(train_cfg.seed + i)
        loaders.append(loader)
    return DataStream(loaders, names, pattern=train_cfg.pattern, state=state)


def _train_step(
    run: _Run,
    images: torch.Tensor,
    targets: list[dict[str, Any]],
    cfg: TrainConfig,
    env: Distributed,
) -> tuple[dict[str, torch.Tensor], float, float | None]:
    """One optimiser step; returns (losses, the step's learning rate, gradient norm or None)."""
    with _autocast(cfg.amp, env.device):
        losses = run.model(
            images.to(env.device, non_blocking=True), _to_device(targets, env.device)
        )
    total = sum(losses.values())
    if not torch.isfinite(total):
        values = {k: float(v) for k, v in losses.items()}
        raise FloatingPointError(f"step {run.step + 1}: the loss is not finite: {values}")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    grad_norm = None
    if cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        grad_norm = float(nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip))
    lr = float(run.optimizer.param_groups[0]["lr"])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.step += 1
    return losses, lr, grad_norm


def _metrics(
    run: _Run,
    source: str,
    losses: Mapping[str, torch.Tensor],
    lr: float,
    seconds: float,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """A metrics.jsonl record: this step's losses (averaged over ranks) and the window's speed."""
    names = sorted(losses)
    stacked = torch.stack([losses[k].detach().float() for k in names])  # (L,)
    values = _mean_over_ranks(stacked).tolist()
    return {
        "step": run.step,
        "lr": lr,
        **dict(zip(names, values, strict=True)),
        "loss_total": sum(values),
        "time_per_step": seconds,
        "samples_per_s": cfg.batch_size / seconds,
        "source": source,
        "epochs": dict(zip(run.stream.names, run.stream.epochs, strict=True)),
        "data_errors": {
            name: d.error_counts() for name, d in zip(run.stream.names, run.datasets, strict=True)
        },
    }


def _save(run: _Run, out: Path) -> None:
    path = save_checkpoint(
        out / f"step_{run.step:07d}.pt",
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        scaler=run.scaler,
        step=run.step,
        config=run.config,
        extra={"data": run.stream.state_dict()},
    )
    copy_checkpoint(path, out / LAST)


def _train(model_cfg: ModelConfig, train_cfg: TrainConfig, env: Distributed) -> Path:
    _check_flags(train_cfg, env)
    out, leader = Path(train_cfg.output_dir), env.rank == 0
    resume = _resume_path(train_cfg, out)
    sources = [describe_source(spec) for spec in train_cfg.shards]
    if len(sources) == 2 and sources[0].kind == sources[1].kind:
        sources = [dataclasses.replace(s, name=f"{s.kind}{i}") for i, s in enumerate(sources)]
    encoder_id = resolve_text_encoder(sources, model_cfg, train_cfg)
    config = {
        "model": config_to_dict(model_cfg),
        "train": config_to_dict(train_cfg),
        "text_encoder": encoder_id,
        "sources": [{"name": s.name, "kind": s.kind, "shards": s.spec} for s in sources],
        "world_size": env.world_size,
    }
    checkpoint: dict[str, Any] | None = None
    if resume is not None:
        try:
            checkpoint = load_checkpoint(resume)
        except ValueError as exc:
            raise TrainError(f"--resume: {exc}") from exc
        _check_resumable(checkpoint["config"], config, resume)
        if checkpoint["step"] >= train_cfg.last_step:
            if leader:
                print(f"note: {resume} is at step {checkpoint['step']} already", file=sys.stderr)
            return resume
    datasets = build_datasets(
        sources,
        train_cfg,
        encoder_id=encoder_id,
        text_dim=model_cfg.text_dim,
        rank=env.rank,
        world_size=env.world_size,
    )

    model = _build_model(model_cfg, env, train_cfg.seed)
    if checkpoint is None and train_cfg.init_from:
        _load_initial_weights(model, train_cfg.init_from, config, leader=leader)
    optimizer = build_optimizer(
        model,
        lr=train_cfg.lr,
        momentum=train_cfg.momentum,
        weight_decay=train_cfg.weight_decay,
        optimizer=train_cfg.optimizer,
    )
    scheduler = build_scheduler(
        optimizer,
        base_lr=train_cfg.lr,
        warmup_steps=train_cfg.warmup_steps,
        total_steps=train_cfg.steps,
        warmup_factor=train_cfg.warmup_factor,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=train_cfg.amp and env.device.type == "cuda")
    step, stream_state = 0, None
    if checkpoint is not None:  # everything a checkpoint holds, the generators last
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
        step, stream_state = int(checkpoint["step"]), checkpoint["extra"].get("data")
        set_rng_state(checkpoint["rng"])
    model.train()
    if env.world_size > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    stream = _make_stream(datasets, [s.name for s in sources], train_cfg, env, stream_state)
    run = _Run(model, optimizer, scheduler, scaler, datasets, stream, config, step)
    if leader:
        out.mkdir(parents=True, exist_ok=True)
        write_config_json(out, config)
        _keep_metrics_until(out / METRICS, step)

    from tqdm import tqdm

    stop = train_cfg.last_step
    bar = tqdm(total=stop, initial=step, unit="step", disable=not (leader and train_cfg.progress))
    log = open(out / METRICS, "a", encoding="utf-8") if leader else None
    batches = iter(stream)
    window_start, window_steps = time.perf_counter(), 0
    try:
        while run.step < stop:
            source, (images, targets) = next(batches)
            losses, lr, grad_norm = _train_step(run, images, targets, train_cfg, env)
            window_steps += 1
            bar.update(1)
            if run.step % train_cfg.log_every == 0 or run.step == stop:
                seconds = (time.perf_counter() - window_start) / window_steps
                record = _metrics(run, source, losses, lr, seconds, train_cfg)
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                if log is not None:
                    log.write(json.dumps(record, sort_keys=True) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{record['loss_total']:.3f}", lr=f"{lr:.2e}")
                window_start, window_steps = time.perf_counter(), 0
            if leader and (run.step % train_cfg.checkpoint_every == 0 or run.step == stop):
                _save(run, out)
    finally:
        batches.close()
        bar.close()
        if log is not None:
            log.close()
    return out / LAST


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for bad input, with the flag named)."""
    try:
        model_cfg, train_cfg = resolve_config(argv)
    except SystemExit as exc:  # argparse: --help, or a bad flag (already printed)
        return int(exc.code or 0)
    try:
        path = train(model_cfg, train_cfg)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
