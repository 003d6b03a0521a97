"""The names a config may choose from, in one torch-free module: the configs check flags against
them without importing the parts (``--help`` stays fast), and the parts validate against the
same tuples."""

from __future__ import annotations

__all__ = [
    "BACKBONES",
    "BACKBONE_NORMS",
    "CLIP_B32",
    "DEVICES",
    "HEAD_NORMS",
    "MASK_HEADS",
    "MASK_PREDICTORS",
    "TRAIN_STAGES",
    "TRANSFER_ACTIVATIONS",
    "TRANSFER_INPUTS",
]

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet_small")
BACKBONE_NORMS = ("BN", "FrozenBN", "GN")
HEAD_NORMS = ("GN", "BN", "none")
MASK_HEADS = ("hourglass20", "conv4")
DEVICES = ("auto", "cpu", "cuda")
CLIP_B32 = "open_clip:ViT-B-32:openai"  # the ALP paper's phrase encoder (Sec. 3.2)

# MaskX R-CNN (Hu et al., "Learning to Segment Every Thing"): how each class's mask weights come
# about, what the weight transfer function T reads, its hidden activation, and the training stage.
MASK_PREDICTORS = ("transfer", "class-agnostic", "class-specific")
TRANSFER_INPUTS = ("cls+box", "cls", "box", "randn", "text")
TRANSFER_ACTIVATIONS = ("leaky-relu", "relu")
TRAIN_STAGES = ("joint", "detection", "masks")
