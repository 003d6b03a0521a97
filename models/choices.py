"""The names a config may choose from, in one torch-free module: the configs check flags against
them without importing the parts (``--help`` stays fast), and the parts validate against the
same tuples."""

from __future__ import annotations

__all__ = ["BACKBONES", "BACKBONE_NORMS", "CLIP_B32", "DEVICES", "HEAD_NORMS", "MASK_HEADS"]

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet_small")
BACKBONE_NORMS = ("BN", "FrozenBN", "GN")
HEAD_NORMS = ("GN", "BN", "none")
MASK_HEADS = ("hourglass20", "conv4")
DEVICES = ("auto", "cpu", "cuda")
CLIP_B32 = "open_clip:ViT-B-32:openai"  # the ALP paper's phrase encoder (Sec. 3.2)
