"""Train a detector on COCO masks and ALPs: ``python -m models.train --shards DIR [--shards DIR]``.

    python -m models.train --preset coco-voc --shards out/coco_voc --shards out/alps_coco \\
        --backbone-weights r50.pth --output-dir runs/voc                 # FCOS-MO
    python -m models.train --arch mask-rcnn-star --preset coco-voc ...    # the Mask R-CNN*
    python -m models.train --arch maskx-rcnn --shards out/coco_maskx ...  # MaskX R-CNN
    torchrun --nproc-per-node 8 -m models.train --preset coco-voc ...     # DDP, one GPU a rank
    python -m models.train ... --resume auto                              # continue exactly

``--arch`` picks the detector (`models.architectures`), recorded in every checkpoint. Data
(`models.engine.sources`): each ``--shards`` is an ALP or a COCO shards output; two sources
alternate batches in ``--pattern`` (`models.engine.stream`). With ``--alp-supervision
image-labels`` the ALP shards' phrases are image-level labels only (the ALP paper's "ALPs
without boxes"; two-stage detectors).

Optimisation (`models.engine.schedule`): SGD or AdamW, linear warm-up then cosine to zero at
``--steps``; AMP with ``--amp`` (CUDA: fp16 + GradScaler; CPU: bf16 autocast); DDP under
torchrun (NCCL on GPUs, gloo on CPUs; BN layers become SyncBN on GPUs).

Output in ``--output-dir`` (default ``runs/ARCH``): ``step_NNNNNNN.pt`` every
``--checkpoint-every`` steps and at the end, ``last.pt`` (a copy of the latest),
``config.json`` (the resolved config) and ``metrics.jsonl`` (one line every ``--log-every``
steps: step, lr, each loss and the total, seconds per step, samples/s, the batch's source, each
source's epoch and bad-data counts).

Exact resume: a checkpoint holds the model, optimiser, scheduler, scaler, step, the random
generators and the position of the data stream (`DataStream.state_dict`); steps after a resume
see the same batches, and compute the same losses and weights, as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from alp_dataset.datasets import ShardDataset
from alp_dataset.loader import make_loader
from models.architectures import DetectorConfig, architecture_of, build_model
from models.config import TrainConfig, config_to_dict, resolve_config
from models.engine import TrainError
from models.engine.checkpoint import (
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    write_config_json,
)
from models.engine.distributed import (
    Distributed,
    maybe_sync_batchnorm,
    mean_over_ranks,
    setup_distributed,
)
from models.engine.resume import (
    LAST,
    check_resumable,
    keep_metrics_until,
    load_initial_weights,
    readable_alternative,
    resume_path,
)
from models.engine.schedule import build_optimizer, build_scheduler
from models.engine.sources import (
    Source,
    build_datasets,
    class_embeddings,
    describe_source,
    resolve_text_encoder,
)
from models.engine.stream import DataStream
from models.targets import TARGET_KEYS

__all__ = ["DataStream", "TrainError", "describe_source", "main", "train"]

METRICS = "metrics.jsonl"


def train(model_cfg: DetectorConfig, train_cfg: TrainConfig) -> Path:
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
    image_label_sources: frozenset[str]  # sources whose phrases are image labels only


# ---------------------------------------------------------------------------------------------
# Set-up helpers


def _check_flags(
    model_cfg: DetectorConfig, train_cfg: TrainConfig, sources: Sequence[Source], env: Distributed
) -> None:
    if train_cfg.batch_size % env.world_size:
        raise TrainError(
            f"--batch-size {train_cfg.batch_size} does not divide over {env.world_size} ranks"
        )
    if train_cfg.alp_supervision == "image-labels":
        arch = architecture_of(model_cfg)
        if not arch.image_labels:
            raise TrainError(
                f"--alp-supervision image-labels: --arch {arch.name} learns from boxes only; "
                "image-level labels train the two-stage detectors (--arch mask-rcnn-star)"
            )
        if not any(s.kind == "alp" for s in sources):
            raise TrainError("--alp-supervision image-labels: no --shards source holds ALPs")


def _fixed_classes(
    model_cfg: DetectorConfig, train_cfg: TrainConfig, sources: Sequence[Source], leader: bool
) -> DetectorConfig:
    """For a fixed-class detector (MaskX R-CNN): its class list, checked against every source's
    (from the COCO shards' manifests), or taken from them when ``--classes`` is not given."""
    arch = architecture_of(model_cfg)
    if not arch.fixed_classes:
        return model_cfg
    for s in sources:
        if s.kind != "coco":
            raise TrainError(
                f"--shards {s.spec}: --arch {arch.name} learns a fixed class list from COCO "
                "shards (boxes for every class, masks for some); ALP shards hold free-text "
                "phrases"
            )
    if model_cfg.train_stage == "masks" and not (train_cfg.init_from or train_cfg.resume):
        raise TrainError(
            "--train-stage masks trains the mask branch of a trained detector: give --init-from "
            "a stage-one checkpoint (--train-stage detection)"
        )
    wanted = tuple(model_cfg.classes)
    for s in sources:
        have = s.class_names or train_cfg.class_names
        if not have:
            continue  # a pattern without a manifest: the model checks every label it meets
        if not wanted:
            wanted = tuple(sorted(have))
            if leader:
                print(f"note: --classes from {s.spec}: {' '.join(wanted)}", file=sys.stderr)
            continue
        missing, extra = sorted(set(have) - set(wanted)), sorted(set(wanted) - set(have))
        if missing or extra:
            raise TrainError(
                f"--shards {s.spec}: its classes differ from the model's --classes: "
                + "; ".join(
                    part
                    for part in (
                        f"not in --classes: {missing}" if missing else "",
                        f"not in the shards: {extra}" if extra else "",
                    )
                    if part
                )
            )
    if not wanted:
        raise TrainError(
            f"--classes: --arch {arch.name} needs its class list, and no shards manifest names it"
        )
    return dataclasses.replace(model_cfg, classes=wanted)


def _sources(train_cfg: TrainConfig) -> list[Source]:
    if not train_cfg.shards:
        raise TrainError("--shards: give the training data (an ALP or COCO shards output)")
    if len(train_cfg.shards) > 2:
        raise TrainError(f"--shards: at most two sources, got {len(train_cfg.shards)}")
    sources = [describe_source(spec) for spec in train_cfg.shards]
    if len(sources) == 2 and sources[0].kind == sources[1].kind:
        sources = [dataclasses.replace(s, name=f"{s.kind}{i}") for i, s in enumerate(sources)]
    return sources


def _build_model(model_cfg: DetectorConfig, env: Distributed, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        model = build_model(model_cfg).to(env.device)
    except (OSError, ValueError) as exc:  # e.g. --backbone-weights that is no state dict
        raise TrainError(f"model: {exc}") from exc
    uses_bn = "BN" in (model_cfg.backbone_norm, getattr(model_cfg, "head_norm", ""))
    return maybe_sync_batchnorm(model, env, uses_bn)


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


# ---------------------------------------------------------------------------------------------
# One step, its log line, its checkpoint


def _to_device(
    targets: list[dict[str, Any]], device: torch.device, *, image_labels_only: bool
) -> list[dict[str, Any]]:
    """The target entries the model reads (`models.targets`), on its device; with
    ``image_labels_only`` each image's instances become image-level labels."""
    moved = []
    for t in targets:
        entry = {
            k: (t[k].to(device, non_blocking=True) if torch.is_tensor(t[k]) else t[k])
            for k in TARGET_KEYS
            if k in t
        }
        if image_labels_only:
            entry["image_labels_only"] = True
        moved.append(entry)
    return moved


def _autocast(amp: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """fp16 autocast on CUDA, bf16 on CPU (``--amp``); nothing without it."""
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _train_step(
    run: _Run,
    source: str,
    images: torch.Tensor,
    targets: list[dict[str, Any]],
    cfg: TrainConfig,
    env: Distributed,
) -> tuple[dict[str, torch.Tensor], float, float | None]:
    """One optimiser step; returns (losses, the step's learning rate, gradient norm or None)."""
    targets = _to_device(targets, env.device, image_labels_only=source in run.image_label_sources)
    with _autocast(cfg.amp, env.device):
        losses = run.model(images.to(env.device, non_blocking=True), targets)
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
    values = mean_over_ranks(stacked).tolist()
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


# ---------------------------------------------------------------------------------------------
# The run


def _train(model_cfg: DetectorConfig, train_cfg: TrainConfig, env: Distributed) -> Path:
    arch = architecture_of(model_cfg).name
    out = Path(train_cfg.output_dir or f"runs/{arch}")
    resume = resume_path(train_cfg, out)
    sources = _sources(train_cfg)
    _check_flags(model_cfg, train_cfg, sources, env)
    model_cfg = _fixed_classes(model_cfg, train_cfg, sources, env.leader)
    encoder_id = resolve_text_encoder(sources, model_cfg.text_dim, train_cfg.text_encoder)
    config = {
        "arch": arch,
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
        except ValueError as exc:  # e.g. truncated by a full disk
            hint = readable_alternative(out, resume)
            raise TrainError(f"--resume: {exc}{hint}") from exc
        check_resumable(checkpoint["config"], config, resume)
        if checkpoint["step"] >= train_cfg.last_step:
            if env.leader:
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
        load_initial_weights(model, train_cfg.init_from, config, leader=env.leader)
    if architecture_of(model_cfg).fixed_classes:  # what T reads with --transfer-input text
        names = model_cfg.classes
        rows = class_embeddings(encoder_id, names, model_cfg.text_dim)
        model.set_class_embeddings(torch.from_numpy(np.stack([rows[n] for n in names])))
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
    image_label_sources = frozenset(
        s.name for s in sources if s.kind == "alp" and train_cfg.alp_supervision == "image-labels"
    )
    run = _Run(
        model, optimizer, scheduler, scaler, datasets, stream, config, step, image_label_sources
    )
    if env.leader:
        out.mkdir(parents=True, exist_ok=True)
        write_config_json(out, config)
        keep_metrics_until(out / METRICS, step)

    from tqdm import tqdm

    stop = train_cfg.last_step
    show = env.leader and train_cfg.progress
    bar = tqdm(total=stop, initial=step, unit="step", disable=not show)
    log = open(out / METRICS, "a", encoding="utf-8") if env.leader else None
    batches = iter(stream)
    window_start, window_steps = time.perf_counter(), 0
    try:
        while run.step < stop:
            source, (images, targets) = next(batches)
            losses, lr, grad_norm = _train_step(run, source, images, targets, train_cfg, env)
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
            if env.leader and (run.step % train_cfg.checkpoint_every == 0 or run.step == stop):
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
