"""The optimiser and its learning-rate schedule (the ALP paper, Sec. 3.4).

SGD with momentum 0.9 and weight decay 1e-4, none on normalisation weights, biases and the
per-level box scales (every parameter with fewer than two dimensions, as detectron2's
``WEIGHT_DECAY_NORM = 0`` and the usual bias rule); the learning rate rises linearly for the
first ``warmup_steps`` from ``warmup_factor * lr`` to ``lr``, then falls to zero along a
half cosine at ``total_steps``::

    lr(s) = lr * (f + (1 - f) * s / W)                        s < W
    lr(s) = lr * (1 + cos(pi * (s - W) / (T - W))) / 2        W <= s <= T     (0 from T on)

``s`` counts the optimiser steps taken before the one the rate is for: the first step uses
``lr(0)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["build_optimizer", "build_scheduler", "get_lr", "parameter_groups"]


def get_lr(
    step: int,
    *,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    warmup_factor: float = 0.001,
) -> float:
    """The learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine to 0."""
    if step < 0:
        raise ValueError(f"get_lr: step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (warmup_factor + (1.0 - warmup_factor) * step / warmup_steps)
    if step >= total_steps:
        return 0.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict[str, object]]:
    """Two SGD groups: weights of 2+ dimensions decay, the rest (norms, biases, scales) do not.
    Frozen parameters (``requires_grad`` False) are left out."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in named_parameters:
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    optimizer: str = "sgd",
) -> torch.optim.Optimizer:
    """The optimiser over `parameter_groups` of ``model``: SGD with momentum (the paper's,
    Sec. 3.4), or AdamW (betas (momentum, 0.999)) for short runs from scratch, where SGD's single
    step size must serve both the backbone and the classifier, whose gradients the temperature
    tau = 0.01 makes a hundred times larger."""
    groups = parameter_groups(model.named_parameters(), weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {optimizer!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    warmup_factor: float = 0.001,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `get_lr` (``scheduler.step()`` once after each optimiser step).

    The factor is a plain function, which LambdaLR leaves out of its ``state_dict``: a resumed
    run takes the schedule from its configuration and the step from the checkpoint."""

    def factor(step: int) -> float:
        lr = get_lr(
            step,
            base_lr=base_lr,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            warmup_factor=warmup_factor,
        )
        return lr / base_lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
