"""Class-agnostic mask heads on RoI-aligned features: (K, C_in, S, S) -> (K, 1, 2S, 2S) logits,
and how the detectors train and apply them.

- `Hourglass20`: the deep mask head of Deep-MARC (Birodkar et al.) that FCOS-MO and Mask R-CNN*
  use (ALP paper Sec. 3.2 "Mask head", Sec. 4 change (2)): one hourglass of residual blocks.
- `Conv4MaskHead`: Mask R-CNN's default head (4 conv3x3 + ReLU), the ablation of paper Tab. 5.

Both end like Mask R-CNN's predictor: a 2x2 transposed conv with stride 2 + ReLU, then a 1x1
conv to one logit map. ``head.trunk(x)`` (the features before it) and
``head.predictor.features(...)`` (the upsampled features its 1x1 conv reads) let MaskX R-CNN put
its own class-specific 1x1 weights there (`models.heads.weight_transfer`). Heads take any
number of RoIs, none included (a (0, C, S, S) input gives a (0, 1, 2S, 2S) output whose sum
still reaches every parameter with a zero gradient).

FCOS-MO and Mask R-CNN* train the head on ground-truth boxes only (Deep-MARC's recipe, Sec. 3.2: no
proposals involved), `mask_loss`, and run it on their final boxes at inference, `predict_masks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import alp_curation.torchvision_fix  # noqa: F401

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import paste_masks_in_image

from models.backbone import make_norm
from models.choices import MASK_HEADS
from models.ops import concat_boxes, multilevel_roi_align, roi_align, zero_weighted
from models.targets import Targets

__all__ = [
    "Conv4MaskHead",
    "Hourglass20",
    "build_mask_head",
    "mask_loss",
    "mask_targets",
    "predict_masks",
]


class _ConvNorm(nn.Sequential):
    """conv (no bias) -> norm [-> ReLU]."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, norm: str, *, stride: int = 1, relu: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            make_norm(norm)(c_out),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _Residual(nn.Module):
    """Residual block: conv3x3-norm-ReLU, conv3x3-norm, plus the input (through a 1x1 conv-norm
    when the stride or the width changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _ConvNorm(c_in, c_out, 3, norm, stride=stride),
            _ConvNorm(c_out, c_out, 3, norm, relu=False),
        )
        self.skip = (
            _ConvNorm(c_in, c_out, 1, norm, stride=stride, relu=False)
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.skip(x))


def _blocks(c_in: int, c_out: int, count: int, norm: str, stride: int = 1) -> nn.Sequential:
    """``count`` residual blocks from ``c_in`` to ``c_out`` channels, as the hourglass of
    tensorflow/models repeats them: the first block strides and, when it does, also takes the new
    width; otherwise the last block changes the width."""
    if count == 1:
        return nn.Sequential(_Residual(c_in, c_out, norm, stride))
    width = c_in if stride == 1 else c_out
    blocks = [_Residual(c_in, width, norm, stride)]
    blocks += [_Residual(width, width, norm) for _ in range(count - 2)]
    blocks.append(_Residual(width, c_out, norm))
    return nn.Sequential(*blocks)


class _EncoderDecoder(nn.Module):
    """One recursive hourglass level: a full-resolution shortcut branch, plus a branch that
    downsamples by 2, runs the inner level, comes back to ``dims[0]`` channels and is upsampled
    (nearest) onto the shortcut."""

    def __init__(self, dims: list[int], blocks: list[int], norm: str) -> None:
        super().__init__()
        outer, inner = dims[0], dims[1]
        self.shortcut = _blocks(outer, outer, blocks[0], norm)
        self.down = _blocks(outer, inner, blocks[0], norm, stride=2)
        if len(dims) > 2:
            self.inner: nn.Module = _EncoderDecoder(dims[1:], blocks[1:], norm)
        else:
            self.inner = _blocks(inner, inner, blocks[1], norm)
        self.up = _blocks(inner, outer, blocks[0], norm)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.upsample(self.up(self.inner(self.down(x))))


class _Predictor(nn.Module):
    """2x2 transposed conv (stride 2) + ReLU, then a 1x1 conv to one logit map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.logits = nn.Conv2d(channels, 1, 1)
        nn.init.kaiming_normal_(self.upsample.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.upsample.bias)
        nn.init.normal_(self.logits.weight, std=0.001)
        nn.init.zeros_(self.logits.bias)

    def features(self, x: Tensor) -> Tensor:
        """The upsampled features the 1x1 logit conv reads: (K, C, S, S) -> (K, C, 2S, 2S)."""
        return self.upsample(x).relu()

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.features(x))


