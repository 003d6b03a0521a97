"""Inference with any detector of the library: load a checkpoint, embed class names, run images,
and map the predictions back to the original pixels. `models.predict` is its command line and
re-exports every name here.

    model = load_model("run/checkpoint.pt")                 # eval mode, on cuda when there
    names = ["dog", "sofa", "red car"]
    embeddings = embed_classes(model, names)                # the checkpoint's text encoder
    detections = predict_image(model, rgb_uint8_hwc, names, embeddings)

The classes are free text for the open-vocabulary detectors: each is embedded with the
checkpoint's text encoder through the 63-template prompt ensemble
(`alp_curation.prompts.ensemble_embeddings`). A MaskX R-CNN checkpoint has a fixed class list:
`class_queries` picks among its names and refuses any other. `predict_image` takes one HWC
uint8 array at the checkpoint's training size by default (as the command line); `predict_batch`
a batch that went through `alp_dataset.transforms.EvalTransform` (evaluation uses it).
Degenerate boxes (under a pixel wide or high in the image, as a box in the padding becomes once
clipped onto the image's edge) are dropped with their masks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alp_curation.flags import split_class_names
from alp_dataset.transforms import GEOMETRY, EvalTransform, Geometry

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "MIN_BOX_SIDE_PX",
    "PAD_MULTIPLE",
    "CheckpointInfo",
    "ImagePredictions",
    "checkpoint_info",
    "class_queries",
    "default_device",
    "default_image_size",
    "embed_classes",
    "fixed_classes",
    "inference_settings",
    "load_model",
    "parse_class_list",
    "predict_batch",
    "predict_image",
    "predictions_to_input",
]

PAD_MULTIPLE = 128  # the model wants H, W multiples of its coarsest stride (P7: 128)
MASK_THRESHOLD = 0.5
MASK_CHUNK = 16  # masks resized to the original size at once: bounds memory on large images
MIN_BOX_SIDE_PX = 1.0  # narrower or lower boxes (in original pixels) are degenerate: dropped
DEFAULT_IMAGE_SIZE = 512  # for a model whose checkpoint records no training size


@dataclass(frozen=True)
class ImagePredictions:
    """Predictions for one image in the pixels of the original image (K detections).

    Attributes:
        boxes_xyxy_px: float32 (K, 4).
        scores: float32 (K,), highest first as the model returns them.
        labels: int64 (K,), index into the class list the model was given.
        masks: bool (K, H, W) at the original size (probability > 0.5), or None when the model
            returned no masks.
    """

    boxes_xyxy_px: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None


@dataclass(frozen=True)
class CheckpointInfo:
    """What inference needs from a checkpoint beyond the weights; `load_model` puts it on the
    model as ``model.checkpoint_info``.

    Attributes:
        path: the checkpoint file.
        arch: the detector's architecture (``config["arch"]``).
        text_encoder: id of the encoder of its phrases (``config["text_encoder"]``), or None.
        image_size: the training crop side (``config["train"]["image_size"]``), or None when the
            checkpoint records none.
        classes: a fixed-class detector's class names (MaskX R-CNN), else ().
        config: the checkpoint's whole config dict.
    """

    path: str
    arch: str
    text_encoder: str | None
    image_size: int | None
    classes: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_class_list(text: str) -> list[str]:
    """ "dog, sofa,red car" -> ["dog", "sofa", "red car"]; ValueError for an empty or repeated
    name (`alp_curation.flags.split_class_names`, which the command lines read too)."""
    return list(split_class_names(text))


def embed_classes(
    model_or_encoder: torch.nn.Module | str, class_names: Sequence[str]
) -> torch.Tensor:
    """The (C, D) float32 rows a detector scores ``class_names`` with.

    ``model_or_encoder`` is a model from `load_model` (its checkpoint's text encoder; a
    fixed-class detector gets its one-hot rows, `class_queries`) or a text encoder id (the id
    the checkpoint's phrase embeddings were made with: ``config["text_encoder"]``), whose
    prompt-ensemble embeddings of the names are returned. ValueError for a model whose text
    encoder is unknown or a name a fixed-class detector lacks; RuntimeError
    (`alp_curation.encoders.EncoderUnavailable`) when the encoder cannot load."""
    if isinstance(model_or_encoder, torch.nn.Module):
        info = checkpoint_info(model_or_encoder)
        if info is None and fixed_classes(model_or_encoder) is None:
            raise ValueError(
                f"this {type(model_or_encoder).__name__} was not loaded with load_model, so its "
                "text encoder is unknown: give embed_classes the checkpoint's "
                "config['text_encoder'] instead of the model"
            )
        return class_queries(model_or_encoder, info.text_encoder if info else None, class_names)
    from alp_curation.encoders import load_text_encoder
    from alp_curation.prompts import ensemble_embeddings

    encoder = load_text_encoder(model_or_encoder)
    return torch.from_numpy(ensemble_embeddings(encoder, list(class_names)))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_info(model: torch.nn.Module) -> CheckpointInfo | None:
    """The `CheckpointInfo` `load_model` put on ``model``; None for a model built otherwise."""
    info = getattr(model, "checkpoint_info", None)
    return info if isinstance(info, CheckpointInfo) else None


def default_image_size(model: torch.nn.Module) -> int:
    """The image size inference uses unless told: the checkpoint's training crop side, else
    `DEFAULT_IMAGE_SIZE` (a model not from `load_model`, or a checkpoint that records none).
    `predict_image`, ``python -m models.predict`` and ``python -m models.evaluate`` share it."""
    info = checkpoint_info(model)
    return info.image_size if info is not None and info.image_size else DEFAULT_IMAGE_SIZE


def load_model(
    checkpoint: str | os.PathLike[str], device: str | torch.device | None = None
) -> torch.nn.Module:
    """The detector of a checkpoint (any ``--arch``), weights loaded, in eval mode, on
    ``device`` (default: cuda when available, else cpu), ready for `predict_image`,
    `predict_batch` and `models.evaluate.evaluate_model`. Its `CheckpointInfo` (text encoder,
    training image size, fixed classes) is ``model.checkpoint_info``, read by `embed_classes`
    and `default_image_size`. OSError for a missing or unreadable file, ValueError for a file
    that is not a checkpoint of this project or whose weights do not fit its config."""
    from models.engine.checkpoint import load_model as load_checkpoint_model

    model, config = load_checkpoint_model(checkpoint)
    size = config.get("train", {}).get("image_size")
    model.checkpoint_info = CheckpointInfo(
        path=os.fspath(checkpoint),
        arch=str(config.get("arch", "")),
        text_encoder=config.get("text_encoder"),
        image_size=int(size) if size else None,
        classes=tuple(config.get("model", {}).get("classes") or ()),
        config=config,
    )
    return model.to(device or default_device()).eval()


def fixed_classes(model: torch.nn.Module) -> tuple[str, ...] | None:
    """The class list of a fixed-class detector (MaskX R-CNN), None for an open-vocabulary one."""
    names = getattr(model, "class_names", None)
    return tuple(names) if names is not None else None


def class_queries(
    model: torch.nn.Module, text_encoder: str | None, class_names: Sequence[str]
) -> torch.Tensor:
    """The (C, query_dim) rows a detector scores ``class_names`` with: their prompt-ensemble
    embeddings for an open-vocabulary detector (``text_encoder``: the checkpoint's), one-hot
    rows picking its own classes for a fixed-class one. ValueError naming the names a
    fixed-class detector does not know."""
    own = fixed_classes(model)
    if own is None:
        if not text_encoder:
            raise ValueError("an open-vocabulary detector needs the text encoder of its phrases")
        return embed_classes(text_encoder, class_names)
    unknown = [n for n in class_names if n not in own]
    if unknown:
        raise ValueError(
            f"{unknown} are not classes of this checkpoint: a {type(model).__name__} detects "
            f"only the {len(own)} classes it was trained on: {', '.join(own)}"
        )
    queries = torch.zeros(len(class_names), len(own))  # (C, K)
    queries[torch.arange(len(class_names)), torch.tensor([own.index(n) for n in class_names])] = 1
    return queries


@contextlib.contextmanager
def inference_settings(
    model: torch.nn.Module,
    *,
    score_threshold: float | None = None,
    nms_threshold: float | None = None,
) -> Iterator[None]:
    """Set the model's ``score_threshold`` / ``nms_threshold`` (None: keep) for the block."""
    wanted = {"score_threshold": score_threshold, "nms_threshold": nms_threshold}
    saved = {}
    for name, value in wanted.items():
        if value is None:
            continue
        if not hasattr(model, name):
            raise AttributeError(f"{type(model).__name__} has no attribute {name!r} to override")
        saved[name] = getattr(model, name)
        setattr(model, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(model, name, value)


def _pad_to_multiple(images: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H', W') padded with zeros at the bottom / right (where
    EvalTransform pads too, so the geometry still maps predictions back)."""
    h, w = images.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h))


def predictions_to_input(
    output: Mapping[str, torch.Tensor], geometry: Geometry
) -> ImagePredictions:
    """One image's model output (boxes, masks in the transformed image) -> original pixels:
    boxes through `Geometry.boxes_to_input`, mask probabilities resized bilinearly through
    `Geometry.masks_to_input`, then thresholded at 0.5. A degenerate box is dropped with its
    mask and score: one not finite, or less than `MIN_BOX_SIDE_PX` wide or high once clipped to
    the image (a box in the padding, clipped onto the image's edge, has no area at all)."""
    boxes = geometry.boxes_to_input(output["boxes_xyxy_px"].detach().float().cpu())  # (K, 4)
    sides = boxes[:, 2:] - boxes[:, :2]  # (K, 2) width, height
    keep = torch.isfinite(boxes).all(dim=1) & (sides >= MIN_BOX_SIDE_PX).all(dim=1)  # (K,)
    boxes = boxes[keep]
    scores = output["scores"].detach().float().cpu()[keep]
    labels = output["labels"].detach().cpu().long()[keep]
    masks = None
    probs = output.get("masks")
    if probs is not None:
        probs = probs[keep.to(probs.device)]  # (K', 1, H_out, W_out)
        in_h, in_w = geometry.input_hw
        masks = np.zeros((len(scores), in_h, in_w), dtype=bool)
        for start in range(0, len(scores), MASK_CHUNK):
            # Resized where the model ran (GPU: only the bool result crosses to the host).
            chunk = probs[start : start + MASK_CHUNK, 0].detach().float()  # (k, H_out, W_out)
            resized = geometry.masks_to_input(chunk)  # (k, H_in, W_in)
            masks[start : start + MASK_CHUNK] = (resized > MASK_THRESHOLD).cpu().numpy()
    return ImagePredictions(
        boxes_xyxy_px=boxes.numpy().astype(np.float32),
        scores=scores.numpy().astype(np.float32),
        labels=labels.numpy().astype(np.int64),
        masks=masks,
    )


def predict_batch(
    model: torch.nn.Module,
    images: torch.Tensor,
    geometries: Sequence[Geometry],
    class_embeddings: torch.Tensor,
    *,
    device: str | torch.device | None = None,
) -> list[ImagePredictions]:
    """Detect in a batch of EvalTransform outputs (uint8 (B, 3, S, S)) and map the predictions
    back with each image's geometry. The batch is zero-padded at the bottom / right to multiples
    of 128 pixels when S is not one. The model is put in eval mode."""
    if images.ndim != 4 or len(images) != len(geometries):
        raise ValueError(
            f"predict_batch: images {tuple(images.shape)} and {len(geometries)} geometries "
            "differ; expected (B, 3, S, S) and B geometries"
        )
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        outputs = model(
            _pad_to_multiple(images).to(device),
            class_embeddings=class_embeddings.to(device=device, dtype=torch.float32),
        )
    return [predictions_to_input(o, g) for o, g in zip(outputs, geometries, strict=True)]


def predict_image(
    model: torch.nn.Module,
    image_uint8_hwc: np.ndarray,
    class_names: Sequence[str],
    class_embeddings: torch.Tensor | None = None,
    *,
    size: int | None = None,
    score_threshold: float = 0.3,
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """Detections with score >= ``score_threshold`` in one RGB image (H, W, 3) uint8, highest
    score first: ``{"label", "class_index", "score", "box_xyxy_px": [x0, y0, x1, y1],
    "mask": bool (H, W) or None}`` in the image's pixels.

    ``class_embeddings`` (C, D) rows belong to ``class_names`` (default: `embed_classes` of the
    model and the names; give them to reuse them over images). ``size``: the longer image side
    the model sees (default: `default_image_size`, the checkpoint's training size, as the
    command line). The model's own candidate threshold is lowered to ``score_threshold`` for
    the call when it is higher."""
    if image_uint8_hwc.ndim != 3 or image_uint8_hwc.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image_uint8_hwc.shape}")
    if class_embeddings is None:
        class_embeddings = embed_classes(model, class_names)
    if size is None:
        size = default_image_size(model)
    if len(class_names) != len(class_embeddings):
        raise ValueError(
            f"{len(class_names)} class names but {len(class_embeddings)} class embeddings"
        )
    if image_uint8_hwc.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image_uint8_hwc.dtype}")
    image = torch.from_numpy(np.array(image_uint8_hwc)).permute(2, 0, 1)  # (3, H, W), a copy
    transformed, target = EvalTransform(size=size)(image)
    current = getattr(model, "score_threshold", None)
    lowered = score_threshold if current is not None and score_threshold < current else None
    with inference_settings(model, score_threshold=lowered):
        (pred,) = predict_batch(
            model, transformed[None], [target[GEOMETRY]], class_embeddings, device=device
        )
    out = []
    for k in np.argsort(-pred.scores, kind="stable"):
        if pred.scores[k] < score_threshold:
            continue
        label = int(pred.labels[k])
        out.append(
            {
                "label": class_names[label],
                "class_index": label,
                "score": float(pred.scores[k]),
                "box_xyxy_px": [float(v) for v in pred.boxes_xyxy_px[k]],
                "mask": None if pred.masks is None else pred.masks[k],
            }
        )
    return out
