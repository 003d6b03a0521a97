"""Records of the synthetic world: objects with masks, narrations and their ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alp_dataset.synthetic.shapes import category_id


@dataclass(frozen=True)
class SyntheticObject:
    """One drawn object. Its mask is the *visible* part (objects drawn later cover it), as COCO's.

    The mask is kept as a crop (`mask_crop` placed at `mask_origin_px`) so that a sample costs a few
    kilobytes rather than a full (H, W) array per object; `mask` builds the full-size array.
    """

    object_id: int  # drawing order in its image, 0 = drawn first (bottom-most)
    class_name: str
    colour: str  # colour adjective, a key of shapes.COLOURS
    size_word: str  # "small", "big", "large", or "" for a medium object
    box_xyxy_px: tuple[float, float, float, float]  # extent of the visible mask, x1/y1 exclusive
    area: int  # visible pixels
    visible_fraction: float  # visible pixels / pixels of the whole shape
    texture: str  # fill pattern used when rendering ("solid", "stripes", ...)
    image_width: int
    image_height: int
    mask_origin_px: tuple[int, int]  # (x, y) of mask_crop[0, 0] in the image
    mask_crop: np.ndarray = field(compare=False, repr=False)  # bool (h, w)

    @property
    def mask(self) -> np.ndarray:
        """The visible mask as a bool (H, W) array."""
        full = np.zeros((self.image_height, self.image_width), dtype=bool)
        x0, y0 = self.mask_origin_px
        h, w = self.mask_crop.shape
        full[y0 : y0 + h, x0 : x0 + w] = self.mask_crop
        return full

    @property
    def box_xyxy_norm(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.box_xyxy_px
        w, h = self.image_width, self.image_height
        return (round(x0 / w, 6), round(y0 / h, 6), round(x1 / w, 6), round(y1 / h, 6))

    @property
    def category_id(self) -> int:
        return category_id(self.class_name)


@dataclass(frozen=True)
class Mention:
    """Ground truth for one object named in a caption.

    `phrase` is the caption text `caption[start_char:end_char]`: the adjectives and the class noun,
    without the article ("big red circle"). `t_start`, `t_end` are when those words were spoken
    (seconds), also when the recogniser left them untimed. The pointer hovers over the object
    roughly during [t_start + pointer_lag, t_end + pointer_lag].
    """

    object_id: int
    class_name: str
    phrase: str
    start_char: int
    end_char: int
    box_xyxy_norm: tuple[float, float, float, float]
    t_start: float
    t_end: float
    pointer_lag: float  # seconds the pointer trails the speech (negative: it leads)
    timed: bool  # whether any utterance covering the phrase has a timing


@dataclass(frozen=True)
class Narration:
    """One annotator's Localized Narrative of an image and the ground truth behind it."""

    annotator_id: int
    narrative: dict[str, Any] = field(hash=False)  # LocNar JSON form, json.dumps-able
    mentions: tuple[Mention, ...]


@dataclass(frozen=True)
class Background:
    """What is behind the objects: a scene of stuff (wall, sky and grass, floor...)."""

    scene: str
    colour_word: str  # adjective used for the stuff in captions, "" when none fits
    rgb: tuple[tuple[int, int, int], ...]  # base colours: one per stuff region, top to bottom
    horizon: float  # fraction of the height where the second region starts (1.0: one region)
    texture_seed: int  # seeds the pixel noise of background and object textures


@dataclass(frozen=True)
class SyntheticSample:
    """One image of the synthetic world: objects and narrations; pixels come from render()."""

    index: int  # position in the world: the sample depends only on (seed, index)
    image_id: str  # f"{index:08d}", as LocNar writes COCO ids (int(image_id) == COCO image id)
    width: int
    height: int
    objects: tuple[SyntheticObject, ...]
    background: Background
    narrations: tuple[Narration, ...]  # one per annotator, at least one

    @property
    def narrative(self) -> dict[str, Any]:
        """The first annotator's narrative."""
        return self.narrations[0].narrative

    @property
    def mentions(self) -> tuple[Mention, ...]:
        """The first annotator's mentions."""
        return self.narrations[0].mentions

    def render(self) -> np.ndarray:
        """The image as uint8 (H, W, 3); deterministic, a pure function of this record."""
        from alp_dataset.synthetic.render import render_sample

        return render_sample(self)
