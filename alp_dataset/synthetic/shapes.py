"""Shape classes, colour names and exact boolean masks of the synthetic world.

Every class is an outline in unit coordinates (the shape fits the unit disc) made of polygons that
are filled or cut in order; masks are rasterised on a crop around the object with PIL's polygon
fill, so a mask costs tens of microseconds and the rendered pixels use the very same mask.

Class names are common English nouns that spaCy's English taggers tag as NOUN after an article and
colour adjectives ("a big red circle"), none of them a COCO-Stuff name, so that phrase extraction
keeps them (ALP paper, Sec. 3.1: adjectives + consecutive nouns, stuff classes dropped).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

DEFAULT_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "ring",
    "cross",
    "diamond",
    "crown",
    "moon",
    "arrow",
    "ellipse",
    "gear",
    "bone",
)

# Colour adjectives and the RGB they paint. "orange" is left out on purpose: before a shape noun
# ("an orange square") spaCy's small English model tags both words PROPN, hiding the class noun;
# for the same reason the classes avoid "hexagon", "crescent", "octagon" and "pentagon".
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "blue": (31, 82, 214),
    "green": (34, 160, 60),
    "yellow": (242, 214, 36),
    "purple": (128, 52, 170),
    "white": (246, 246, 244),
    "black": (24, 24, 26),
    "pink": (246, 128, 196),
    "brown": (121, 72, 36),
    "grey": (128, 128, 132),
}

# A polygon in unit coordinates, (K, 2) as (x, y) with y pointing down, and whether it is filled
# (True) or cut out of what was filled before it (False).
Polygon = tuple[np.ndarray, bool]

_CURVE_VERTICES = 64


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])  # (K, 2)


_THETA = np.linspace(0.0, 2.0 * math.pi, _CURVE_VERTICES, endpoint=False)
_UNIT_CIRCLE = np.stack([np.cos(_THETA), np.sin(_THETA)], axis=1)  # (K, 2)


def _ellipse(rx: float, ry: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    return _UNIT_CIRCLE * np.array([rx, ry]) + np.array([cx, cy])


@functools.lru_cache(maxsize=16)
def _regular_unit(n: int, phase: float) -> np.ndarray:
    theta = phase + np.arange(n) * (2.0 * math.pi / n)
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _regular(n: int, radius: float, phase: float = -math.pi / 2) -> np.ndarray:
    return radius * _regular_unit(n, phase)


def _upright(rng: np.random.Generator, degrees: float) -> float:
    """A small tilt, for shapes whose identity depends on standing upright (square vs diamond)."""
    return math.radians(rng.uniform(-degrees, degrees))


def _any_angle(rng: np.random.Generator) -> float:
    return rng.uniform(0.0, 2.0 * math.pi)


def _circle(rng: np.random.Generator) -> list[Polygon]:
    return [(_ellipse(1.0, 1.0), True)]


def _ellipse_shape(rng: np.random.Generator) -> list[Polygon]:
    # Flat enough never to be read as a circle.
    return [(_rotate(_ellipse(1.0, rng.uniform(0.42, 0.6)), _any_angle(rng)), True)]


def _square(rng: np.random.Generator) -> list[Polygon]:
    side = np.array([[-0.75, -0.75], [0.75, -0.75], [0.75, 0.75], [-0.75, 0.75]])
    return [(_rotate(side, _upright(rng, 15.0)), True)]


def _diamond(rng: np.random.Generator) -> list[Polygon]:
    # A tall rhombus: a square turned 45 degrees would be a "square" to most people.
    width = rng.uniform(0.5, 0.68)
    pts = np.array([[0.0, -1.0], [width, 0.0], [0.0, 1.0], [-width, 0.0]])
    return [(_rotate(pts, _upright(rng, 12.0)), True)]


def _triangle(rng: np.random.Generator) -> list[Polygon]:
    return [(_rotate(_regular(3, 1.0), _upright(rng, 40.0)), True)]


def _crown(rng: np.random.Generator) -> list[Polygon]:
    # A band with three spikes; the valleys' depth varies.
    valley = rng.uniform(-0.15, 0.05)
    pts = np.array(
        [
            [-0.9, 0.65],
            [0.9, 0.65],
            [0.9, -0.6],
            [0.45, valley],
            [0.0, -0.75],
            [-0.45, valley],
            [-0.9, -0.6],
        ]
    )
    return [(_rotate(pts, _upright(rng, 15.0)), True)]


def _star(rng: np.random.Generator) -> list[Polygon]:
    inner_radius = rng.uniform(0.38, 0.46)
    outer, inner = _regular(5, 1.0), _regular(5, inner_radius, -math.pi / 2 + math.pi / 5)
    pts = np.empty((10, 2))
    pts[0::2], pts[1::2] = outer, inner
    return [(_rotate(pts, _upright(rng, 36.0)), True)]


def _heart_outline() -> np.ndarray:
    t = _THETA
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1) / 17.5  # centred, inside the unit disc


_HEART = _heart_outline()


def _heart(rng: np.random.Generator) -> list[Polygon]:
    return [(_rotate(_HEART, _upright(rng, 20.0)), True)]


def _ring(rng: np.random.Generator) -> list[Polygon]:
    hole = rng.uniform(0.45, 0.62)
    return [(_ellipse(1.0, 1.0), True), (_ellipse(hole, hole), False)]


def _cross(rng: np.random.Generator) -> list[Polygon]:
    a, b = rng.uniform(0.24, 0.32), 0.95
    # Twelve corners of a plus sign, clockwise from the top-left of the upper arm.
    corners = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a)]
    pts = np.array([*corners, (-b, a), (-b, -a), (-a, -a)])
    return [(_rotate(pts, _upright(rng, 15.0)), True)]


def _moon(rng: np.random.Generator) -> list[Polygon]:
    cut_r, shift = rng.uniform(0.78, 0.9), rng.uniform(0.4, 0.55)
    angle = _any_angle(rng)
    bite = _ellipse(cut_r, cut_r, cx=shift)
    return [(_ellipse(1.0, 1.0), True), (_rotate(bite, angle), False)]


def _arrow(rng: np.random.Generator) -> list[Polygon]:
    shaft, head = rng.uniform(0.14, 0.22), rng.uniform(0.45, 0.55)
    neck = 0.15
    pts = np.array(
        [
            [-1.0, -shaft],
            [neck, -shaft],
            [neck, -head],
            [1.0, 0.0],
            [neck, head],
            [neck, shaft],
            [-1.0, shaft],
        ]
    )
    return [(_rotate(pts, _any_angle(rng)), True)]


@functools.lru_cache(maxsize=16)
def _gear_outline(teeth: int) -> np.ndarray:
    inner, outer = 0.74, 1.0
    # Each tooth: root, rise, top, fall — a trapezoid wave around the rim.
    step = 2.0 * math.pi / teeth
    theta = np.concatenate([k * step + np.array([0.0, 0.3, 0.5, 0.8]) * step for k in range(teeth)])
    radius = np.tile([inner, outer, outer, inner], teeth)
    return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)


def _gear(rng: np.random.Generator) -> list[Polygon]:
    outline = _gear_outline(7 + int(rng.random() * 4))
    hole = rng.uniform(0.22, 0.3)
    return [(_rotate(outline, _any_angle(rng)), True), (_ellipse(hole, hole), False)]


def _bone(rng: np.random.Generator) -> list[Polygon]:
    knob = rng.uniform(0.24, 0.29)
    end = 0.95 - knob
    shaft = np.array([[-end, -0.15], [end, -0.15], [end, 0.15], [-end, 0.15]])
    parts = [shaft] + [_ellipse(knob, knob, sx * end, sy * 0.2) for sx in (-1, 1) for sy in (-1, 1)]
    angle = _any_angle(rng)
    return [(_rotate(p, angle), True) for p in parts]


SHAPES: dict[str, Callable[[np.random.Generator], list[Polygon]]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "heart": _heart,
    "ring": _ring,
    "cross": _cross,
    "diamond": _diamond,
    "crown": _crown,
    "moon": _moon,
    "arrow": _arrow,
    "ellipse": _ellipse_shape,
    "gear": _gear,
    "bone": _bone,
}


def check_classes(classes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The classes as a tuple, or ValueError naming the ones no outline exists for."""
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes: expected at least one class name, got none")
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ValueError(f"classes: unknown {unknown}; expected names from {sorted(SHAPES)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected distinct names, got {list(classes)}")
    return classes


