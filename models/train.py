"""Train a detector on COCO masks and ALPs: ``python -m models.train --shards DIR [--shards DIR]``.

    python -m models.train --preset coco-voc --shards out/coco_voc --shards out/alps_coco \\
        --backbone-weights r50.pth --output runs/voc                     # FCOS-MO
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

Output in the run directory ``--output`` (default ``runs/ARCH``; ``--output-dir`` is read as
it, with a note): ``step_NNNNNNN.pt`` every ``--checkpoint-every`` steps and at the end,
``last.pt`` (a copy of the latest), ``config.json`` (the resolved config), ``metrics.jsonl``
(one line every ``--log-every`` steps: per source, the mean of each loss over its steps since
the previous line and how many steps that is, the foreground classification accuracy, data
errors, the learning rate and the speed; the format is `models.run_log`'s) and TensorBoard
event files with the same scalars (``--no-tensorboard`` to skip them). ``python -m
models.plot RUN_DIR`` draws the curves. The leader prints a banner when the run starts (device,
world size, each source with its shard and sample counts, the text encoder, what
``--init-from`` / ``--resume`` loaded) and a summary when it ends (each source's last losses,
the time per step, the paths written), both on stderr.

From Python::

    from models.config import resolve_config
    from models.train import train
    model_cfg, train_cfg = resolve_config(["--preset", "synthetic-small", "--shards", "out/alps"])
    last = train(model_cfg, train_cfg)       # Path of RUN_DIR/last.pt

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
from models.engine.distributed import Distributed, maybe_sync_batchnorm, setup_distributed
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
from models.heads.diagnostics import TrainingLosses
from models.run_log import (
    METRICS,
    ScalarWriter,
    SourceLine,
    Window,
    banner,
    open_tensorboard,
    summary,
    write_scalars,
)
from models.targets import TARGET_KEYS

__all__ = ["METRICS", "DataStream", "TrainError", "describe_source", "main", "train"]


def train(model_cfg: DetectorConfig, train_cfg: TrainConfig) -> Path:
    """Run (or resume) one training run; returns the path of ``RUN_DIR/last.pt``.

    ``model_cfg`` is the config of the detector (`models.architectures`: ``FCOSMOConfig``,
    ``MaskRCNNStarConfig``, ``MaskXRCNNConfig``; its class picks the architecture) and
    ``train_cfg`` a `models.config.TrainConfig`; `models.config.resolve_config` makes both from
    command-line flags, presets included. The run directory is ``train_cfg.output`` (''
    for ``runs/ARCH``); what it holds is in the module doc.

    Raises TrainError for bad input (the message names the flag). Nothing to set up by hand: in
    a plain process it trains on one device (``train_cfg.device``); under torchrun, call it in
    every process and it joins (and then leaves) the process group the environment describes.
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
) -> tuple[TrainingLosses, float, float | None]:
    """One optimiser step; returns (losses with the detector's diagnostics, the step's learning
    rate, gradient norm or None)."""
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


def _data_errors(run: _Run) -> dict[str, dict[str, int]]:
    return {name: d.error_counts() for name, d in zip(run.stream.names, run.datasets, strict=True)}


def _save(run: _Run, out: Path) -> Path:
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
    return path


# ---------------------------------------------------------------------------------------------
# The run


def _train(model_cfg: DetectorConfig, train_cfg: TrainConfig, env: Distributed) -> Path:
    arch = architecture_of(model_cfg).name
    out = Path(train_cfg.output or f"runs/{arch}")
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
    if checkpoint is not None:
        start = f"--resume {resume}: step {checkpoint['step']} (model, optimiser, schedule, data)"
    elif train_cfg.init_from:
        loaded = load_initial_weights(model, train_cfg.init_from, config, leader=env.leader)
        start = f"--init-from {loaded}; optimiser, schedule and step afresh"
    else:
        backbone = getattr(model_cfg, "backbone_weights", None)
        start = "random weights" + (f", the backbone's from {backbone}" if backbone else "")
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
        print(
            banner(
                arch=arch,
                device=env.device,
                world_size=env.world_size,
                batch_size=train_cfg.batch_size,
                sources=[
                    SourceLine(s.name, s.kind, s.spec, len(s.urls), s.samples) for s in sources
                ],
                text_encoder=encoder_id,
                start=start,
                first_step=step,
                last_step=train_cfg.last_step,
                run_dir=out,
            ),
            file=sys.stderr,
        )
    return _loop(run, train_cfg, env, out)


def _loop(run: _Run, cfg: TrainConfig, env: Distributed, out: Path) -> Path:
    """Steps until the last, a metrics line every ``--log-every`` steps, checkpoints; the
    summary at the end (leader)."""
    from tqdm import tqdm

    first, stop = run.step, cfg.last_step
    show = env.leader and cfg.progress
    bar = tqdm(total=stop, initial=first, unit="step", disable=not show)
    log = open(out / METRICS, "a", encoding="utf-8") if env.leader else None
    board: ScalarWriter | None = None
    if env.leader and cfg.tensorboard:
        board = open_tensorboard(out, purge_step=first + 1 if first else None)
    window = Window(run.stream.names, env.device)
    last_by_source: dict[str, dict[str, Any]] = {}
    saved: list[Path] = []
    batches = iter(run.stream)
    began = window_start = time.perf_counter()
    try:
        while run.step < stop:
            source, (images, targets) = next(batches)
            losses, lr, grad_norm = _train_step(run, source, images, targets, cfg, env)
            window.add(source, losses, losses.diagnostics, grad_norm)
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.step == stop:
                seconds = (time.perf_counter() - window_start) / window.steps
                record = window.record(
                    step=run.step,
                    lr=lr,
                    seconds_per_step=seconds,
                    batch_size=cfg.batch_size,
                    epochs=dict(zip(run.stream.names, run.stream.epochs, strict=True)),
                    data_errors=_data_errors(run),
                )
                for name, values in record["sources"].items():
                    last_by_source[name] = {**values, "step": run.step}
                if log is not None:
                    log.write(json.dumps(record, sort_keys=True) + "\n")
                    log.flush()
                if board is not None:
                    write_scalars(board, record)
                bar.set_postfix(loss=f"{record['loss_total']:.3f}", lr=f"{lr:.2e}")
                window_start = time.perf_counter()
            if env.leader and (run.step % cfg.checkpoint_every == 0 or run.step == stop):
                saved.append(_save(run, out))
    finally:
        batches.close()
        bar.close()
        if log is not None:
            log.close()
        if board is not None:
            board.close()
    if env.leader:
        written = {
            "run dir": str(out),
            "checkpoints": ", ".join(p.name for p in saved[-3:]) + f" and {LAST}",
            "metrics": str(out / METRICS),
            "TensorBoard": board.log_dir if board is not None else "not written",
            "config": str(out / "config.json"),
        }
        if len(saved) > 3:
            written["checkpoints"] = f"{len(saved)} (the last {saved[-1].name}) and {LAST}"
        seconds = time.perf_counter() - began
        print(
            summary(
                step=run.step,
                steps_done=run.step - first,
                seconds=seconds,
                last_by_source=last_by_source,
                written=written,
            ),
            file=sys.stderr,
        )
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
