"""ResNet + FPN backbone: P3..P7 shapes, norms, local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.backbone import FPN_STRIDES, ResNetFPN


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN"])
def test_resnet_small_gives_five_levels(norm: str) -> None:
    backbone = ResNetFPN(name="resnet_small", norm=norm, fpn_channels=32)
    maps = backbone(torch.randn(2, 3, 128, 256))
    assert backbone.strides == FPN_STRIDES == (8, 16, 32, 64, 128)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 128 // s, 256 // s) for s in FPN_STRIDES]
    kinds = {type(m).__name__ for m in backbone.body.modules()}
    expected = {"BN": "BatchNorm2d", "FrozenBN": "FrozenBatchNorm2d", "GN": "GroupNorm"}[norm]
    assert expected in kinds


def test_resnet_small_widths() -> None:
    body = ResNetFPN(name="resnet_small", fpn_channels=16).body
    assert body.conv1.out_channels == 16
    widths = [
        layer[-1].conv2.out_channels
        for layer in (body.layer1, body.layer2, body.layer3, body.layer4)
    ]
    assert widths == [16, 32, 64, 128]
    assert not hasattr(body, "fc")


def test_p6_p7_come_from_p5() -> None:
    backbone = ResNetFPN(name="resnet_small", fpn_channels=16)
    assert backbone.fpn.extra_blocks.use_P5  # equal in/out channels: LastLevelP6P7 reads P5
    assert backbone.fpn.extra_blocks.p6.in_channels == 16


def test_torchvision_resnet_builds_without_weights() -> None:
    backbone = ResNetFPN(name="resnet18", norm="FrozenBN", fpn_channels=16)
    maps = backbone(torch.randn(1, 3, 128, 128))
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2, 1]


def test_all_parameters_get_gradients() -> None:
    backbone = ResNetFPN(name="resnet_small", fpn_channels=16)
    sum(m.sum() for m in backbone(torch.randn(2, 3, 128, 128))).backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_local_weights_load(tmp_path: Path) -> None:
    source = ResNetFPN(name="resnet_small", fpn_channels=16)
    state = {**source.body.state_dict(), "fc.weight": torch.zeros(3, 128)}  # fc is ignored
    path = tmp_path / "small.pth"
    torch.save(state, path)
    loaded = ResNetFPN(name="resnet_small", weights=str(path), fpn_channels=16)
    for (name, a), (_, b) in zip(
        source.body.state_dict().items(), loaded.body.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_weights_with_missing_keys_name_the_file(tmp_path: Path) -> None:
    state = ResNetFPN(name="resnet_small", fpn_channels=16).body.state_dict()
    del state["layer4.0.conv1.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"broken\.pth.*layer4\.0\.conv1\.weight"):
        ResNetFPN(name="resnet_small", weights=str(path), fpn_channels=16)
    with pytest.raises(FileNotFoundError, match=r"nothing\.pth"):
        ResNetFPN(name="resnet_small", weights=str(tmp_path / "nothing.pth"))


def test_unknown_names_are_errors() -> None:
    with pytest.raises(ValueError, match="backbone"):
        ResNetFPN(name="vgg16")
    with pytest.raises(ValueError, match="norm"):
        ResNetFPN(name="resnet_small", norm="SyncBN")
