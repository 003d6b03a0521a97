"""Shared fixtures of the model tests: tiny detectors of every architecture, as checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

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
}  # fmt: skip
assert set(TINY_MODELS) == set(ARCHITECTURES)


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
