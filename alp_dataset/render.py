"""Draw one image with its mouse traces, ALP boxes and phrases (and ground truth) with Pillow.

Pure drawing: callers pass the pixels, the ALPs, the traces and the ground truth as data
(``alp_dataset.inspect`` reads them from a run's output). The picture shows, over the image:

- each narrative's mouse trace as a thin light polyline (a dot marks its start), and the part of
  it inside an ALP's padded time window (t_start - t_p, t_end + t_p) thick, in that ALP's colour:
  those are the points its box bounds (ALP paper, Sec. 3.1);
- each ALP box in its colour, labelled with its number and phrase;
- ground-truth masks outlined and their boxes dashed, labelled with the category;

and to the right a legend: per ALP its number, phrase, speaking time and point count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["AlpBox", "GtInstance", "Trace", "render_alps"]

# High-contrast colours that stay readable on photos (Tableau 10, reordered).
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (23, 190, 207),
    (227, 119, 194),
    (188, 189, 34),
    (140, 86, 75),
    (127, 127, 127),
)
# Ground-truth masks: bright colours unlike the ALP palette's first entries.
GT_PALETTE = ((0, 229, 255), (255, 234, 0), (255, 0, 200), (118, 255, 3), (255, 145, 0))
GT_COLOUR = (255, 255, 255)
TRACE_COLOUR = (235, 235, 235)
OUTLINE = (20, 20, 20)
LEGEND_WIDTH = 360
MARGIN = 12


@dataclass(frozen=True)
class AlpBox:
    """What the picture needs of one ALP row (alp_dataset.schema.ALP_SCHEMA)."""

    annotator_id: int
    alp_index: int
    phrase: str
    box_xyxy_norm: tuple[float, float, float, float]
    t_start: float
    t_end: float
    n_points: int


@dataclass(frozen=True, eq=False)
class Trace:
    """A narrative's mouse trace: segments of normalised (x, y) points with times t (seconds)."""

    annotator_id: int
    segments: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # per segment (x, y, t), (P,)


@dataclass(frozen=True, eq=False)
class GtInstance:
    """A ground-truth object: category name, COCO box (x0, y0, x1, y1 pixels), optional mask."""

    name: str
    box_xyxy_px: tuple[float, float, float, float]
    mask: np.ndarray | None = None  # bool (H, W) of the original image


def render_alps(
    image: Image.Image,
    alps: Sequence[AlpBox],
    *,
    traces: Sequence[Trace] = (),
    temporal_padding: float = 0.5,
    ground_truth: Sequence[GtInstance] = (),
    title: str = "",
    notes: Sequence[str] = (),
    size: int = 768,
) -> Image.Image:
    """The annotated picture: the image scaled so its long side is ``size``, plus the legend."""
    scale = size / max(image.size)
    width, height = round(image.width * scale), round(image.height * scale)
    base = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    font = _font(15)
    small = _font(13)

    picture = _draw_masks(base, ground_truth, image.size)
    draw = ImageDraw.Draw(picture)
    for gt in ground_truth:
        box = tuple(v * scale for v in gt.box_xyxy_px)
        _dashed_rectangle(draw, box, GT_COLOUR, OUTLINE)
    _draw_traces(draw, traces, alps, temporal_padding, width, height)
    placed: list[tuple[float, float, float, float]] = []
    for i, alp in enumerate(alps):
        x0, y0, x1, y1 = (
            alp.box_xyxy_norm[0] * width,
            alp.box_xyxy_norm[1] * height,
            alp.box_xyxy_norm[2] * width,
            alp.box_xyxy_norm[3] * height,
        )
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=OUTLINE, width=1)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=3)
        _label(draw, (x0, y0), f"{i + 1} {alp.phrase}", colour, font, placed, width, height)
    for i, gt in enumerate(ground_truth):
        colour = _gt_colour(i) if gt.mask is not None else GT_COLOUR
        x0, y0, _, _ = (v * scale for v in gt.box_xyxy_px)
        _label(draw, (x0, y0), f"GT {gt.name}", colour, small, placed, width, height)
    return _with_legend(picture, alps, ground_truth, traces, temporal_padding, title, notes)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _gt_colour(i: int) -> tuple[int, int, int]:
    return GT_PALETTE[i % len(GT_PALETTE)]


