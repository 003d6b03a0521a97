"""Run a detector on images, map its predictions back to the original pixels, draw them.

    python -m models.predict --checkpoint run/checkpoint.pt --image photo.jpg \\
        --classes "dog,sofa,red car" --out photo_pred.png

The classes are free text: each is embedded with the checkpoint's text encoder through the
63-template prompt ensemble (`alp_curation.prompts.ensemble_embeddings`), the model scores every
location or region against them (the open-vocabulary classifier of FCOS-MO and Mask R-CNN*,
ALP paper Sec. 3.2-3.3 and 4; the detector is the checkpoint's ``--arch``), and the masks, boxes
and "label score" captions are drawn on the image. A MaskX R-CNN checkpoint has a fixed class
list: ``--classes`` picks among its names (all of them by default), and any other name is a
usage error that lists them (`class_queries`). One line per detection goes to stdout:
``label<TAB>score<TAB>x0 y0 x1 y1`` (pixels of the image as stored on disk, EXIF rotation
applied).

In-process: `predict_image` for one HWC uint8 array; `predict_batch` for a batch that went
through `alp_dataset.transforms.EvalTransform` (evaluation uses it).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from alp_dataset.transforms import GEOMETRY, EvalTransform, Geometry

__all__ = [
    "PAD_MULTIPLE",
    "ImagePredictions",
    "build_parser",
    "class_queries",
    "embed_classes",
    "fixed_classes",
    "inference_settings",
    "load_for_inference",
    "main",
    "parse_class_list",
    "predict_batch",
    "predict_image",
    "predictions_to_input",
]

PAD_MULTIPLE = 128  # the model wants H, W multiples of its coarsest stride (P7: 128)
MASK_THRESHOLD = 0.5
MASK_CHUNK = 16  # masks resized to the original size at once: bounds memory on large images


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


def parse_class_list(text: str) -> list[str]:
    """ "dog, sofa,red car" -> ["dog", "sofa", "red car"]; empty or repeated names are errors."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise ValueError(f"class list {text!r} holds an empty name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"class list {text!r} repeats {repeated}")
    return names


