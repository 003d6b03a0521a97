"""MaskX R-CNN's mask prediction (Hu et al., "Learning to Segment Every Thing", Sec. 3): the
weight transfer function T, and class-specific mask logits on a mask head's features.

    T = WeightTransfer(5120, 256, layers=2, hidden=256, activation="leaky-relu")
    w_seg = T(w_det.detach())                                # (K, 256): each class's 1x1 conv
    predictor = MaskXPredictor(Conv4MaskHead(256, 256), kind="transfer", num_classes=K,
                               roi_size=14, mlp=True)
    logits = predictor(rois, classes, w_seg)                  # (R, 1, 28, 28), each RoI's class

- `WeightTransfer`: w_seg = T(w_det; theta), a 1-, 2- or 3-layer MLP (ReLU or LeakyReLU with
  slope 0.1 between layers; MSRA-initialised weights, zero biases, as the reference code), the
  same function for every class, so that it applies to classes whose masks were never seen.
- `MaskXPredictor`: the mask head's trunk and 2x upsampling (`models.heads.mask`), then each
  class's 1x1 mask-logit convolution, no bias, with weights from one of
  - ``transfer``: w_seg given by the caller (T's output, one row per class);
  - ``class-agnostic``: the head's own 1x1 conv, one set for all classes (the baseline);
  - ``class-specific``: learnt per class (the fully supervised oracle; with a bias).
  With ``mlp``, the class-agnostic MLP branch (Sec. 3.4): one fully connected layer from the
  flattened trunk features to M x M logits (Gaussian init, std 0.001), the same map added to
  every class's logits.

Naming convention: R = RoIs, K = classes, C = mask feature channels, S = RoI side, M = 2S.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from models.choices import MASK_PREDICTORS, TRANSFER_ACTIVATIONS

__all__ = ["LEAKY_SLOPE", "MaskXPredictor", "WeightTransfer"]

LEAKY_SLOPE = 0.1  # the reference code's LeakyReLU


class WeightTransfer(nn.Module):
    """T: (K, in_dim) detection weights -> (K, out_dim) mask weights (module doc)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        layers: int = 2,
        hidden: int = 256,
        activation: str = "leaky-relu",
    ) -> None:
        super().__init__()
        if layers not in (1, 2, 3):
            raise ValueError(f"transfer_layers: expected 1, 2 or 3, got {layers}")
        if activation not in TRANSFER_ACTIVATIONS:
            raise ValueError(
                f"transfer_activation: expected one of {TRANSFER_ACTIVATIONS}, got {activation!r}"
            )
        dims = [in_dim, *([hidden] * (layers - 1)), out_dim]
        slope = LEAKY_SLOPE if activation == "leaky-relu" else 0.0
        modules: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            linear = nn.Linear(a, b)
            nn.init.kaiming_normal_(linear.weight, a=slope, nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            modules.append(linear)
            if i < len(dims) - 2:  # between layers, not after the last
                modules.append(
                    nn.LeakyReLU(LEAKY_SLOPE) if activation == "leaky-relu" else nn.ReLU()
                )
        self.mlp = nn.Sequential(*modules)

    def forward(self, w_det: Tensor) -> Tensor:
        return self.mlp(w_det)  # (K, out_dim)


class MaskXPredictor(nn.Module):
    """Class-specific mask logits on the features of ``head`` (a `models.heads.mask` head with
    ``trunk`` and ``predictor``), as the module doc describes."""

    def __init__(
        self,
        head: nn.Module,
        *,
        kind: str,
        num_classes: int,
        roi_size: int,
        mlp: bool = False,
    ) -> None:
        super().__init__()
        if kind not in MASK_PREDICTORS:
            raise ValueError(f"mask_predictor: expected one of {MASK_PREDICTORS}, got {kind!r}")
        self.kind = kind
        self.num_classes = num_classes
        self.head = head
        self.channels = head.predictor.logits.in_channels
        if kind != "class-agnostic":
            # The head's own one-map 1x1 conv is replaced by the class-specific weights.
            del head.predictor.logits
        if kind == "class-specific":
            self.class_weights = nn.Parameter(torch.randn(num_classes, self.channels) * 0.001)
            self.class_bias = nn.Parameter(torch.zeros(num_classes))
        side = 2 * roi_size
        self.side = side
        self.mlp: nn.Linear | None = None
        if mlp:
            self.mlp = nn.Linear(head.trunk_channels * roi_size * roi_size, side * side)
            nn.init.normal_(self.mlp.weight, std=0.001)
            nn.init.zeros_(self.mlp.bias)

    @property
    def feature_dim(self) -> int:
        """The width of a class's mask weights (T's output width)."""
        return self.channels

    def _weights(self, w_seg: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(K', C) 1x1 weights and (K',) bias or None; K' = 1 for the class-agnostic head."""
        if self.kind == "transfer":
            if w_seg is None or w_seg.shape != (self.num_classes, self.channels):
                raise ValueError(
                    f"w_seg: the transfer predictor needs ({self.num_classes}, {self.channels}) "
                    f"mask weights, got {None if w_seg is None else tuple(w_seg.shape)}"
                )
            return w_seg, None
        if self.kind == "class-specific":
            return self.class_weights, self.class_bias
        conv = self.head.predictor.logits  # (1, C, 1, 1)
        return conv.weight.view(1, self.channels), conv.bias

    def forward(
        self, rois: Tensor, classes: Tensor | None = None, w_seg: Tensor | None = None
    ) -> Tensor:
        """(R, C_in, S, S) RoI features -> mask logits: (R, 1, M, M) for each RoI's class
        ``classes`` (R,) int64, or (R, K, M, M) for every class when ``classes`` is None (the
        class-agnostic head gives the same map for each)."""
        trunk = self.head.trunk(rois)  # (R, C_t, S, S)
        features = self.head.predictor.features(trunk)  # (R, C, M, M)
        weights, bias = self._weights(w_seg)  # (K', C), (K',)
        agnostic = self.kind == "class-agnostic"
        if classes is None:
            logits = torch.einsum("rchw,kc->rkhw", features, weights)  # (R, K', M, M)
            if bias is not None:
                logits = logits + bias.view(1, -1, 1, 1)
            if agnostic:
                logits = logits.expand(-1, self.num_classes, -1, -1)  # (R, K, M, M)
        else:
            rows = torch.zeros_like(classes) if agnostic else classes
            logits = torch.einsum("rchw,rc->rhw", features, weights[rows])[:, None]  # (R,1,M,M)
            if bias is not None:
                logits = logits + bias[rows].view(-1, 1, 1, 1)
        if self.mlp is not None:
            shared = self.mlp(trunk.flatten(1)).view(-1, 1, self.side, self.side)  # (R, 1, M, M)
            logits = logits + shared  # the same class-agnostic map tiled over the classes
        return logits