def _draw_masks(
    base: Image.Image, ground_truth: Sequence[GtInstance], original_size: tuple[int, int]
) -> Image.Image:
    """Each GT mask outlined in a colour of its own; no fill, so the object's own colours (which
    the phrases name) stay as they are."""
    picture = base.copy()
    for i, gt in enumerate(ground_truth):
        if gt.mask is None or gt.mask.shape[::-1] != original_size:
            continue  # a mask of another image size cannot be placed; its box is still drawn
        mask = Image.fromarray(gt.mask.astype(np.uint8) * 255).resize(
            base.size, Image.Resampling.NEAREST
        )
        inside = np.asarray(mask) > 0  # (H', W') at the drawn size
        edge = inside & ~_eroded(inside, 3)
        fill = Image.new("RGB", base.size, _gt_colour(i))
        picture.paste(fill, (0, 0), Image.fromarray(edge.astype(np.uint8) * 255))
    return picture


def _eroded(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion by a 3x3 cross, ``steps`` times (numpy only)."""
    out = mask.copy()
    for _ in range(steps):
        shrunk = out.copy()
        shrunk[1:, :] &= out[:-1, :]
        shrunk[:-1, :] &= out[1:, :]
        shrunk[:, 1:] &= out[:, :-1]
        shrunk[:, :-1] &= out[:, 1:]
        out = shrunk
    return out


def _window_mask(t: np.ndarray, alp: AlpBox, temporal_padding: float) -> np.ndarray:
    """Points strictly inside the ALP's padded window, as the curation selects them."""
    return (t > alp.t_start - temporal_padding) & (t < alp.t_end + temporal_padding)


def _draw_traces(
    draw: ImageDraw.ImageDraw,
    traces: Sequence[Trace],
    alps: Sequence[AlpBox],
    temporal_padding: float,
    width: int,
    height: int,
) -> None:
    for trace in traces:
        for x, y, _ in trace.segments:
            points = list(zip((x * width).tolist(), (y * height).tolist(), strict=True))
            if len(points) >= 2:
                draw.line(points, fill=OUTLINE, width=4, joint="curve")
                draw.line(points, fill=TRACE_COLOUR, width=2, joint="curve")
            if points:
                px, py = points[0]
                draw.ellipse((px - 4, py - 4, px + 4, py + 4), fill=TRACE_COLOUR, outline=OUTLINE)
        for i, alp in enumerate(alps):
            if alp.annotator_id != trace.annotator_id:
                continue
            colour = PALETTE[i % len(PALETTE)]
            for x, y, t in trace.segments:
                for run in _runs(_window_mask(t, alp, temporal_padding)):
                    points = list(
                        zip((x[run] * width).tolist(), (y[run] * height).tolist(), strict=True)
                    )
                    if len(points) >= 2:
                        draw.line(points, fill=colour, width=4, joint="curve")
                    for px, py in points:
                        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """Indices of each run of consecutive True values: [F, T, T, F, T] -> [[1, 2], [4]]."""
    index = np.flatnonzero(mask)
    if len(index) == 0:
        return []
    return np.split(index, np.flatnonzero(np.diff(index) > 1) + 1)


def _dashed_rectangle(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, ...],
    colour: tuple[int, int, int],
    outline: tuple[int, int, int],
    dash: float = 8.0,
) -> None:
    x0, y0, x1, y1 = box
    for (ax, ay), (bx, by) in (
        ((x0, y0), (x1, y0)),
        ((x1, y0), (x1, y1)),
        ((x1, y1), (x0, y1)),
        ((x0, y1), (x0, y0)),
    ):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // dash))
        for k in range(0, steps, 2):
            s0, s1 = k / steps, min(1.0, (k + 1) / steps)
            segment = (
                ax + (bx - ax) * s0,
                ay + (by - ay) * s0,
                ax + (bx - ax) * s1,
                ay + (by - ay) * s1,
            )
            draw.line(segment, fill=outline, width=4)
            draw.line(segment, fill=colour, width=2)


