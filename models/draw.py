"""Draw instance predictions on an image: translucent masks, box outlines, "label score" captions.

    image = draw_predictions(rgb_uint8_hwc, predict_image(model, rgb_uint8_hwc, names, emb))
    image.save("out.png")

A prediction is a mapping with ``label`` (str), ``score`` (float), ``box_xyxy_px`` (x0, y0, x1,
y1 in the image's pixels) and optionally ``mask`` (bool (H, W) or None) and ``class_index`` (int,
picks the colour; else the label does). Colours repeat per class so that instances of one class
read as one group.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "colour_for", "draw_predictions"]

# Distinct, saturated colours (Okabe-Ito-like, then a few extra), RGB.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 80, 80),
    (120, 200, 80),
    (160, 100, 255),
)


def colour_for(prediction: Mapping[str, Any]) -> tuple[int, int, int]:
    """A palette colour from ``class_index`` when present, else from a hash of ``label``."""
    index = prediction.get("class_index")
    if index is None:
        index = zlib.crc32(str(prediction.get("label", "")).encode("utf-8"))
    return PALETTE[int(index) % len(PALETTE)]


def draw_predictions(
    image_uint8_hwc: np.ndarray,
    predictions: Sequence[Mapping[str, Any]],
    *,
    mask_alpha: float = 0.45,
    line_width: int | None = None,
) -> Image.Image:
    """An RGB PIL image of the same size with the predictions drawn, lowest score first so the
    best ones stay on top. ``line_width`` defaults to about 0.3 % of the longer side (>= 1 px)."""
    if image_uint8_hwc.ndim != 3 or image_uint8_hwc.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image_uint8_hwc.shape}")
    h, w = image_uint8_hwc.shape[:2]
    ordered = sorted(predictions, key=lambda p: float(p["score"]))
    canvas = image_uint8_hwc.astype(np.float32)  # (H, W, 3)
    for pred in ordered:
        mask = pred.get("mask")
        if mask is None:
            continue
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (h, w):
            raise ValueError(f"prediction {pred.get('label')!r}: mask {mask.shape}, image {(h, w)}")
        colour = np.asarray(colour_for(pred), dtype=np.float32)
        canvas[mask] = (1 - mask_alpha) * canvas[mask] + mask_alpha * colour
    out = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8), mode="RGB")

    draw = ImageDraw.Draw(out)
    width = line_width or max(1, round(0.003 * max(h, w)))
    font = ImageFont.load_default(size=max(10, round(0.025 * max(h, w))))
    for pred in ordered:
        colour = colour_for(pred)
        x0, y0, x1, y1 = (float(v) for v in pred["box_xyxy_px"])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        caption = f"{pred['label']} {float(pred['score']):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_h = bottom - top
        # Above the box when it fits, else just inside its top edge.
        ty = y0 - text_h - 2 if y0 - text_h - 2 >= 0 else y0
        tx = min(max(x0, 0.0), max(0.0, w - (right - left) - 2))
        draw.rectangle([tx, ty, tx + right - left + 2, ty + text_h + 2], fill=colour)
        draw.text((tx + 1 - left, ty + 1 - top), caption, fill=(0, 0, 0), font=font)
    return out