def embed_classes(text_encoder: str, class_names: Sequence[str]) -> torch.Tensor:
    """float32 (C, D) prompt-ensemble embeddings of the class names with the encoder of that id
    (the id the checkpoint's phrase embeddings were made with: ``config["text_encoder"]``)."""
    from alp_curation.encoders import load_text_encoder
    from alp_curation.prompts import ensemble_embeddings

    encoder = load_text_encoder(text_encoder)
    return torch.from_numpy(ensemble_embeddings(encoder, list(class_names)))


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
    `Geometry.masks_to_input`, then thresholded at 0.5."""
    boxes = geometry.boxes_to_input(output["boxes_xyxy_px"].detach().float().cpu())  # (K, 4)
    scores = output["scores"].detach().float().cpu()
    labels = output["labels"].detach().cpu().long()
    masks = None
    probs = output.get("masks")
    if probs is not None:
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
    class_embeddings: torch.Tensor,
    *,
    size: int = 512,
    score_threshold: float = 0.3,
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """Detections with score >= ``score_threshold`` in one RGB image (H, W, 3) uint8, highest
    score first: ``{"label", "class_index", "score", "box_xyxy_px": [x0, y0, x1, y1],
    "mask": bool (H, W) or None}`` in the image's pixels. ``class_embeddings`` (C, D) rows
    belong to ``class_names``. The model's own candidate threshold is lowered to
    ``score_threshold`` for the call when it is higher."""
    if image_uint8_hwc.ndim != 3 or image_uint8_hwc.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image_uint8_hwc.shape}")
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


# ---------------------------------------------------------------------------------------------
# Command line


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.predict",
        description="Detect and segment free-text classes in one image with a detector "
        "checkpoint (any --arch); draw masks, boxes and scores on it and save a PNG.",
        epilog="Each detection is also printed as: label<TAB>score<TAB>x0 y0 x1 y1",
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="model checkpoint")
    parser.add_argument("--image", required=True, metavar="FILE", help="input image (any PIL "
                        "format; EXIF rotation is applied)")  # fmt: skip
    parser.add_argument(
        "--classes",
        metavar="A,B,...",
        help='comma-separated class names, free text ("dog,sofa,red car"); embedded with the '
        "checkpoint's text encoder. A fixed-class checkpoint (--arch maskx-rcnn) takes only its "
        "own class names, and all of them by default",
    )
    parser.add_argument("--out", required=True, metavar="PNG", help="where to write the drawing")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        metavar="X",
        help="keep detections scoring at least X; default: %(default)s",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="S",
        help="the image is resized so its longer side is S (then padded to a multiple of 128); "
        "default: the training crop side of the checkpoint (--image-size)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (cpu, cuda); default: cuda when available"
    )
    return parser


def load_for_inference(
    parser: argparse.ArgumentParser,
    checkpoint: str,
    class_names: Sequence[str],
    *,
    size: int | None,
    device: str,
) -> tuple[torch.nn.Module, dict[str, Any], torch.Tensor, int]:
    """The model of a checkpoint on ``device``, its config, the embeddings of ``class_names`` by
    its text encoder, and the image size (``size``, else the checkpoint's training crop side),
    for the command lines; a bad checkpoint or an encoder that cannot load is a usage error."""
    from models.engine.checkpoint import load_model

    try:
        model, config = load_model(checkpoint)
    except (OSError, ValueError) as exc:
        parser.error(f"--checkpoint: {exc}")
    if fixed_classes(model) is not None:
        try:
            embeddings = class_queries(model, None, class_names)
        except ValueError as exc:
            parser.error(f"classes: {exc}")
    else:
        try:
            embeddings = embed_classes(config["text_encoder"], class_names)
        except (RuntimeError, ValueError) as exc:  # EncoderUnavailable is a RuntimeError
            parser.error(f"text encoder {config['text_encoder']!r} of the checkpoint: {exc}")
    if size is None:
        size = int(config.get("train", {}).get("image_size", 512))
    return model.to(device), config, embeddings, size


def main(argv: Sequence[str] | None = None) -> int:
    from models.draw import draw_predictions

    parser = build_parser()
    args = parser.parse_args(argv)
    class_names: list[str] = []
    if args.classes is not None:
        try:
            class_names = parse_class_list(args.classes)
        except ValueError as exc:
            parser.error(str(exc))
    if args.size is not None and args.size < 1:
        parser.error(f"--size must be positive, got {args.size}")
    # The image first: a wrong path should not wait for the model and the text encoder.
    try:
        with Image.open(args.image) as opened:
            rgb = np.array(ImageOps.exif_transpose(opened).convert("RGB"))  # (H, W, 3)
    except OSError as exc:  # missing file, or not an image PIL can read
        parser.error(f"--image {args.image}: {exc}")
    device = args.device or default_device()
    if not class_names:
        from models.engine.checkpoint import load_checkpoint

        try:
            saved = load_checkpoint(args.checkpoint)["config"]
        except (OSError, ValueError) as exc:
            parser.error(f"--checkpoint: {exc}")
        class_names = list(saved.get("model", {}).get("classes") or [])
        if not class_names:
            parser.error("--classes: give the class names to detect (free text)")
    model, _, embeddings, size = load_for_inference(
        parser, args.checkpoint, class_names, size=args.size, device=device
    )
    detections = predict_image(
        model,
        rgb,
        class_names,
        embeddings,
        size=size,
        score_threshold=args.score_threshold,
        device=device,
    )
    for det in detections:
        x0, y0, x1, y1 = det["box_xyxy_px"]
        print(f"{det['label']}\t{det['score']:.3f}\t{x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_predictions(rgb, detections).save(out, format="PNG")
    print(f"{len(detections)} detections; wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
