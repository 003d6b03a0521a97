"""Mask heads: shapes, the Hourglass-20 layer count, empty inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.heads.mask import Conv4MaskHead, Hourglass20, build_mask_head


def _convs(module: nn.Module, kernel: int) -> int:
    return sum(
        1 for m in module.modules() if type(m) is nn.Conv2d and m.kernel_size == (kernel, kernel)
    )


@pytest.mark.parametrize("head", [Hourglass20(12, 4), Conv4MaskHead(12, 8)])
def test_mask_heads_double_the_roi_size(head: nn.Module) -> None:
    out = head(torch.randn(3, 12, 16, 16))
    assert out.shape == (3, 1, 32, 32)
    assert out.dtype == torch.float32


def test_hourglass20_layer_count_and_widths() -> None:
    head = Hourglass20(32, channels=8)
    # As its docstring says: 26 conv3x3, 4 1x1 projection shortcuts + the 1x1 logit conv.
    assert _convs(head, 3) == 26
    assert _convs(head, 1) == 5
    widths = {m.out_channels for m in head.modules() if isinstance(m, nn.Conv2d)}
    assert widths == {8, 16, 24, 1}  # c, 2c, 3c and the logit map


def test_conv4_has_four_convs() -> None:
    assert _convs(Conv4MaskHead(16, 8), 3) == 4


@pytest.mark.parametrize("kind", ["hourglass20", "conv4"])
def test_empty_input_keeps_every_parameter_in_the_graph(kind: str) -> None:
    head = build_mask_head(kind, 8, 4)
    out = head(torch.zeros(0, 8, 16, 16))
    assert out.shape == (0, 1, 32, 32)
    (out.sum() * 0.0).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_build_mask_head_and_size_checks() -> None:
    with pytest.raises(ValueError, match="mask_head"):
        build_mask_head("hourglass52", 8, 4)
    with pytest.raises(ValueError, match="divisible by 4"):
        Hourglass20(8, 4)(torch.zeros(1, 8, 14, 14))