class Hourglass20(nn.Module):
    """Hourglass-20 mask head (Deep-MARC's ``hourglass_20`` without initial downsampling).

    (K, in_channels, S, S) -> (K, 1, 2S, 2S) mask logits; S must be divisible by 4.

    With c = ``channels``: an input conv3x3 to c, a residual block to 2c, one hourglass with
    blocks_per_stage [1, 2, 2] and channel dims [2c, 2c, 3c] (two downsamplings by 2: S -> S/2
    -> S/4, nearest upsampling back, shortcut at each resolution), an output conv3x3 at 2c, then
    the transposed-conv predictor.

    Layer count: 26 conv3x3 (input 1 + input residual 2 + outer level 6 [shortcut, down, up: one
    block each] + inner level 16 [shortcut, down, inner, up: two blocks each] + output 1), 4 1x1
    projection shortcuts (where a block changes stride or width), 1 transposed conv and the 1x1
    logit conv. "20" is the nominal name from tensorflow/models.

    Normalisation is GroupNorm by default (``norm="BN"`` is available): RoI counts vary from
    zero to thousands per step, which GroupNorm, computed per RoI, does not mind.
    """

    def __init__(self, in_channels: int, channels: int = 64, norm: str = "GN") -> None:
        super().__init__()
        c = channels
        self.stem = nn.Sequential(_ConvNorm(in_channels, c, 3, norm), _Residual(c, 2 * c, norm))
        self.hourglass = _EncoderDecoder([2 * c, 2 * c, 3 * c], [1, 2, 2], norm)
        self.output_conv = _ConvNorm(2 * c, 2 * c, 3, norm)
        self.predictor = _Predictor(2 * c)

    @property
    def trunk_channels(self) -> int:
        return self.output_conv[0].out_channels

    def trunk(self, x: Tensor) -> Tensor:
        """Features before the predictor: (K, in_channels, S, S) -> (K, 2c, S, S)."""
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"Hourglass20: RoI size must be divisible by 4, got {tuple(x.shape)}")
        return self.output_conv(self.hourglass(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.trunk(x))


class Conv4MaskHead(nn.Module):
    """Mask R-CNN's 4-conv mask head: 4 x (conv3x3 -> ReLU) at ``channels``, then the
    transposed-conv predictor. (K, in_channels, S, S) -> (K, 1, 2S, 2S) logits."""

    def __init__(self, in_channels: int, channels: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            conv = nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.predictor = _Predictor(channels)

    @property
    def trunk_channels(self) -> int:
        return self.convs[-2].out_channels

    def trunk(self, x: Tensor) -> Tensor:
        """Features before the predictor: (K, in_channels, S, S) -> (K, channels, S, S)."""
        return self.convs(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.trunk(x))


def build_mask_head(kind: str, in_channels: int, channels: int) -> nn.Module:
    """ "hourglass20" -> `Hourglass20` (c = channels); "conv4" -> `Conv4MaskHead` (width
    channels)."""
    if kind == "hourglass20":
        return Hourglass20(in_channels, channels)
    if kind == "conv4":
        return Conv4MaskHead(in_channels, channels)
    raise ValueError(f"mask_head: expected one of {MASK_HEADS}, got {kind!r}")


# ---------------------------------------------------------------------------------------------
# Training on ground-truth boxes, inference on detections


def mask_targets(masks: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Binary (k, 1, size, size) targets: each (H, W) mask RoI-aligned by its own box and
    thresholded at 0.5 (one grid_sample call for the image's k masks)."""
    index = torch.arange(len(boxes), device=boxes.device)
    return roi_align(masks[:, None].float(), boxes, index, size, 1.0) >= 0.5


def mask_loss(
    head: nn.Module,
    features: Sequence[Tensor],
    strides: Sequence[int],
    targets: Targets,
    *,
    roi_size: int,
    levels: tuple[int, int],
) -> Tensor:
    """Mean binary cross-entropy of ``head`` on the ground-truth boxes that have masks, against
    the masks RoI-aligned to the head's 2S x 2S output (S = ``roi_size``). The RoI features come
    from the FPN level each box's size picks, within ``levels`` (min, max). Without masks in the
    batch: a zero that keeps the head in the graph."""
    rois = multilevel_roi_align(
        features, targets.mask_boxes, targets.mask_batch, roi_size, strides,
        min_level=levels[0], max_level=levels[1],
    )  # fmt: skip  # (K, C, S, S)
    logits = head(rois)  # (K, 1, 2S, 2S)
    if logits.shape[0] == 0:
        return zero_weighted(logits)
    gt = torch.cat([mask_targets(masks, boxes, 2 * roi_size) for masks, boxes in targets.masks])
    return F.binary_cross_entropy_with_logits(logits.float(), gt.float())


def predict_masks(
    head: Callable[[Tensor], Tensor],
    features: Sequence[Tensor],
    strides: Sequence[int],
    detections: list[dict[str, Tensor]],
    image_size: tuple[int, int],
    *,
    roi_size: int,
    levels: tuple[int, int],
) -> None:
    """Run ``head`` on the ``boxes_xyxy_px`` of every image's detections at once and add
    ``masks``: float32 (k, 1, H, W) probabilities pasted into the (H, W) image. ``head`` maps
    (K, C, S, S) RoI features of the batch's detections, in image order, to (K, 1, 2S, 2S)
    logits (a mask head, or a class-specific predictor bound to the detections' classes)."""
    boxes, batch = concat_boxes([d["boxes_xyxy_px"] for d in detections])  # (K, 4), (K,)
    rois = multilevel_roi_align(
        features, boxes, batch, roi_size, strides, min_level=levels[0], max_level=levels[1]
    )
    probs = head(rois).sigmoid().float()  # (K, 1, 2S, 2S)
    counts = [len(d["boxes_xyxy_px"]) for d in detections]
    for d, mask in zip(detections, probs.split(counts), strict=True):
        d["masks"] = paste_masks_in_image(mask, d["boxes_xyxy_px"], image_size)  # (k, 1, H, W)
