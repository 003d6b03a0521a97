"""Checkpoints of every detector: one ``torch.save`` dict per file, written atomically.

    save_checkpoint("runs/x/step_0005000.pt", model=model, optimizer=opt, scheduler=sched,
                    scaler=scaler, step=5000, config=config)
    model, config = load_model("runs/x/last.pt")        # eval mode, on the CPU

A checkpoint is a dict:

============= ================================================================================
``format``    ``"alp.models.checkpoint"``; ``version``: ``CHECKPOINT_VERSION``
``model``     the model's ``state_dict`` (unwrapped from DDP: no ``module.`` prefix)
``optimizer`` the optimiser's ``state_dict``, or None
``scheduler`` the learning-rate scheduler's ``state_dict``, or None
``scaler``    the AMP GradScaler's ``state_dict``, or None
``step``      optimiser steps taken (int)
``config``    the resolved configuration: ``{"arch": architecture name, "model": its config's
              fields, "train": TrainConfig fields, "text_encoder": encoder id of the phrase
              embeddings, ...}`` (JSON values)
``rng``       the random generators of the saving process: python, numpy, torch, cuda
``extra``     anything else the caller saved (training: the position in the data stream)
============= ================================================================================

Everything in it is a tensor or a plain Python value, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from the file.
``config.json`` beside the checkpoint holds the same ``config`` for people and other tools.

Older formats load too: `load_checkpoint` upgrades them in memory to the current one.

- ``"alp.fcos_mo.checkpoint"`` version 1 (FCOS-MO before the library held several detectors):
  no ``config["arch"]`` (it is ``fcos-mo``), and the classifier's projection was
  ``head.cls_embed`` (now ``head.classifier.projection``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from models.architectures import build_model, get_architecture
from models.fields import config_from_dict

if TYPE_CHECKING:
    from models.meta_arch.base import Detector

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KEYS",
    "CHECKPOINT_VERSION",
    "CONFIG_NAME",
    "copy_checkpoint",
    "get_rng_state",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "set_rng_state",
    "unwrap",
    "write_config_json",
]

CHECKPOINT_FORMAT = "alp.models.checkpoint"
CHECKPOINT_VERSION = 2
LEGACY_FCOS_MO_FORMAT = "alp.fcos_mo.checkpoint"  # version 1, FCOS-MO only
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "config", "rng")
CONFIG_NAME = "config.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or hasattr(
        model, "_orig_mod"
    ):
        model = model.module if hasattr(model, "module") else model._orig_mod
    return model


# ---------------------------------------------------------------------------------------------
# Random generators


def get_rng_state() -> dict[str, Any]:
    """The state of python's, numpy's, torch's and (when present) CUDA's global generators."""
    # The legacy global generator is the one other libraries draw from: it is what to save.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `get_rng_state` returned (CUDA only where this process has as many GPUs)."""
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def _as_tuples(value: Any) -> Any:
    # random.setstate wants tuples all the way down.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------------------------------------
# Writing


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``, then rename it over
    ``path``: a reader (or a run killed mid-write) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_config_json(directory: str | os.PathLike[str], config: Mapping[str, Any]) -> Path:
    """``directory/config.json``: the resolved config, sorted keys, atomically."""
    path = Path(directory) / CONFIG_NAME
    text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    _write_atomic(path, lambda f: f.write(text.encode("utf-8")))
    return path


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    step: int,
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint (module doc) to ``path`` atomically, and ``config.json`` beside it.

    ``config`` must hold JSON values (it is written to config.json too); ``extra`` tensors and
    plain values. The random generators saved are this process's.
    """
    path = Path(path)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "step": int(step),
        "config": dict(config),
        "rng": get_rng_state(),
        "extra": dict(extra or {}),
    }
    _write_atomic(path, lambda f: torch.save(checkpoint, f))
    write_config_json(path.parent, config)
    return path


def copy_checkpoint(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy a checkpoint file (``last.pt`` from ``step_N.pt``) atomically."""
    target = Path(target)
    with open(source, "rb") as src:
        _write_atomic(target, lambda f: shutil.copyfileobj(src, f, 1 << 22))
    return target


# ---------------------------------------------------------------------------------------------
# Reading


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    Raises FileNotFoundError for a missing file, and ValueError naming the file when it is not
    a readable torch file (truncated, corrupt, pickled code) or not a checkpoint of this
    library. Older formats come back upgraded (module doc).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"checkpoint {path}: cannot be read as a torch checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    formats = (CHECKPOINT_FORMAT, LEGACY_FCOS_MO_FORMAT)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in formats:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint)
        raise ValueError(
            f"checkpoint {path}: not a detector checkpoint (expected a dict with format "
            f"{CHECKPOINT_FORMAT!r}, found {found})"
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {path}: missing entries {missing}")
    if checkpoint["format"] == LEGACY_FCOS_MO_FORMAT:
        return _upgrade_fcos_mo_v1(checkpoint)
    if checkpoint.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {path}: version {checkpoint['version']} is newer than this code "
            f"reads ({CHECKPOINT_VERSION})"
        )
    return checkpoint


# Version-1 FCOS-MO parameter names -> today's (the classifier became a shared part).
_FCOS_MO_V1_RENAMES = {"head.cls_embed.": "head.classifier.projection."}


def _upgrade_fcos_mo_v1(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """An ``alp.fcos_mo.checkpoint`` (version 1) in today's format (module doc). The optimiser
    state indexes parameters by position, which the rename leaves as they were."""

    def renamed(key: str) -> str:
        for old, new in _FCOS_MO_V1_RENAMES.items():
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    config = {"arch": "fcos-mo", **checkpoint["config"]}
    state = {renamed(k): v for k, v in checkpoint["model"].items()}
    return {
        **checkpoint,
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": state,
        "config": config,
    }


def load_model(
    path: str | os.PathLike[str], map_location: Any = "cpu"
) -> tuple[Detector, dict[str, Any]]:
    """The detector of a checkpoint (its ``config["arch"]``), weights loaded, in eval mode; and
    its config dict (``{"arch": ..., "model": ..., "train": ..., "text_encoder": ...}``). Errors
    as `load_checkpoint`; ValueError naming the file when the config or the weights do not fit.

    The backbone is built without ``backbone_weights`` (the checkpoint holds every weight; the
    file it started from need not exist where the model is loaded)."""
    checkpoint = load_checkpoint(path, map_location=map_location)
    config = checkpoint["config"]
    try:
        arch = get_architecture(config["arch"])
        model_cfg = config_from_dict(arch.config, config["model"], where=f"{path}: config.model")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"checkpoint {path}: config['arch'] / config['model'] is unusable: {exc}"
        ) from exc
    model = build_model(dataclasses.replace(model_cfg, backbone_weights=None))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path}: weights do not fit the model: {exc}") from exc
    if (
        map_location is not None
        and not callable(map_location)
        and not isinstance(map_location, dict)
    ):
        model.to(torch.device(map_location))
    return model.eval(), config
