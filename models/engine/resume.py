"""Where a run starts: afresh, from its own checkpoint (``--resume``), or from another run's
weights (``--init-from``); and the checks that keep either honest.

- `resume_path`: ``--resume auto`` takes ``OUTPUT/last.pt`` when it exists; a folder that
  holds checkpoints is never overwritten by a fresh run.
- `check_resumable`: an exact continuation needs the same architecture, model flags and phrase
  encoder; changed training flags other than ``RESUMABLE_CHANGES`` get a note.
- `load_initial_weights`: the architecture and the phrase encoder must be the run's; model
  flags may differ as long as the weights fit (tau, NMS, size ranges...), with a note.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from models.config import TrainConfig
from models.engine import TrainError
from models.engine.checkpoint import load_checkpoint

__all__ = [
    "LAST",
    "RESUMABLE_CHANGES",
    "check_resumable",
    "keep_metrics_until",
    "load_initial_weights",
    "readable_alternative",
    "resume_path",
]

LAST = "last.pt"
# Train fields that may change between a run and its resumption without changing its course
# (init_from too: a resumed run takes its weights from the checkpoint; output_dir is the old
# name of output, in checkpoints written before the flags were renamed).
RESUMABLE_CHANGES = {
    "resume", "init_from", "max_steps", "log_every", "checkpoint_every", "progress",
    "tensorboard", "output", "output_dir",
}  # fmt: skip


def resume_path(train_cfg: TrainConfig, out: Path) -> Path | None:
    """The checkpoint ``--resume`` names (None: start afresh)."""
    if train_cfg.resume == "auto":
        return out / LAST if (out / LAST).is_file() else None
    if train_cfg.resume:
        if not Path(train_cfg.resume).is_file():
            raise TrainError(f"--resume {train_cfg.resume}: no such checkpoint file")
        return Path(train_cfg.resume)
    if any(out.glob("*.pt")):
        raise TrainError(
            f"--output {out} already holds checkpoints: pass --resume auto to continue that "
            "run, or choose another folder"
        )
    return None


def readable_alternative(out: Path, broken: Path) -> str:
    """For the error about an unreadable checkpoint: the newest other ``step_N.pt`` of ``out``
    that reads, as a hint to resume from it (or that none does)."""
    candidates = sorted(out.glob("step_*.pt"), reverse=True)  # zero-padded: newest first
    for candidate in candidates:
        if candidate.resolve() == broken.resolve():
            continue
        try:
            load_checkpoint(candidate)
        except ValueError:
            continue
        return f"; {candidate} can be read: resume from it with --resume {candidate}"
    return f"; no other checkpoint in {out} can be read" if candidates else ""


def _saved_arch(saved: Mapping[str, Any]) -> str:
    return str(saved.get("arch", "?"))


def check_resumable(saved: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> None:
    """TrainError unless the checkpoint's config (``saved``) continues this run's exactly."""
    if _saved_arch(saved) != config["arch"]:
        raise TrainError(
            f"--resume {path}: the checkpoint is of --arch {_saved_arch(saved)}, this run is "
            f"--arch {config['arch']}"
        )
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


def load_initial_weights(
    model: nn.Module, path: str, config: Mapping[str, Any], *, leader: bool
) -> str:
    """``--init-from``: the model weights of another run's checkpoint, checked to fit this run;
    returns what was loaded, for the banner ("PATH (step N of --arch A): all weights").

    The architecture and the phrase encoder must be the same (the classifier maps into the
    encoder's space). Model flags may differ as long as the weights fit (an NMS threshold, tau,
    the size ranges...): a note names them. When the weights do not fit, the error names the
    flags that differ.
    """
    try:
        saved = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainError(f"--init-from: {exc}") from exc
    if _saved_arch(saved["config"]) != config["arch"]:
        raise TrainError(
            f"--init-from {path}: the checkpoint is of --arch {_saved_arch(saved['config'])}, "
            f"this run is --arch {config['arch']}"
        )
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
    required = getattr(model, "init_from_required", None)
    try:
        if required is None:
            model.load_state_dict(saved["model"])
            fresh: list[str] = []
        else:
            fresh = _load_fitting(model, saved["model"], tuple(required))
    except RuntimeError as exc:
        reason = f"model flags differ ({differences})" if changed else str(exc).splitlines()[0]
        raise TrainError(
            f"--init-from {path}: its weights do not fit this model: {reason}"
        ) from exc
    if changed and leader:
        print(f"note: --init-from {path}: model flags differ ({differences})", file=sys.stderr)
    parts = sorted({name.split(".")[0] for name in fresh})
    if fresh and leader:
        print(
            f"note: --init-from {path}: {len(fresh)} tensors of {parts} are not in the "
            "checkpoint in this shape and start afresh",
            file=sys.stderr,
        )
    loaded = f"all but {len(fresh)} tensors of {parts}" if fresh else "all weights"
    return f"{path} (step {saved['step']} of --arch {config['arch']}): {loaded}"


def _load_fitting(
    model: nn.Module, saved: Mapping[str, Any], required: tuple[str, ...]
) -> list[str]:
    """Load every tensor of ``saved`` that fits ``model`` (same name and shape); the tensors
    under the ``required`` prefixes must all be there. Returns the names left as they were."""
    own = model.state_dict()
    wrong = [
        name
        for name, value in own.items()
        if name.startswith(required)
        and (name not in saved or tuple(saved[name].shape) != tuple(value.shape))
    ]
    if wrong:
        raise RuntimeError(
            f"{len(wrong)} tensors of the detector are missing or shaped differently, e.g. "
            f"{wrong[:3]}"
        )
    fitting = {
        name: value
        for name, value in saved.items()
        if name in own and tuple(value.shape) == tuple(own[name].shape)
    }
    model.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a run that went on after its last checkpoint)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(kept), encoding="utf-8")
