"""ResNet + FPN backbone: five feature maps, P3..P7 (FCOS) or P2..P6 (R-CNN).

    backbone = ResNetFPN(name="resnet50", weights="resnet50-imagenet.pth", norm="FrozenBN")
    p3, p4, p5, p6, p7 = backbone(images)  # (B, fpn_channels, H / stride, W / stride) each
    p2, p3, p4, p5, p6 = ResNetFPN(name="resnet50", levels="p2-p6")(images)

Both are torchvision's `FeaturePyramidNetwork` with a different top:

- ``levels="p3-p7"`` (FCOS): C3..C5 feed the FPN (P3..P5); P6 and P7 come from P5
  (``LastLevelP6P7`` with equal in/out channels reads the FPN output P5, not C5: detectron2
  FCOS's "p5" top block). Strides 8..128.
- ``levels="p2-p6"`` (Mask R-CNN): C2..C5 feed the FPN (P2..P5); P6 is P5 max-pooled with stride
  2 (``LastLevelMaxPool``, as detectron2's and torchvision's R-CNN FPN), read by the RPN only.
  Strides 4..64.

Weights are never downloaded: random initialisation, or a local state dict.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import alp_curation.torchvision_fix  # noqa: F401

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from models.choices import BACKBONE_NORMS, BACKBONES

__all__ = [
    "BACKBONES",
    "FPN_LEVELS",
    "FPN_STRIDES",
    "ResNetFPN",
    "make_norm",
    "resnet_small",
]

FPN_STRIDES = (8, 16, 32, 64, 128)  # P3..P7
# The pyramids a detector may ask for: first ResNet stage fed to the FPN, and the strides.
FPN_LEVELS = {"p3-p7": (3, FPN_STRIDES), "p2-p6": (2, (4, 8, 16, 32, 64))}

_TORCHVISION_RESNETS: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
}
# Channels of C2..C5.
_WIDTHS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "resnet_small": (16, 32, 64, 128),
}


def _group_count(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= 32 dividing ``channels`` and leaving >= 2 channels per group (32
    for every standard width; narrow CPU models get fewer, so a 1x1 map still normalises)."""
    limit = max(1, min(max_groups, channels // 2))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def make_norm(kind: str) -> Callable[[int], nn.Module]:
    """A norm-layer factory ``channels -> module`` for "BN", "FrozenBN" or "GN" (32 groups, fewer
    for narrow layers: see `_group_count`)."""
    if kind == "BN":
        return nn.BatchNorm2d
    if kind == "FrozenBN":
        return FrozenBatchNorm2d
    if kind == "GN":
        return lambda channels: nn.GroupNorm(_group_count(channels), channels)
    raise ValueError(f"norm: expected one of {BACKBONE_NORMS}, got {kind!r}")


class _SmallResNet(nn.Module):
    """The body of `resnet_small`: torchvision's module names, only narrower."""

    def __init__(self, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (16, 32, 64, 128)
        for i, (c_in, c_out) in enumerate(zip((16, *widths[:-1]), widths, strict=True)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or c_in != c_out:
                downsample = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(c_out)
                )
            block = resnet.BasicBlock(c_in, c_out, stride, downsample, norm_layer=norm_layer)
            self.add_module(f"layer{i + 1}", nn.Sequential(block))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def resnet_small(norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """A narrow ResNet for CPU experiments: BasicBlocks [1, 1, 1, 1], C2..C5 widths 16..128.

    Stem of 16 channels (conv7x7 stride 2 + max-pool: stride 4 at C2), no classifier, and the
    module names of torchvision's ResNets (conv1, bn1, layer1..layer4).
    """
    return _SmallResNet(norm_layer)


def _load_weights(body: nn.Module, path: str) -> None:
    """Load a torchvision-style ResNet state dict from ``path``; classifier keys are ignored."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"backbone_weights: no such file {str(file)!r}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle / zip errors differ by torch version
        raise ValueError(
            f"backbone_weights {str(file)!r}: not a torch state dict ({error})"
        ) from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(
            f"backbone_weights {str(file)!r}: expected a state dict, got {type(state).__name__}"
        )
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = body.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"backbone_weights {str(file)!r}: does not match the backbone; missing keys "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected "
            f"keys {result.unexpected_keys[:5]} ({len(result.unexpected_keys)}); expected a "
            "torchvision ResNet state dict (fc.* may be present)"
        )


class ResNetFPN(nn.Module):
    """ResNet body + FPN: images (B, 3, H, W), normalised -> five maps, finest first.

    ``levels`` "p3-p7" gives [P3, ..., P7], "p2-p6" gives [P2, ..., P6] (module doc); each map is
    (B, fpn_channels, ceil(H / s), ceil(W / s)) for s in ``self.strides``.

    ``norm`` is the ResNet's normalisation ("BN", "FrozenBN" or "GN"); the FPN convs use the
    same one (paper Sec. 3.4: SyncBN in backbone, FPN and heads), except with "FrozenBN", the
    mode for fine-tuning pretrained weights, where the FPN has none (its layers are new).
    """

    def __init__(
        self,
        *,
        name: str = "resnet50",
        weights: str | None = None,
        norm: str = "BN",
        fpn_channels: int = 256,
        levels: str = "p3-p7",
    ) -> None:
        super().__init__()
        if levels not in FPN_LEVELS:
            raise ValueError(f"levels: expected one of {sorted(FPN_LEVELS)}, got {levels!r}")
        norm_layer = make_norm(norm)
        if name == "resnet_small":
            body = resnet_small(norm_layer)
        elif name in _TORCHVISION_RESNETS:
            body = _TORCHVISION_RESNETS[name](weights=None, norm_layer=norm_layer)
        else:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {name!r}")
        for unused in ("fc", "avgpool"):  # the classifier would never receive a gradient
            if hasattr(body, unused):
                delattr(body, unused)
        if weights is not None:
            _load_weights(body, weights)
        self.body = body
        self.out_channels = fpn_channels
        self.first_level, self.strides = FPN_LEVELS[levels]
        in_channels = list(_WIDTHS[name][self.first_level - 2 :])  # C2..C5 or C3..C5
        top = (
            LastLevelP6P7(fpn_channels, fpn_channels)  # equal channels: reads P5
            if levels == "p3-p7"
            else LastLevelMaxPool()
        )
        self.fpn = FeaturePyramidNetwork(
            in_channels,
            fpn_channels,
            extra_blocks=top,
            norm_layer=None if norm == "FrozenBN" else norm_layer,
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        body = self.body
        x = body.maxpool(body.relu(body.bn1(body.conv1(images))))
        stages = [body.layer1(x)]  # C2
        for layer in (body.layer2, body.layer3, body.layer4):
            stages.append(layer(stages[-1]))  # C3, C4, C5
        inputs = OrderedDict(
            (f"p{level}", c) for level, c in enumerate(stages, start=2) if level >= self.first_level
        )
        return list(self.fpn(inputs).values())  # five maps, finest first
