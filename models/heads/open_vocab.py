"""The open-vocabulary classifier both detectors share (ALP paper, Sec. 3.2 and Sec. 4).

Features are projected to the phrase-embedding space (a 1x1 conv on dense maps for FCOS-MO, a
linear layer on RoI features for Mask R-CNN*) and scored by cosine similarity / tau against
candidate phrase embeddings; a fixed zero vector is the background, so its logit is always 0.

- Training with boxes: the candidates are the unique phrases of the batch (each location's or
  RoI's target among them, the others its negatives) plus the background; cross-entropy, with
  the background's -log p scaled by ``background_alpha`` (most locations are background).
- Training with image labels (Detic-style, Sec. 4 "ALPs without boxes"): one feature per image
  (the largest RPN proposal's) against all phrases of the batch, soft target 1/K on each of the
  image's K phrases (`image_label_loss`).
- Inference: the class embeddings with the background, a (C + 1)-way softmax.

Naming convention: N = locations or RoIs, C = candidate phrases or classes, U = unique phrases of
the batch, M = instances, I = images with image labels, D = text_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "OpenVocabClassifier",
    "contrastive_logits",
    "contrastive_loss",
    "image_label_loss",
    "phrase_candidates",
]


def contrastive_logits(features: Tensor, embeddings: Tensor, tau: float) -> Tensor:
    """Open-vocabulary logits (paper Sec. 3.2): (N, D) features, (C, D) phrases -> (N, 1 + C).

    Column 0 is the background, whose embedding is the zero vector: its cosine, and so its logit,
    is 0. Columns 1.. are cos(feature, phrase) / tau. Both sides are L2-normalised here, in
    float32 (a temperature of 0.01 makes logits reach 100).
    """
    # Autocast would run the matmul in fp16 / bf16 whatever the inputs' dtype: off here.
    with torch.autocast(features.device.type, enabled=False):
        features = F.normalize(features.float(), dim=1)
        embeddings = F.normalize(embeddings.float(), dim=1)
        cosine = features @ embeddings.T  # (N, C)
        return torch.cat([cosine.new_zeros(cosine.shape[0], 1), cosine / tau], dim=1)


def contrastive_loss(logits: Tensor, labels: Tensor, background_alpha: float) -> Tensor:
    """Per-location cross-entropy (N,) for (N, 1 + C) logits and int64 (N,) labels.

    Label 0 is background; its -log p is multiplied by ``background_alpha`` (paper Sec. 3.2: most
    locations are background and would dominate the loss otherwise).
    """
    loss = F.cross_entropy(logits, labels, reduction="none")  # (N,)
    weight = torch.where(labels == 0, background_alpha, 1.0).to(loss.dtype)
    return loss * weight


def phrase_candidates(phrase_ids: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unique phrases of the batch: their ids (U,) in increasing order, the (M,) index of each
    instance's phrase among them, and their (U, D) embeddings (each phrase's first instance's)."""
    unique_ids, inverse = torch.unique(phrase_ids, return_inverse=True)  # (U,), (M,)
    first = torch.full_like(unique_ids, phrase_ids.numel()).scatter_reduce(
        0, inverse, torch.arange(inverse.numel(), device=inverse.device), reduce="amin"
    )  # (U,)
    return unique_ids, inverse, embeddings[first]


def image_label_loss(features: Tensor, candidates: Tensor, targets: Tensor, tau: float) -> Tensor:
    """Soft-target cross-entropy (I,) of (I, D) features against (U, D) phrase embeddings.

    ``targets`` (I, U) holds each image's distribution over the phrases, 1/K on its K phrases
    (the ALP paper's K-hot target; Detic's binary cross-entropy needs a closed class list, which
    free-form phrases do not have). No background column: the feature is of a region assumed to
    show the labelled object.
    """
    logits = contrastive_logits(features, candidates, tau)[:, 1:]  # (I, U)
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1)


class OpenVocabClassifier(nn.Module):
    """Projection to ``text_dim`` plus the scoring of the module doc.

    ``dense=True``: a 1x1 conv, (B, in_channels, h, w) -> (B, D, h, w) (FCOS-MO's dense head);
    ``dense=False``: a linear layer, (N, in_channels) -> (N, D) (RoI features). ``forward``
    projects; `logits`, `loss` and `image_label_loss` score projected features of shape (N, D).
    """

    def __init__(
        self,
        in_channels: int,
        text_dim: int,
        *,
        tau: float = 0.01,
        background_alpha: float = 0.1,
        dense: bool,
    ) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau: expected > 0, got {tau}")
        if not 0 <= background_alpha <= 1:
            raise ValueError(f"background_alpha: expected in [0, 1], got {background_alpha}")
        self.projection: nn.Module = (
            nn.Conv2d(in_channels, text_dim, 1) if dense else nn.Linear(in_channels, text_dim)
        )
        nn.init.normal_(self.projection.weight, std=0.01)
        nn.init.zeros_(self.projection.bias)
        self.text_dim = text_dim
        self.tau = tau
        self.background_alpha = background_alpha

    def forward(self, features: Tensor) -> Tensor:
        return self.projection(features)

    def logits(self, embedded: Tensor, embeddings: Tensor) -> Tensor:
        """(N, D) projected features, (C, D) phrases -> (N, 1 + C), background first."""
        return contrastive_logits(embedded, embeddings, self.tau)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(N,) per-row losses, the background's scaled by ``background_alpha``."""
        return contrastive_loss(logits, labels, self.background_alpha)

    def image_label_loss(self, embedded: Tensor, candidates: Tensor, targets: Tensor) -> Tensor:
        """(I,) soft-target losses of (I, D) projected features (`image_label_loss`)."""
        return image_label_loss(embedded, candidates, targets, self.tau)
