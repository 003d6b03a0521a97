"""Draw instance predictions on an image: translucent masks, box outlines, "label score" captions.

    image = draw_predictions(rgb_uint8_hwc, predict_image(model, rgb_uint8_hwc, names, emb))
    image.save("out.png")

A prediction is a mapping with ``label`` (str), ``score`` (float), ``box_xyxy_px`` (x0, y0, x1,
y1 in the image's pixels) and optionally ``mask`` (bool (H, W) or None) and ``class_index`` (int,
picks the colour; else the label does). Colours repeat per class so that instances of one class
read as one group.

Only the ``top_k`` highest-scoring predictions are drawn (a hundred overlapping captions read as
none). Captions are sized to the image (about 2.5 % of its longer side, at least 12 px), sit on
a box of the class colour with black or white text, whichever contrasts more, and move below
the box or inside it where another caption already stands; a detection with no free place left
keeps its box and mask but no caption, so no caption ever covers another.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "DEFAULT_TOP_K",
    "PALETTE",
    "caption_place",
    "colour_for",
    "draw_predictions",
    "text_colour",
]

DEFAULT_TOP_K = 20

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


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background`` (WCAG relative luminance)."""

    def linear(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in background)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # Contrast with black (L + 0.05) / 0.05 against with white 1.05 / (L + 0.05).
    return (0, 0, 0) if (luminance + 0.05) ** 2 > 0.05 * 1.05 else (255, 255, 255)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def caption_place(
    box_xyxy: tuple[float, float, float, float],
    caption_wh: tuple[float, float],
    image_wh: tuple[int, int],
    placed: Sequence[tuple[float, ...]],
) -> tuple[float, float, float, float] | None:
    """Where a caption of size ``caption_wh`` goes for a box: above it, else just inside its top
    edge, else below it, else inside its bottom edge (each kept on the image), the first place
    that overlaps none of the ``placed`` captions; None when every one does."""
    x0, y0, _, y1 = box_xyxy
    (tw, th), (w, h) = caption_wh, image_wh
    tx = min(max(x0, 0.0), max(0.0, w - tw))
    for ty in (y0 - th, y0, y1, y1 - th):
        ty = min(max(ty, 0.0), max(0.0, h - th))
        spot = (tx, ty, tx + tw, ty + th)
        if not any(_overlaps(spot, p) for p in placed):
            return spot
    return None


def draw_predictions(
    image_uint8_hwc: np.ndarray,
    predictions: Sequence[Mapping[str, Any]],
    *,
    top_k: int | None = DEFAULT_TOP_K,
    mask_alpha: float = 0.45,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """An RGB PIL image of the same size with the ``top_k`` highest-scoring predictions drawn
    (None: all), lowest score first so the best ones stay on top. ``line_width`` defaults to
    about 0.3 % of the longer side (>= 1 px), ``font_size`` to about 2.5 % (>= 12 px)."""
    if image_uint8_hwc.ndim != 3 or image_uint8_hwc.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image_uint8_hwc.shape}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 or None, got {top_k}")
    h, w = image_uint8_hwc.shape[:2]
    best = sorted(predictions, key=lambda p: -float(p["score"]))
    ordered = best[:top_k][::-1] if top_k is not None else best[::-1]
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
    size = font_size or max(12, round(0.025 * max(h, w)))
    font = ImageFont.load_default(size=size)
    for pred in ordered:
        x0, y0, x1, y1 = (float(v) for v in pred["box_xyxy_px"])
        draw.rectangle([x0, y0, x1, y1], outline=colour_for(pred), width=width)
    # Captions after every box, best first, so no box line crosses a caption and the best
    # detections get the first places.
    placed: list[tuple[float, ...]] = []
    pad = max(1, round(0.15 * size))
    for pred in ordered[::-1]:
        colour = colour_for(pred)
        x0, y0, x1, y1 = (float(v) for v in pred["box_xyxy_px"])
        caption = f"{pred['label']} {float(pred['score']):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        spot = caption_place((x0, y0, x1, y1), (tw, th), (w, h), placed)
        if spot is None:
            continue  # every place would cover a better detection's caption: box only
        placed.append(spot)
        draw.rectangle(spot, fill=colour)
        draw.text((spot[0] + pad - left, spot[1] + pad - top), caption, fill=text_colour(colour),
                  font=font)  # fmt: skip
    return out
