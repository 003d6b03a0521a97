"""Pixels of a synthetic sample: a textured background scene and textured objects on top.

Rendering is a pure function of the sample record (all noise is seeded by the background's
texture seed), so the same record always gives the same pixels. Each object paints exactly the
pixels of its visible mask, drawn in order, which makes the masks exact.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from alp_dataset.synthetic.records import Background, SyntheticObject, SyntheticSample
from alp_dataset.synthetic.shapes import COLOURS

TEXTURES: tuple[str, ...] = ("solid", "stripes", "dots", "checks", "noise", "gradient")


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1], (H, W) float32: a coarse grid upsampled bilinearly."""
    grid = rng.normal(0.0, 0.5, (cells, cells)).astype(np.float32)
    up = Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)


def render_background(background: Background, width: int, height: int) -> np.ndarray:
    """The scene behind the objects as float32 (H, W, 3) in [0, 255]-ish."""
    rng = np.random.default_rng([background.texture_seed, 0])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    img = np.empty((height, width, 3), dtype=np.float32)
    img[:] = np.asarray(background.rgb[0], dtype=np.float32)
    horizon = round(background.horizon * height)
    if len(background.rgb) > 1:
        img[horizon:] = np.asarray(background.rgb[1], dtype=np.float32)
    shade = 10.0 * _smooth_noise(rng, width, height, 5)  # (H, W)
    grain = rng.normal(0.0, 4.0, (height, width)).astype(np.float32)
    scene = background.scene
    if scene == "sky_grass":
        sky = yy < horizon
        shade = np.where(sky, 25.0 * (yy / max(horizon, 1)) - 12.0, shade)  # lighter near horizon
        grain = np.where(sky, grain * 0.5, grain * 4.0)  # blades of grass are noisy
    elif scene in ("floor", "table"):
        # Planks: bands with their own tint and a wavy grain along them.
        plank = height / rng.uniform(5.0, 9.0)
        band = (yy // plank).astype(np.int64)
        tints = rng.normal(0.0, 10.0, int(band.max()) + 1).astype(np.float32)
        wave = np.sin(xx * rng.uniform(0.05, 0.12) + 3.0 * _smooth_noise(rng, width, height, 8))
        shade = shade + tints[band] + 8.0 * wave
        shade = np.where((yy % plank) < 1.0, shade - 35.0, shade)  # gaps between planks
    elif scene == "water":
        wobble = 2.0 * np.sin(xx * rng.uniform(0.03, 0.06))
        shade = shade + 14.0 * np.sin(yy * rng.uniform(0.2, 0.35) + wobble)
    elif scene in ("sand", "road"):
        grain = grain * 3.0
    return img + (shade + grain)[..., None]


def _second_colour(rgb: np.ndarray) -> np.ndarray:
    """The pattern's other shade: darker for light colours, lighter for dark ones."""
    if rgb.mean() < 90.0:
        return rgb + (255.0 - rgb) * 0.25
    return rgb * 0.72


def paint_object(img: np.ndarray, obj: SyntheticObject, texture_seed: int) -> None:
    """Paint the object's visible mask onto img (float32 (H, W, 3)) in place."""
    rng = np.random.default_rng([texture_seed, 1 + obj.object_id])
    x0, y0 = obj.mask_origin_px
    h, w = obj.mask_crop.shape
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)  # (h, w) each
    base = np.asarray(COLOURS[obj.colour], dtype=np.float32) + rng.uniform(-8.0, 8.0, 3)
    other = _second_colour(base)
    angle = rng.uniform(0.0, math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    period = rng.uniform(5.0, 11.0)
    if obj.texture == "stripes":
        pattern = (along // (period / 2)) % 2 == 0
    elif obj.texture == "dots":
        r = period * 0.3
        pattern = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < r * r
    elif obj.texture == "checks":
        pattern = ((xx // period) + (yy // period)) % 2 == 0
    else:
        pattern = np.zeros((h, w), dtype=bool)
    colour = np.where(pattern[..., None], other, base)  # (h, w, 3)
    # Light falling across the object, stronger for "gradient".
    span = max(float(along.max() - along.min()), 1.0)
    light = (along - along.min()) / span - 0.5
    strength = 0.35 if obj.texture == "gradient" else 0.12
    colour = colour * (1.0 + strength * light)[..., None]
    noise = 18.0 if obj.texture == "noise" else 3.0
    colour = colour + rng.normal(0.0, noise, (h, w, 1)).astype(np.float32)
    region = img[y0 : y0 + h, x0 : x0 + w]
    region[obj.mask_crop] = colour[obj.mask_crop]


def render_sample(sample: SyntheticSample) -> np.ndarray:
    """The sample's image, uint8 (H, W, 3)."""
    img = render_background(sample.background, sample.width, sample.height)
    for obj in sample.objects:
        paint_object(img, obj, sample.background.texture_seed)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
