"""Run a detector on images, map its predictions back to the original pixels, draw them.

    python -m models.predict --checkpoint run/checkpoint.pt --image photo.jpg \\
        --classes "dog,sofa,red car" --output photo_pred.png
    python -m models.predict --checkpoint run/checkpoint.pt --image photos/ "more/*.jpg" \\
        --classes "dog,sofa" --output drawn/ --json drawn/detections.json

The classes are free text: each is embedded with the checkpoint's text encoder through the
63-template prompt ensemble (`alp_curation.prompts.ensemble_embeddings`), the model scores every
location or region against them (the open-vocabulary classifier of FCOS-MO and Mask R-CNN*,
ALP paper Sec. 3.2-3.3 and 4; the detector is the checkpoint's ``--arch``), and the masks, boxes
and "label score" captions of the ``--top-k`` best detections are drawn on the image. A MaskX
R-CNN checkpoint has a fixed class list: ``--classes`` picks among its names (all of them by
default), and any other name is a usage error that lists them (`class_queries`). One line per
detection goes to stdout: ``label<TAB>score<TAB>x0 y0 x1 y1`` (pixels of the image as stored on
disk, EXIF rotation applied), with the image's path as a first column when there are several
images. ``--json`` writes every detection with its mask as a COCO RLE.

In Python, from a checkpoint to detections:

    model = load_model("run/checkpoint.pt")                 # eval mode, on cuda when there
    names = ["dog", "sofa", "red car"]
    embeddings = embed_classes(model, names)                # the checkpoint's text encoder
    detections = predict_image(model, rgb_uint8_hwc, names, embeddings)

`predict_image` takes one HWC uint8 array at the checkpoint's training size by default (as the
command line); `predict_batch` a batch that went through `alp_dataset.transforms.EvalTransform`
(evaluation uses it). Degenerate boxes (under a pixel wide or high in the image, as a box in the
padding becomes once clipped onto the image's edge) are dropped with their masks.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from alp_curation import flags
from alp_dataset.coco_shards import encode_mask
from alp_dataset.schema import IMAGE_EXTENSIONS
from alp_dataset.transforms import GEOMETRY, EvalTransform, Geometry
from models.draw import DEFAULT_TOP_K, draw_predictions

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_TOP_K",
    "MIN_BOX_SIDE_PX",
    "PAD_MULTIPLE",
    "CheckpointInfo",
    "ImagePredictions",
    "build_parser",
    "checkpoint_info",
    "class_queries",
    "default_image_size",
    "detections_json",
    "embed_classes",
    "find_images",
    "fixed_classes",
    "inference_settings",
    "load_for_inference",
    "load_model",
    "main",
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
    """ "dog, sofa,red car" -> ["dog", "sofa", "red car"]; empty or repeated names are errors."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise ValueError(f"class list {text!r} holds an empty name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"class list {text!r} repeats {repeated}")
    return names


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


# ---------------------------------------------------------------------------------------------
# Files


