"""Shared fixtures of the model tests: tiny detectors of every architecture, as checkpoints."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import alp_curation.torchvision_fix  # noqa: F401  (before any torchvision import)

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from models.architectures import ARCHITECTURES, build_model
from models.config import config_to_dict
from models.engine.checkpoint import save_checkpoint

# Per architecture, the smallest model worth running: 384-d phrases (MiniLM, the offline
# encoder), narrow widths.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "fcos-mo": {
        "backbone": "resnet_small", "fpn_channels": 16, "head_convs": 1, "text_dim": 384,
        "mask_channels": 8,
    },
    "mask-rcnn-star": {
        "backbone": "resnet_small", "fpn_channels": 16, "text_dim": 384, "mask_channels": 8,
        "box_head_dim": 32, "rpn_post_nms_topk_test": 100,
    },
    "maskx-rcnn": {
        "backbone": "resnet_small", "fpn_channels": 16, "text_dim": 384, "mask_channels": 8,
        "box_head_dim": 32, "rpn_post_nms_topk_test": 100,
        "classes": ("circle", "square", "triangle", "star"),  # the synthetic test worlds' shapes
    },
}  # fmt: skip
assert set(TINY_MODELS) == set(ARCHITECTURES)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine: one thread avoids oversubscription stalls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _overfit_one_image(model: nn.Module, make_target: Callable[..., dict], steps: int) -> None:
    """Train ``model`` on one image of a white square ("phrase 5") and a red one ("phrase 6")
    with Adam, then check that the loss halved and that both squares are found with the right
    labels (class order swapped) and masks of IoU > 0.5. ``make_target(boxes, phrase_ids)``
    builds the masked target of the detector's test module."""
    image = torch.full((1, 3, 128, 128), 30, dtype=torch.uint8)
    image[:, :, 40:88, 24:72] = 220
    image[:, 0, 8:40, 88:120] = 220
    target = make_target([[24, 40, 72, 88], [88, 8, 120, 40]], [5, 6])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, totals = time.perf_counter(), []
    model.train()
    for _ in range(steps):
        losses = model(image, [target])
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    elapsed = time.perf_counter() - start
    print(
        f"overfit: total {totals[0]:.3f} -> {totals[-1]:.3f} in {elapsed:.1f} s; last",
        {k: round(v.item(), 4) for k, v in losses.items()},
    )
    assert totals[-1] < 0.5 * totals[0], totals
    model.eval()
    # Class order swapped: label 0 is the red square's phrase, label 1 the white one's.
    out = model(image, class_embeddings=target["text_embeddings"].flip(0))[0]
    iou = box_iou(out["boxes_xyxy_px"], target["boxes_xyxy_px"])  # (K, 2)
    top = out["scores"].argmax()
    assert iou[top].max() > 0.5
    for gt, label in ((0, 1), (1, 0)):
        hits = (iou[:, gt] > 0.5).nonzero().squeeze(1)
        assert hits.numel() > 0, f"no detection of box {gt}"
        best = hits[out["scores"][hits].argmax()]
        assert out["labels"][best] == label
        mask = out["masks"][best, 0] > 0.5
        truth = target["masks"][gt]
        assert (mask & truth).sum() / (mask | truth).sum() > 0.5


def _checked_step(
    model: nn.Module, images: torch.Tensor, targets: list[dict], keys: set[str]
) -> dict[str, torch.Tensor]:
    """One training forward / backward: the loss ``keys``, finite scalar losses, a finite
    gradient for every trainable parameter (what DDP without find_unused_parameters needs)."""
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(images, targets)
    assert set(losses) == keys
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    return losses


@pytest.fixture
def checked_step() -> Callable[..., dict[str, torch.Tensor]]:
    """``step(model, images, targets, keys)``: `_checked_step`."""
    return _checked_step


@pytest.fixture
def overfit_one_image() -> Callable[[nn.Module, Callable[..., dict], int], None]:
    """The overfitting check every detector passes (`_overfit_one_image`)."""
    return _overfit_one_image


@pytest.fixture
def save_tiny_checkpoint() -> Callable[..., Path]:
    """``save(path, arch="fcos-mo")``: a randomly initialised tiny detector saved as a
    checkpoint whose phrases are MiniLM's; returns the path."""

    def save(path: Path, arch: str = "fcos-mo") -> Path:
        torch.manual_seed(0)
        cfg = ARCHITECTURES[arch].config(**TINY_MODELS[arch])
        config = {"arch": arch, "model": config_to_dict(cfg), "train": {}, "text_encoder": "minilm"}
        return save_checkpoint(path, model=build_model(cfg), step=0, config=config)

    return save