def category_id(class_name: str) -> int:
    """COCO category id: 1-based position in DEFAULT_CLASSES, the same whatever subset is used."""
    return DEFAULT_CLASSES.index(class_name) + 1


def shape_polygons(class_name: str, rng: np.random.Generator) -> list[Polygon]:
    """Outline of one instance of the class (random proportions and rotation), in unit coords."""
    return SHAPES[class_name](rng)


def rasterise(
    polygons: list[Polygon],
    centre_px: tuple[float, float],
    radius_px: float,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Exact mask of the shape scaled to `radius_px` around `centre_px`, on a crop.

    Returns (mask (h, w) bool, (x0, y0)): the crop's top-left corner in image pixels. Pixel (x, y)
    of the image is covered when PIL's polygon fill covers it; the crop spans the unit disc.
    """
    cx, cy = centre_px
    x0, y0 = math.floor(cx - radius_px) - 1, math.floor(cy - radius_px) - 1
    size = (math.ceil(cx + radius_px) + 2 - x0, math.ceil(cy + radius_px) + 2 - y0)
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for unit, filled in polygons:
        pts = unit * radius_px + np.array([cx - x0, cy - y0])  # (K, 2) crop pixels
        draw.polygon(pts.ravel().tolist(), fill=1 if filled else 0)
    return np.asarray(canvas, dtype=bool), (x0, y0)