def find_images(specs: Sequence[str]) -> list[Path]:
    """The image files of ``--image`` values: a file as it is, a folder's images (extensions
    of `alp_dataset.schema.IMAGE_EXTENSIONS`, any case; sorted by name), or a glob pattern's
    matches (sorted). Each file once, in the order given. ValueError naming a value that is
    none of these or matches nothing."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            inside = sorted(
                p for p in path.iterdir()
                if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
            )  # fmt: skip
            if not inside:
                raise ValueError(f"{spec}: a folder without images ({', '.join(IMAGE_EXTENSIONS)})")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file())
            if not matches:
                raise ValueError(f"{spec}: the pattern matches no file")
            found.extend(matches)
        else:
            raise ValueError(f"{spec}: no such file or folder")
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p, None)
    return list(unique)


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as opened:
        return np.array(ImageOps.exif_transpose(opened).convert("RGB"))  # (H, W, 3)


def detections_json(
    path: str | os.PathLike[str], height: int, width: int, detections: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """One image's entry of ``--json``: its file, size and `predict_image` detections, each
    mask a compressed COCO RLE ``{size: [H, W], counts: str}`` (None without masks)."""
    return {
        "file": os.fspath(path),
        "height": int(height),
        "width": int(width),
        "detections": [
            {
                "label": d["label"],
                "class_index": int(d["class_index"]),
                "score": round(float(d["score"]), 6),
                "box_xyxy_px": [round(float(v), 2) for v in d["box_xyxy_px"]],
                "mask": None if d.get("mask") is None else encode_mask(np.asarray(d["mask"])),
            }
            for d in detections
        ],
    }


# ---------------------------------------------------------------------------------------------
# Command line


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.predict",
        formatter_class=flags.HelpFormatter,
        description="Detect and segment free-text classes in images with a detector checkpoint "
        "(any --arch); draw masks, boxes and scores of the best ones on each image (PNG) and / "
        "or write every detection to JSON.",
        epilog="Each detection is also printed as: label<TAB>score<TAB>x0 y0 x1 y1 (with the "
        "image's path first when there are several images).",
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="model checkpoint")
    parser.add_argument(
        "--image",
        required=True,
        nargs="+",
        metavar="PATH",
        help="input images: files, folders (their .jpg / .jpeg / .png files, sorted) or glob "
        "patterns (quote them: 'photos/*.jpg'); any PIL format, EXIF rotation applied",
    )
    flags.add_class_list(
        parser,
        "--classes",
        help='comma-separated class names, free text ("dog,sofa,red car"); embedded with the '
        "checkpoint's text encoder. A fixed-class checkpoint (--arch maskx-rcnn) takes only its "
        "own class names, and all of them by default",
    )
    parser.add_argument(
        "--output",
        metavar="PNG_OR_DIR",
        help="where to draw: a .png file for one image, else a folder that gets "
        "<image name>_pred.png per image",
    )
    parser.add_argument(
        "--json",
        metavar="JSON",
        help="write every detection of every image (file, class, score, box, mask as a COCO "
        "RLE) to this file",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        metavar="X",
        help="keep detections scoring at least X",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        metavar="K",
        help="draw only the K highest-scoring detections (masks, boxes, labels); the printed "
        "lines and --json hold all of them",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="S",
        help="the image is resized so its longer side is S (then padded to a multiple of 128); "
        "None: the checkpoint's training crop side (its --image-size)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (cpu, cuda); None: cuda when available"
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
    """For the command lines: `load_model`, the config of the checkpoint, `embed_classes` of
    ``class_names`` and the image size (``size``, else `default_image_size`); a bad
    checkpoint, a class a fixed-class detector lacks or an encoder that cannot load is a usage
    error of ``parser``."""
    model = _load_model(parser, checkpoint, device)
    embeddings = _embed_classes(parser, model, class_names)
    config = dict(model.checkpoint_info.config)
    return model, config, embeddings, size if size is not None else default_image_size(model)


def _load_model(parser: argparse.ArgumentParser, checkpoint: str, device: str) -> torch.nn.Module:
    try:
        return load_model(checkpoint, device=device)
    except (OSError, ValueError) as exc:
        parser.error(f"--checkpoint: {exc}")


def _embed_classes(
    parser: argparse.ArgumentParser, model: torch.nn.Module, class_names: Sequence[str]
) -> torch.Tensor:
    if fixed_classes(model) is not None:
        try:
            return class_queries(model, None, class_names)
        except ValueError as exc:
            parser.error(f"classes: {exc}")
    try:
        return embed_classes(model, class_names)
    except (RuntimeError, ValueError) as exc:  # EncoderUnavailable is a RuntimeError
        encoder = model.checkpoint_info.text_encoder
        parser.error(f"text encoder {encoder!r} of the checkpoint: {exc}")


def _output_paths(
    parser: argparse.ArgumentParser, images: Sequence[Path], output: str | None
) -> list[Path | None]:
    if output is None:
        return [None] * len(images)
    out = Path(output)
    if out.suffix.lower() == ".png" and not out.is_dir():
        if len(images) > 1:
            parser.error(
                f"--output {output}: {len(images)} images need a folder (one PNG per image)"
            )
        return [out]
    paths = [out / f"{image.stem}_pred.png" for image in images]
    twice = sorted({p.name for p in paths if paths.count(p) > 1})
    if twice:
        parser.error(f"--output {output}: images of one name would write {twice[0]} twice")
    inputs = {image.resolve() for image in images}
    clash = [p for p in paths if p.resolve() in inputs]
    if clash:
        parser.error(f"--output {output}: would overwrite the input image {clash[0]}")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = flags.parse_args(parser, argv)
    class_names = list(args.classes or ())
    if args.output is None and args.json is None:
        parser.error("give --output (drawings) and / or --json (detections)")
    for flag, value in (("--image-size", args.image_size), ("--top-k", args.top_k)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be positive, got {value}")
    # The images first: a wrong path should not wait for the model and the text encoder.
    try:
        images = find_images(args.image)
    except ValueError as exc:
        parser.error(f"--image {exc}")
    outputs = _output_paths(parser, images, args.output)
    try:
        with Image.open(images[0]) as opened:
            opened.verify()
    except OSError as exc:  # not an image PIL can read
        parser.error(f"--image {images[0]}: {exc}")
    device = args.device or default_device()
    model = _load_model(parser, args.checkpoint, device)
    class_names = class_names or list(model.checkpoint_info.classes)
    if not class_names:
        parser.error("--classes: give the class names to detect (free text)")
    embeddings = _embed_classes(parser, model, class_names)
    size = args.image_size if args.image_size is not None else default_image_size(model)
    entries, total = [], 0
    for image, out in zip(images, outputs, strict=True):
        try:
            rgb = _read_rgb(image)
        except OSError as exc:  # missing since, or not an image PIL can read
            parser.error(f"--image {image}: {exc}")
        detections = predict_image(
            model,
            rgb,
            class_names,
            embeddings,
            size=size,
            score_threshold=args.score_threshold,
            device=device,
        )
        prefix = f"{image}\t" if len(images) > 1 else ""
        for det in detections:
            x0, y0, x1, y1 = det["box_xyxy_px"]
            print(
                f"{prefix}{det['label']}\t{det['score']:.3f}\t{x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}"
            )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            draw_predictions(rgb, detections, top_k=args.top_k).save(out, format="PNG")
            print(f"{image}: {len(detections)} detections; wrote {out}", file=sys.stderr)
        if args.json is not None:
            entries.append(detections_json(image, *rgb.shape[:2], detections))
        total += len(detections)
    if args.json is not None:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "checkpoint": os.fspath(args.checkpoint),
            "classes": class_names,
            "image_size": size,
            "score_threshold": args.score_threshold,
            "images": entries,
        }
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
        n = len(images)
        print(f"{total} detections in {n} image{'s' * (n != 1)}; wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
