"""FCOS-MO's dense head over the FPN levels (ALP paper, Sec. 3.2, Fig. 3).

    head = FCOSHead(channels=256, num_convs=4, text_dim=512, norm="BN", num_levels=5,
                    use_centerness=True)
    embeds, boxes, centers = head([p3, p4, p5, p6, p7])

Two towers of ``num_convs`` x (conv3x3 -> norm -> ReLU) shared across levels: the classification
tower ends in the open-vocabulary classifier's projection to ``text_dim`` (`OpenVocabClassifier`,
dense), the box tower in (l, t, r, b) distances in strides (a learnable scale per level, then
ReLU) and centerness logits. The maths of matching and targets is in `models.heads.fcos_targets`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import make_norm
from models.choices import HEAD_NORMS
from models.heads.open_vocab import OpenVocabClassifier

__all__ = ["FCOSHead", "Scale"]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level on the box branch, as FCOS)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """Shared FCOS heads over the levels: classification tower -> ``classifier`` (projection to
    ``text_dim``); box tower -> (l, t, r, b) in strides (per-level Scale, ReLU) and centerness.

    With ``norm="BN"`` each level keeps its own BatchNorms (paper Sec. 3.4), with "GN" the
    GroupNorms are shared; the convs are shared in both cases.
    """

    def __init__(
        self,
        *,
        channels: int,
        num_convs: int,
        text_dim: int,
        norm: str,
        num_levels: int,
        use_centerness: bool,
        tau: float = 0.01,
        background_alpha: float = 0.1,
    ) -> None:
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ValueError(f"head_norm: expected one of {HEAD_NORMS}, got {norm!r}")
        self.num_levels = num_levels
        self.cls_convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs)
        )
        self.box_convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs)
        )
        self.cls_norms = self._norms(norm, channels, num_convs, num_levels)
        self.box_norms = self._norms(norm, channels, num_convs, num_levels)
        self.classifier = OpenVocabClassifier(
            channels, text_dim, tau=tau, background_alpha=background_alpha, dense=True
        )
        self.box_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1) if use_centerness else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        # Every side starts at 1 stride, in the linear part of the ReLU: with a zero bias about
        # half the sides start at 0, and a side stuck there never receives a gradient again.
        nn.init.constant_(self.box_pred.bias, 1.0)

    @staticmethod
    def _norms(norm: str, channels: int, num_convs: int, num_levels: int) -> nn.ModuleList:
        """norms[level][conv]: one set per level for BN; one shared set otherwise."""

        def make() -> nn.Module:
            return nn.Identity() if norm == "none" else make_norm(norm)(channels)

        sets = num_levels if norm == "BN" else 1
        return nn.ModuleList(nn.ModuleList(make() for _ in range(num_convs)) for _ in range(sets))

    def _tower(self, x: Tensor, convs: nn.ModuleList, norms: nn.ModuleList, level: int) -> Tensor:
        level_norms = norms[level if len(norms) > 1 else 0]
        for conv, norm in zip(convs, level_norms, strict=True):
            x = F.relu(norm(conv(x)))
        return x

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per level: embeddings (B, D, h, w), (l, t, r, b) (B, 4, h, w) >= 0 in strides, and
        centerness logits (B, 1, h, w) (an empty list without the centerness branch)."""
        if len(features) != self.num_levels:
            raise ValueError(f"head: expected {self.num_levels} levels, got {len(features)}")
        embeds, boxes, centers = [], [], []
        for level, feature in enumerate(features):
            cls = self._tower(feature, self.cls_convs, self.cls_norms, level)
            box = self._tower(feature, self.box_convs, self.box_norms, level)
            embeds.append(self.classifier(cls))
            boxes.append(F.relu(self.scales[level](self.box_pred(box))))
            if self.centerness is not None:
                centers.append(self.centerness(box))
        return embeds, boxes, centers