def _fit(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    max_width: float,
) -> str:
    """``text``, cut and ended with "..." where it is wider than ``max_width`` pixels."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label(
    draw: ImageDraw.ImageDraw,
    anchor: tuple[float, float],
    text: str,
    colour: tuple[int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    placed: list[tuple[float, float, float, float]],
    width: int,
    height: int,
) -> None:
    """A filled tag at the box's top-left corner (above it where there is room), moved down past
    tags already placed so none hides another."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 8, bottom - top + 6
    x = min(max(0.0, anchor[0]), max(0.0, width - w))
    y = anchor[1] - h if anchor[1] - h >= 0 else anchor[1]
    rect = (x, y, x + w, y + h)
    for _ in range(20):
        if not any(_overlaps(rect, other) for other in placed):
            break
        y = min(y + h, height - h)
        rect = (x, y, x + w, y + h)
    placed.append(rect)
    text_colour = (0, 0, 0) if sum(colour) > 500 else (255, 255, 255)
    draw.rectangle(rect, fill=colour, outline=OUTLINE)
    draw.text((x + 4 - left, y + 3 - top), text, fill=text_colour, font=font)


def _with_legend(
    picture: Image.Image,
    alps: Sequence[AlpBox],
    ground_truth: Sequence[GtInstance],
    traces: Sequence[Trace],
    temporal_padding: float,
    title: str,
    notes: Sequence[str],
) -> Image.Image:
    font, small = _font(15), _font(13)
    line = 22
    lines_needed = 4 + 2 * len(alps) + len(ground_truth) + len(notes) + 4
    canvas_height = max(picture.height + 2 * MARGIN + line, lines_needed * line + 2 * MARGIN)
    canvas = Image.new("RGB", (picture.width + LEGEND_WIDTH + 3 * MARGIN, canvas_height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), title, fill=(0, 0, 0), font=font)
    canvas.paste(picture, (MARGIN, MARGIN + line))

    x = picture.width + 2 * MARGIN
    y = MARGIN + line
    draw.text(
        (x, y), f"{len(alps)} ALP(s), t_p = {temporal_padding:g} s", fill=(0, 0, 0), font=font
    )
    y += line + 4
    for i, alp in enumerate(alps):
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle((x, y + 2, x + 16, y + 16), fill=colour, outline=OUTLINE)
        text = _fit(draw, f"{i + 1}  {alp.phrase}", font, LEGEND_WIDTH - 24)
        draw.text((x + 24, y), text, fill=(0, 0, 0), font=font)
        y += line - 2
        detail = (
            f"annotator {alp.annotator_id}, t {alp.t_start:.2f} to {alp.t_end:.2f} s, "
            f"{alp.n_points} points"
        )
        draw.text((x + 24, y), detail, fill=(90, 90, 90), font=small)
        y += line
    if ground_truth:
        y += 4
        for i, gt in enumerate(ground_truth):
            colour = _gt_colour(i) if gt.mask is not None else (200, 200, 200)
            draw.rectangle((x, y + 3, x + 16, y + 15), fill=colour)
            _dashed_rectangle(draw, (x, y + 3, x + 16, y + 15), GT_COLOUR, OUTLINE, 4)
            draw.text(
                (x + 24, y), f"GT {gt.name} (mask outlined, box dashed)", fill=(0, 0, 0), font=small
            )
            y += line - 4
    y += 8
    if traces:
        draw.line((x, y + 8, x + 16, y + 8), fill=OUTLINE, width=4)
        draw.line((x, y + 8, x + 16, y + 8), fill=(200, 200, 200), width=2)
        draw.text((x + 24, y), "mouse trace (dot: its start); coloured", fill=(0, 0, 0), font=small)
        y += line - 6
        draw.text((x + 24, y), "where an ALP's padded window covers it", fill=(0, 0, 0), font=small)
        y += line
    for note in notes:
        draw.text((x, y), _fit(draw, note, small, LEGEND_WIDTH), fill=(150, 40, 40), font=small)
        y += line - 4
    return canvas
