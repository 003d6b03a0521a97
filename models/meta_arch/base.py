"""What every detector of the library shares: the input contract, normalisation and padding,
and the split of ``forward`` into training losses and inference.

    losses = detector(images, targets)                          # training mode
    detections = detector(images, class_embeddings=emb)         # eval mode, without autograd

Subclasses implement ``losses(features_input, targets, image_size)`` and ``inference(
features_input, class_embeddings, image_size)`` on the normalised, padded batch, and set
``size_divisibility`` (the coarsest stride their backbone needs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.heads.diagnostics import TrainingLosses

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Detector"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Detector(nn.Module):
    """Base of the detectors: images uint8 or float (B, 3, H, W), RGB 0-255.

    Images are normalised with the ImageNet mean / std, then zero-padded at the bottom / right to
    a multiple of ``size_divisibility``; outputs refer to the unpadded image. Training
    (``self.training``) needs one target dict per image (`models.targets`) and returns a dict of
    scalar losses, a `TrainingLosses` whose ``diagnostics`` hold figures that are no loss (the
    foreground classification accuracy, `models.heads.diagnostics`); inference needs
    ``class_embeddings`` (C, query_dim: text_dim, or the class count of a fixed-class detector,
    whose rows are then one-hot) and returns one dict per image with ``boxes_xyxy_px``,
    ``scores``, ``labels`` (rows of ``class_embeddings``) and ``masks``, as torchvision's
    detectors do.

    The inference thresholds ``score_threshold`` and ``nms_threshold`` are plain attributes, so
    evaluation may override them for a run (`models.inference.inference_settings`).
    """

    size_divisibility = 32

    def __init__(
        self,
        *,
        text_dim: int,
        score_threshold: float,
        nms_threshold: float,
        detections_per_image: int,
    ) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        # Non-persistent: derived from constants, so never part of a checkpoint.
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False
        )

    def forward(
        self,
        images: Tensor,
        targets: Sequence[Mapping[str, Any]] | None = None,
        *,
        class_embeddings: Tensor | None = None,
    ) -> TrainingLosses | list[dict[str, Tensor]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
        image_size = (images.shape[-2], images.shape[-1])
        x = self.preprocess(images)
        if self.training:
            if targets is None or len(targets) != images.shape[0]:
                raise ValueError(
                    f"targets: training needs one target dict per image ({images.shape[0]}), "
                    f"got {None if targets is None else len(targets)}"
                )
            return self.losses(x, list(targets), image_size)
        if class_embeddings is None:
            raise ValueError(
                f"class_embeddings: inference needs (C, {self.query_dim}) class embeddings"
            )
        if class_embeddings.dim() != 2 or class_embeddings.shape[1] != self.query_dim:
            raise ValueError(
                f"class_embeddings: expected (C, {self.query_dim}), got "
                f"{tuple(class_embeddings.shape)}"
            )
        with torch.no_grad():
            return self.inference(x, class_embeddings, image_size)

    @property
    def query_dim(self) -> int:
        """Width of the rows of ``class_embeddings`` at inference: ``text_dim`` for the
        open-vocabulary detectors; a fixed-class detector overrides it."""
        return self.text_dim

    def preprocess(self, images: Tensor) -> Tensor:
        """Normalised float (B, 3, H', W'), H' and W' padded up to ``size_divisibility``."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        pad_h = -x.shape[-2] % self.size_divisibility
        pad_w = -x.shape[-1] % self.size_divisibility
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def losses(
        self, images: Tensor, targets: list[Mapping[str, Any]], image_size: tuple[int, int]
    ) -> TrainingLosses:
        raise NotImplementedError

    def inference(
        self, images: Tensor, class_embeddings: Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        raise NotImplementedError
