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

In Python the same is `load_model`, `embed_classes` and `predict_image` of `models.inference`,
re-exported here (docs/python_api.md).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from alp_curation import flags
from alp_dataset.coco_shards import encode_mask
from alp_dataset.schema import IMAGE_EXTENSIONS
from models.draw import DEFAULT_TOP_K, draw_predictions
from models.inference import (
    DEFAULT_IMAGE_SIZE,
    MIN_BOX_SIDE_PX,
    PAD_MULTIPLE,
    CheckpointInfo,
    ImagePredictions,
    checkpoint_info,
    class_queries,
    default_device,
    default_image_size,
    embed_classes,
    fixed_classes,
    inference_settings,
    load_model,
    parse_class_list,
    predict_batch,
    predict_image,
    predictions_to_input,
)

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
    "default_device",
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
