"""The synthetic world: images of shapes on a background, and narratives about them.

Sample `index` of a world depends only on (seed, index): its layout comes from
`np.random.default_rng([seed, index])`, each narration from its own stream, so any range of a world
can be generated alone and equals the same range of a full run. No pixels are made here; masks are
rasterised on small crops, and `SyntheticSample.render()` paints the image on request.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from alp_dataset.synthetic.mouse import Hover, make_traces
from alp_dataset.synthetic.narration import (
    ANNOTATOR_POOL,
    AnnotatorStyle,
    annotator_style,
    make_caption,
    phrase_words,
    speak,
)
from alp_dataset.synthetic.records import (
    Background,
    Mention,
    Narration,
    SyntheticObject,
    SyntheticSample,
)
from alp_dataset.synthetic.render import TEXTURES
from alp_dataset.synthetic.scenes import SCENES
from alp_dataset.synthetic.shapes import (
    COLOURS,
    DEFAULT_CLASSES,
    check_classes,
    rasterise,
    shape_polygons,
)

DATASET_ID = "synthetic"
MIN_IMAGE_SIDE = 64
MIN_VISIBLE_FRACTION = 0.6  # occlusion never hides more than 40 % of an object
MIN_CONTRAST = 90.0  # RGB distance between an object's colour and the stuff behind it
# Stream tags: keep the seeds of annotator choice and narrations apart from [seed, index].
_ANNOTATOR_STREAM = 0xA22
_NARRATION_STREAM = 0x2A7


@dataclass
class _Placed:
    """An object during layout; `visible` shrinks as objects are put on top of it."""

    class_name: str
    colour: str
    size_word: str
    texture: str
    origin: tuple[int, int]
    shape: np.ndarray  # bool (h, w): the whole shape
    visible: np.ndarray  # bool (h, w)
    shape_area: int
    visible_area: int


def _background(rng: np.random.Generator) -> Background:
    scene = SCENES[int(rng.integers(len(SCENES)))]
    colour_word, rgb = scene.palettes[int(rng.integers(len(scene.palettes)))]
    horizon = float(rng.uniform(0.35, 0.6)) if len(rgb) > 1 else 1.0
    return Background(scene.name, colour_word, rgb, horizon, int(rng.integers(2**63)))


@functools.lru_cache(maxsize=64)
def _object_colours(stuff_rgb: tuple[tuple[int, int, int], ...]) -> tuple[str, ...]:
    """Colours that stand out against every stuff region of the background."""
    stuff = np.asarray(stuff_rgb, dtype=np.float64)  # (R, 3)
    return tuple(
        name
        for name, rgb in COLOURS.items()
        if np.linalg.norm(stuff - np.asarray(rgb, dtype=np.float64), axis=1).min() >= MIN_CONTRAST
    )


def _overlap(a: _Placed, origin: tuple[int, int], shape: np.ndarray) -> tuple[slice, ...] | None:
    """Slices (rows and columns of a, then of the new crop) where two crops overlap, else None."""
    ax, ay = a.origin
    bx, by = origin
    x0, y0 = max(ax, bx), max(ay, by)
    x1 = min(ax + a.shape.shape[1], bx + shape.shape[1])
    y1 = min(ay + a.shape.shape[0], by + shape.shape[0])
    if x0 >= x1 or y0 >= y1:
        return None
    return (
        slice(y0 - ay, y1 - ay),
        slice(x0 - ax, x1 - ax),
        slice(y0 - by, y1 - by),
        slice(x0 - bx, x1 - bx),
    )


def _layout(
    rng: np.random.Generator,
    classes: tuple[str, ...],
    background: Background,
    width: int,
    height: int,
) -> list[_Placed]:
    """1-4 objects of distinct colours, each keeping most of its area visible."""
    side = min(width, height)
    n_target = 1 + int(rng.choice(4, p=[0.2, 0.3, 0.3, 0.2]))
    max_radius = (0.3, 0.26, 0.22, 0.2)[n_target - 1]
    colours = _object_colours(background.rgb)
    placed: list[_Placed] = []
    for _ in range(n_target):
        for _attempt in range(30):
            class_name = classes[int(rng.random() * len(classes))]
            free = [c for c in colours if c not in {p.colour for p in placed}]
            colour = free[int(rng.random() * len(free))]
            radius_frac = rng.uniform(0.08, max_radius)
            big_word = "big" if rng.random() < 0.6 else "large"
            texture = TEXTURES[int(rng.random() * len(TEXTURES))]
            radius = side * radius_frac
            cx = rng.uniform(radius + 2.0, width - radius - 2.0)
            cy = rng.uniform(radius + 2.0, height - radius - 2.0)
            shape, origin = rasterise(shape_polygons(class_name, rng), (cx, cy), radius)
            # The new object goes on top: every object under it must keep enough of itself.
            cuts = []
            for p in placed:
                sl = _overlap(p, origin, shape)
                if sl is None:
                    continue
                covered = p.visible[sl[0], sl[1]] & shape[sl[2], sl[3]]
                n_covered = int(np.count_nonzero(covered))
                if p.visible_area - n_covered < MIN_VISIBLE_FRACTION * p.shape_area:
                    break
                cuts.append((p, sl, covered, n_covered))
            else:
                for p, sl, covered, n_covered in cuts:
                    p.visible[sl[0], sl[1]] &= ~covered
                    p.visible_area -= n_covered
                size_word = "small" if radius_frac < 0.12 else big_word if radius_frac > 0.2 else ""
                area = int(np.count_nonzero(shape))
                placed.append(
                    _Placed(
                        class_name=class_name,
                        colour=colour,
                        size_word=size_word,
                        texture=texture,
                        origin=origin,
                        shape=shape,
                        visible=shape.copy(),
                        shape_area=area,
                        visible_area=area,
                    )
                )
                break
    return placed


def _finish(placed: list[_Placed], width: int, height: int) -> tuple[SyntheticObject, ...]:
    objects = []
    for k, p in enumerate(placed):
        rows = np.flatnonzero(p.visible.any(axis=1))
        cols = np.flatnonzero(p.visible.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = np.ascontiguousarray(p.visible[r0:r1, c0:c1])  # trimmed to the visible extent
        x0, y0 = p.origin[0] + c0, p.origin[1] + r0
        area = p.visible_area
        objects.append(
            SyntheticObject(
                object_id=k,
                class_name=p.class_name,
                colour=p.colour,
                size_word=p.size_word,
                box_xyxy_px=(float(x0), float(y0), float(x0 + c1 - c0), float(y0 + r1 - r0)),
                area=area,
                visible_fraction=round(area / p.shape_area, 6),
                texture=p.texture,
                image_width=width,
                image_height=height,
                mask_origin_px=(x0, y0),
                mask_crop=crop,
            )
        )
    return tuple(objects)


def _narration(
    rng: np.random.Generator,
    style: AnnotatorStyle,
    image_id: str,
    objects: tuple[SyntheticObject, ...],
    background: Background,
) -> Narration:
    caption = make_caption(rng, style, objects, background)
    speech = speak(rng, style, caption)
    hovers, words = [], []
    for p in caption.phrases:
        ws = phrase_words(speech, p.start_char, p.end_char)
        words.append(ws)
        obj = objects[p.object_id]
        hovers.append(Hover(obj, speech.word_times[ws[0]][0], speech.word_times[ws[-1]][1]))
    traces, lags = make_traces(rng, style, hovers, speech.end)
    mentions = tuple(
        Mention(
            object_id=p.object_id,
            class_name=h.obj.class_name,
            phrase=p.phrase,
            start_char=p.start_char,
            end_char=p.end_char,
            box_xyxy_norm=h.obj.box_xyxy_norm,
            t_start=round(h.t_start, 3),
            t_end=round(h.t_end, 3),
            pointer_lag=round(lag, 3),
            timed=any(speech.word_timed[w] for w in ws),
        )
        for p, h, lag, ws in zip(caption.phrases, hovers, lags, words, strict=True)
    )
    aid = style.annotator_id
    narrative = {
        "dataset_id": DATASET_ID,
        "image_id": image_id,
        "annotator_id": aid,
        "caption": caption.text,
        "timed_caption": [dict(u) for u in speech.timed_caption],
        "traces": traces,
        "voice_recording": f"{DATASET_ID}/{DATASET_ID}_{image_id}_{aid}.ogg",
    }
    return Narration(annotator_id=aid, narrative=narrative, mentions=mentions)


@functools.lru_cache(maxsize=4096)
def _style(seed: int, annotator_id: int) -> AnnotatorStyle:
    return annotator_style(seed, annotator_id)


def make_sample(
    index: int,
    *,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    image_size: tuple[int, int] = (256, 256),
    annotators_per_image: int = 1,
) -> SyntheticSample:
    """Sample `index` of the world given by the other arguments (see make_world)."""
    classes = check_classes(tuple(classes))
    width, height = _check_size(image_size)
    _check_annotators(annotators_per_image)
    return _make_sample(index, seed, classes, width, height, annotators_per_image)


def _make_sample(
    index: int, seed: int, classes: tuple[str, ...], width: int, height: int, annotators: int
) -> SyntheticSample:
    rng = np.random.default_rng([seed, index])
    background = _background(rng)
    objects = _finish(_layout(rng, classes, background, width, height), width, height)
    image_id = f"{index:08d}"
    # A permutation's prefix does not depend on how many annotators are taken.
    pool = np.random.default_rng([seed, index, _ANNOTATOR_STREAM]).permutation(ANNOTATOR_POOL)
    narrations = tuple(
        _narration(
            np.random.default_rng([seed, index, slot, _NARRATION_STREAM]),
            _style(seed, int(pool[slot])),
            image_id,
            objects,
            background,
        )
        for slot in range(annotators)
    )
    return SyntheticSample(index, image_id, width, height, objects, background, narrations)


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in image_size)
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"image_size: expected (width, height) of at least {MIN_IMAGE_SIDE} px, "
            f"got {tuple(image_size)}"
        )
    return width, height


def _check_annotators(annotators_per_image: int) -> None:
    if not 1 <= annotators_per_image <= ANNOTATOR_POOL:
        raise ValueError(
            f"annotators_per_image: expected 1..{ANNOTATOR_POOL}, got {annotators_per_image}"
        )


def make_world(
    n_images: int,
    *,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    image_size: tuple[int, int] = (256, 256),
    annotators_per_image: int = 1,
    start: int = 0,
) -> Iterator[SyntheticSample]:
    """Samples start, ..., start + n_images - 1 of the world; image_size is (width, height).

    Lazy: records are made as they are consumed and no pixels are painted (see render()).
    Arguments are checked when called, not at the first next().
    """
    if n_images < 0 or start < 0:
        raise ValueError(f"n_images, start: expected >= 0, got {n_images}, {start}")
    checked = check_classes(tuple(classes))
    width, height = _check_size(image_size)
    _check_annotators(annotators_per_image)
    return (
        _make_sample(i, seed, checked, width, height, annotators_per_image)
        for i in range(start, start + n_images)
    )
