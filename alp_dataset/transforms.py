"""Training and evaluation transforms: horizontal flip, large-scale jitter, ALP box quantization.

A sample is an image tensor (C, H, W), float or uint8, and a target dict:

- ``"instances"``: an `Instances` (boxes, optional masks, ``is_alp``, any other per-instance
  fields), everything aligned along dim 0 so that dropping an instance drops all of it;
- ``"traces_xy_px"`` (optional): mouse-trace points (P, 2), x, y in pixels of the image;
- any other key (image id, captions...) passes through untouched.

The transforms add ``"geometry"``: a `Geometry` that says how output pixels relate to input ones,
so predictions can be mapped back to the original image (`Geometry.boxes_to_input`).

Training (`TrainTransform`), in this order:

1. **Horizontal flip** with probability 0.5, on the input image. Flipping first keeps the padding at
   the bottom / right, where evaluation puts it too.
2. **Large-scale jitter** (LSJ; Ghiasi et al., "Simple Copy-Paste", Sec. 3; the ALP paper, Sec. 3.4,
   with a 1024 x 1024 crop). As detectron2's ``ResizeScale`` + ``FixedSizeCrop`` and the TF
   reference ``resize_and_crop_image`` define it: draw a factor f uniformly from
   ``scale_range``; resize (aspect kept) so the image fits a square of side f * S, i.e. its longer
   side becomes round(f * S); then cut an S x S window at a uniformly drawn offset when the resized
   image is larger than S (per axis), and pad bottom / right with ``pad_value`` when it is smaller.
   Boxes are clipped to the part of the window that holds image pixels; an instance whose clipped
   box is ``min_box_side`` pixels wide or high or less is removed with all its fields.
3. **Box quantization** of ALP boxes only (ALP paper, Sec. 3.2): each instance draws Q from
   ``quantize`` (None = keep the box); ALP boxes with a Q are stretched outwards to a grid of
   Q * L / 256 px cells by `alp_curation.boxes.quantize_boxes_xyxy_px`, with L the shorter edge of
   the *output* image (S), then clipped to the image pixels of the window. It runs after LSJ
   because the paper defines the grid on the image the detector is trained on: cells are then a
   fixed number of input pixels (Q * S / 256, a multiple of the FPN strides for S = 1024), and
   instances cropped away are not brought back by a stretched box. As S / cell = 256 / Q is a
   whole number, the grid is symmetric and flipping before or after makes no difference.

Masks are resampled with nearest neighbour (pixel-centre aligned, like ``nearest-exact``); images
with bilinear interpolation, antialiased when shrinking. Trace points are mapped like box corners
and never clipped or dropped (LocNar traces may lie up to ~10 % outside the image, and a per-point
array such as times stays aligned with them).

Randomness: all of it comes from the ``torch.Generator`` passed to the call, drawn in a fixed
order (four uniforms for scale, crop x, crop y, flip; then one Q index per instance), so a sample
transformed twice with generators seeded alike comes out identical.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alp_curation.boxes import QUANTIZATION_Q, quantize_boxes_xyxy_px
from alp_dataset.rle_masks import RleMasks

__all__ = [
    "GEOMETRY",
    "INSTANCES",
    "TRACES",
    "EvalTransform",
    "Geometry",
    "Instances",
    "TrainTransform",
    "apply_geometry",
    "is_channels_last",
    "quantize_alp_boxes",
    "sample_lsj_geometry",
]

INSTANCES = "instances"
TRACES = "traces_xy_px"
GEOMETRY = "geometry"


def _length(value: Any) -> int | None:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return int(value.shape[0]) if value.ndim > 0 else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def _select(value: Any, keep: torch.Tensor) -> Any:
    if isinstance(value, RleMasks):
        return value.select(keep)
    if isinstance(value, torch.Tensor):
        return value[keep.to(value.device)]
    if isinstance(value, np.ndarray):
        return value[keep.cpu().numpy()]
    kept = [v for v, k in zip(value, keep.tolist(), strict=True) if k]
    return tuple(kept) if isinstance(value, tuple) else kept


@dataclass(frozen=True, eq=False)  # tensors have no single truth value: compare fields
class Instances:
    """The annotated instances of one image, aligned along dim 0 (N = instances).

    Attributes:
        boxes_xyxy_px: (N, 4) floating tensor, pixels of the image they belong to.
        masks: (N, H, W) bool or uint8 tensor at the image's size, an `RleMasks` of that
            shape (decoded by `apply_geometry` for the instances it keeps, and only the pixels
            its window reads), or None (no masks).
        is_alp: (N,) bool tensor, True for ALP boxes (quantized in training, no box-regression
            loss). None: decided by ``fields["source"] == "alp"`` when that field exists, else
            no instance is an ALP.
        fields: any other per-instance values (labels, embeddings, phrase ids...): tensors,
            arrays, lists or tuples of length N, kept or dropped with their instance.
    """

    boxes_xyxy_px: torch.Tensor
    masks: torch.Tensor | None = None
    is_alp: torch.Tensor | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        boxes = self.boxes_xyxy_px
        if not (isinstance(boxes, torch.Tensor) and boxes.ndim == 2 and boxes.shape[1] == 4):
            got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise ValueError(f"Instances.boxes_xyxy_px must be a (N, 4) tensor, got {got}")
        if not boxes.is_floating_point():
            raise ValueError(f"Instances.boxes_xyxy_px must be floating point, got {boxes.dtype}")
        n = boxes.shape[0]
        if isinstance(self.masks, RleMasks):
            if len(self.masks) != n:
                raise ValueError(f"Instances.masks must hold {n} masks, got {self.masks!r}")
        elif self.masks is not None:
            m = self.masks
            if not (isinstance(m, torch.Tensor) and m.ndim == 3 and m.shape[0] == n):
                got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(f"Instances.masks must be a ({n}, H, W) tensor, got {got}")
            if m.dtype not in (torch.bool, torch.uint8):
                raise ValueError(f"Instances.masks must be bool or uint8, got {m.dtype}")
        if self.is_alp is not None:
            a = self.is_alp
            if not (isinstance(a, torch.Tensor) and a.shape == (n,) and a.dtype == torch.bool):
                got = (a.dtype, tuple(a.shape)) if isinstance(a, torch.Tensor) else type(a)
                raise ValueError(f"Instances.is_alp must be a ({n},) bool tensor, got {got}")
        for name, value in self.fields.items():
            if _length(value) != n:
                raise ValueError(
                    f"Instances.fields[{name!r}] must be a tensor, array, list or tuple of "
                    f"length {n} (one per box), got {type(value).__name__} of length "
                    f"{_length(value)}"
                )
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def __len__(self) -> int:
        return int(self.boxes_xyxy_px.shape[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy does not pickle; DataLoader workers pickle what they return.
        return (Instances, (self.boxes_xyxy_px, self.masks, self.is_alp, dict(self.fields)))

    @classmethod
    def empty(cls, *, image_hw: tuple[int, int] | None = None) -> Instances:
        """No instances; with ``image_hw``, an empty (0, H, W) mask tensor too."""
        masks = None if image_hw is None else torch.zeros((0, *image_hw), dtype=torch.bool)
        return cls(torch.zeros((0, 4)), masks=masks, is_alp=torch.zeros(0, dtype=torch.bool))

    def alp(self) -> torch.Tensor:
        """(N,) bool: which instances are ALPs (see ``is_alp``)."""
        if self.is_alp is not None:
            return self.is_alp
        source = self.fields.get("source")
        if source is not None:
            return torch.tensor([s == "alp" for s in source], dtype=torch.bool).reshape(-1)
        return torch.zeros(len(self), dtype=torch.bool)

    def filter(self, keep: torch.Tensor) -> Instances:
        """The instances where ``keep`` ((N,) bool) is True, every field alike."""
        keep = torch.as_tensor(keep)
        if keep.dtype != torch.bool or keep.shape != (len(self),):
            raise ValueError(
                f"keep must be a ({len(self)},) bool tensor, got {keep.dtype} {keep.shape}"
            )
        return Instances(
            _select(self.boxes_xyxy_px, keep),
            masks=None if self.masks is None else _select(self.masks, keep),
            is_alp=None if self.is_alp is None else _select(self.is_alp, keep),
            fields={name: _select(value, keep) for name, value in self.fields.items()},
        )

    def replace(self, **changes: Any) -> Instances:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Geometry:
    """How a transformed image relates to its input: flip, resize, crop, pad.

    A point (x, y) of the input image (pixels, origin top-left) lands at
        x' = (W_in - x if flipped else x) * scale_x - crop_x
        y' = y * scale_y - crop_y
    with scale = resized / input size per axis. The output is ``output_hw``; its pixels outside
    ``content_xyxy`` are padding.

    ``crop_xy`` may be fractional: `sample_lsj_geometry` starts the window on a whole *input*
    pixel (crop = input offset * scale), so that only the window's source region is resampled
    rather than the whole resized image (up to 4x the window's pixels under LSJ).

    Attributes:
        input_hw: (H, W) of the input image.
        resized_hw: size the (flipped) image was resized to.
        crop_xy: top-left corner of the output window in the resized image (int, or float when
            it lies on a whole input pixel; see above).
        output_hw: size of the output image.
        flipped: whether the input was mirrored left-right first.
    """

    input_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    crop_xy: tuple[float, float]
    output_hw: tuple[int, int]
    flipped: bool = False

    def __post_init__(self) -> None:
        for name in ("input_hw", "resized_hw", "output_hw"):
            h, w = getattr(self, name)
            if not (h >= 1 and w >= 1):
                raise ValueError(f"Geometry.{name} must be positive, got {(h, w)}")
        cx, cy = self.crop_xy
        if not (0 <= cx < self.resized_hw[1] and 0 <= cy < self.resized_hw[0]):
            raise ValueError(f"Geometry.crop_xy {self.crop_xy} outside resized {self.resized_hw}")

    @property
    def scale_xy(self) -> tuple[float, float]:
        return (self.resized_hw[1] / self.input_hw[1], self.resized_hw[0] / self.input_hw[0])

    @property
    def content_hw(self) -> tuple[int, int]:
        """Size of the top-left part of the output that holds image pixels (whole pixels)."""
        # The epsilon absorbs float error of a fractional crop (input offset * scale).
        return (
            min(math.floor(self.resized_hw[0] - self.crop_xy[1] + 1e-6), self.output_hw[0]),
            min(math.floor(self.resized_hw[1] - self.crop_xy[0] + 1e-6), self.output_hw[1]),
        )

    @property
    def content_xyxy(self) -> tuple[float, float, float, float]:
        h, w = self.content_hw
        return (0.0, 0.0, float(w), float(h))

    def points_to_output(self, points_xy_px: torch.Tensor) -> torch.Tensor:
        """Input points (..., 2) -> output points (..., 2), not clipped."""
        sx, sy = self.scale_xy
        x, y = points_xy_px[..., 0], points_xy_px[..., 1]
        if self.flipped:
            x = self.input_hw[1] - x
        return torch.stack([x * sx - self.crop_xy[0], y * sy - self.crop_xy[1]], dim=-1)

    def boxes_to_output(self, boxes_xyxy_px: torch.Tensor) -> torch.Tensor:
        """Input boxes (N, 4) -> output boxes (N, 4), not clipped."""
        sx, sy = self.scale_xy
        cx, cy = self.crop_xy
        x0, y0, x1, y1 = boxes_xyxy_px.reshape(-1, 4).unbind(-1)  # each (N,)
        if self.flipped:  # mirroring swaps the left and right edges
            x0, x1 = self.input_hw[1] - x1, self.input_hw[1] - x0
        return torch.stack([x0 * sx - cx, y0 * sy - cy, x1 * sx - cx, y1 * sy - cy], dim=-1)

    def boxes_to_input(self, boxes_xyxy_px: torch.Tensor) -> torch.Tensor:
        """Output boxes (N, 4), e.g. predictions -> input-image boxes, clipped to the input."""
        sx, sy = self.scale_xy
        b = boxes_xyxy_px.reshape(-1, 4)
        x0 = (b[:, 0] + self.crop_xy[0]) / sx
        x1 = (b[:, 2] + self.crop_xy[0]) / sx
        y0 = (b[:, 1] + self.crop_xy[1]) / sy
        y1 = (b[:, 3] + self.crop_xy[1]) / sy
        if self.flipped:
            x0, x1 = self.input_hw[1] - x1, self.input_hw[1] - x0
        out = torch.stack([x0, y0, x1, y1], dim=-1)  # (N, 4)
        h, w = self.input_hw
        return torch.minimum(out.clamp(min=0), out.new_tensor([w, h, w, h]))

    def masks_to_input(self, masks: torch.Tensor) -> torch.Tensor:
        """Output-sized masks (N, H_out, W_out) -> input-sized (N, H_in, W_in).

        Float masks (probabilities, logits) are resized bilinearly, bool / uint8 ones with nearest
        neighbour. Only for a geometry whose output shows the whole resized image (evaluation).
        """
        if self.crop_xy != (0, 0) or self.content_hw != self.resized_hw:
            raise ValueError("masks_to_input needs an output that shows the whole resized image")
        h, w = self.content_hw
        content = masks[:, :h, :w]  # (N, h, w)
        if content.is_floating_point():
            out = F.interpolate(
                content[None],
                size=self.input_hw,
                mode="bilinear",
                align_corners=False,
                antialias=h > self.input_hw[0] or w > self.input_hw[1],
            )[0]  # (N, H_in, W_in)
        else:
            rows = _nearest_index(self.input_hw[0], h, 0)
            cols = _nearest_index(self.input_hw[1], w, 0)
            out = content.index_select(1, rows).index_select(2, cols)
        return out.flip(-1) if self.flipped else out


def _nearest_index(n_out: int, n_in: int, offset: float, count: int | None = None) -> torch.Tensor:
    """Source index of output pixels offset, offset + 1, ... (``count`` of them, default n_out)
    of a pixel-centre aligned nearest resize n_in -> n_out: floor((i + 0.5) * n_in / n_out).
    ``offset`` may be fractional (a window starting between resampled pixels)."""
    i = torch.arange(n_out if count is None else count, dtype=torch.float64) + offset
    return ((i + 0.5) * (n_in / n_out)).floor().clamp(0, n_in - 1).long()


def _resize_image(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size_hw:
        return image
    shrink = size_hw[0] < image.shape[-2] or size_hw[1] < image.shape[-1]
    out = F.interpolate(
        image[None], size=size_hw, mode="bilinear", align_corners=False, antialias=shrink
    )
    return out[0]  # (C, h, w)


def is_channels_last(image: torch.Tensor) -> bool:
    """Whether a (C, H, W) image is stored pixel by pixel (channel stride 1), as decoded."""
    if image.ndim != 3:
        return False
    c = image.shape[0]
    return c > 1 and image.stride(0) == 1 and image.stride(2) == c


def _memory_format(image: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(image) else torch.contiguous_format


def _source_offset(crop: float, scale: float) -> int | None:
    """The input pixel a window edge starts on (crop / scale), None when it is not a whole one."""
    offset = crop / scale
    nearest = round(offset)
    return nearest if abs(offset - nearest) < 1e-6 else None


def _window_image(image: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The output window's pixels (C, h, w), h, w = content size, in the input's dtype.

    When the window starts on whole input pixels (always, for `sample_lsj_geometry`), only the
    window's source region is resampled, with the same bilinear (antialiased when shrinking)
    kernel and pixel mapping as resizing the whole image; the first row / column then clamps to
    the region's edge instead of reading the pixel before it (a sub-pixel border difference).
    Otherwise the whole (flipped) image is resized and the window cut from it.
    """
    in_h, in_w = geometry.input_hw
    h, w = geometry.content_hw
    sx, sy = geometry.scale_xy
    x0 = _source_offset(geometry.crop_xy[0], sx)
    y0 = _source_offset(geometry.crop_xy[1], sy)
    if x0 is None or y0 is None:
        flipped = image.flip(-1) if geometry.flipped else image
        resized = _resize_image(flipped, geometry.resized_hw)
        cx, cy = geometry.crop_xy
        if not (float(cx).is_integer() and float(cy).is_integer()):
            raise ValueError(
                f"Geometry.crop_xy {geometry.crop_xy} is neither whole resized pixels nor whole "
                f"input pixels (crop / scale)"
            )
        return resized[:, int(cy) : int(cy) + h, int(cx) : int(cx) + w]
    # Source pixels the window reads: its extent in input pixels, plus the kernel's reach.
    reach = 2 + math.ceil(1 / min(sx, sy))
    src_h = min(in_h - y0, math.ceil(h / sy) + reach)
    src_w = min(in_w - x0, math.ceil(w / sx) + reach)
    if geometry.flipped:  # columns x0.. of the mirrored image are in_w - 1 - x0, ... of the input
        source = image[:, y0 : y0 + src_h, in_w - x0 - src_w : in_w - x0].flip(-1)
    else:
        source = image[:, y0 : y0 + src_h, x0 : x0 + src_w]
    if (sx, sy) == (1.0, 1.0):
        return source[:, :h, :w]
    source = source[None].contiguous(memory_format=_memory_format(image))  # (1, C, h_src, w_src)
    # aten's resize takes the output size and the scale separately, so the window keeps the
    # whole image's pixel mapping: output j reads input x0 + (j + 0.5) / scale - 0.5.
    if sx < 1 or sy < 1:
        out = torch.ops.aten._upsample_bilinear2d_aa(source, [h, w], False, sy, sx)
    else:
        out = torch.ops.aten.upsample_bilinear2d(source, [h, w], False, sy, sx)
    return out[0]  # (C, h, w)


def _transform_masks(masks: torch.Tensor | RleMasks, geometry: Geometry) -> torch.Tensor:
    """Masks of the input (N, H_in, W_in) -> bool / uint8 (N, S_h, S_w) of the output; run
    lengths are decoded only where the window reads them (`RleMasks.window`)."""
    # Naming convention: N = instances; h, w = content size; S_h, S_w = output size.
    in_h, in_w = geometry.input_hw
    res_h, res_w = geometry.resized_hw
    h, w = geometry.content_hw
    # Output pixel (i, j) reads resized pixel (i + crop_y, j + crop_x): gather instead of resizing
    # the whole (N, H, W) stack, which LSJ's 2x upscaling would make large.
    rows = _nearest_index(res_h, in_h, geometry.crop_xy[1], h)
    cols = _nearest_index(res_w, in_w, geometry.crop_xy[0], w)
    if geometry.flipped:
        cols = in_w - 1 - cols
    if isinstance(masks, RleMasks):
        content = masks.window(rows, cols)  # (N, h, w)
    else:
        # On CPU, index_select along a middle dim is several times faster than the last one.
        by_col = masks.transpose(1, 2).contiguous()  # (N, W_in, H_in)
        by_col = by_col.index_select(1, cols.to(masks.device))  # (N, w, H_in)
        content = by_col.transpose(1, 2).index_select(1, rows.to(masks.device))  # (N, h, w)
    if (h, w) == geometry.output_hw:
        return content
    out = content.new_zeros((content.shape[0], *geometry.output_hw))  # (N, S_h, S_w)
    out[:, :h, :w] = content
    return out


def apply_geometry(
    image: torch.Tensor,
    target: Mapping[str, Any] | None,
    geometry: Geometry,
    *,
    min_box_side: float | None = None,
    pad_value: float = 0.0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Flip, resize, crop and pad an image and its target as ``geometry`` says.

    Boxes are clipped to the image pixels of the output. With ``min_box_side``, instances whose
    clipped box is that many pixels wide or high or less are dropped (all fields alike).
    Returns the image (C, H_out, W_out) in the input's dtype and a new target dict with
    ``"geometry"`` set; the input target is not modified.
    """
    _check_image(image)
    if tuple(image.shape[-2:]) != geometry.input_hw:
        raise ValueError(
            f"image is {tuple(image.shape[-2:])}, geometry expects {geometry.input_hw}"
        )
    out_target: dict[str, Any] = dict(target or {})
    if GEOMETRY in out_target:
        raise ValueError(
            f"target already has {GEOMETRY!r}: transforms apply to untransformed input"
        )

    h, w = geometry.content_hw
    # The output keeps the input's memory layout: decoded images are channels-last (H, W, C
    # arrays), for which torch's uint8 resize is several times faster than for planar ones.
    out_image = torch.empty(
        (1, image.shape[0], *geometry.output_hw),
        dtype=image.dtype,
        memory_format=_memory_format(image),
    )[0].fill_(pad_value)  # (C, S_h, S_w)
    out_image[:, :h, :w] = _window_image(image, geometry)

    instances = out_target.get(INSTANCES)
    if instances is not None:
        if not isinstance(instances, Instances):
            raise ValueError(f"target[{INSTANCES!r}] must be Instances, got {type(instances)}")
        if instances.masks is not None and tuple(instances.masks.shape[1:]) != geometry.input_hw:
            raise ValueError(
                f"instance masks are {tuple(instances.masks.shape[1:])}, image {geometry.input_hw}"
            )
        boxes = geometry.boxes_to_output(instances.boxes_xyxy_px)
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))
        instances = instances.replace(boxes_xyxy_px=boxes)
        if min_box_side is not None:
            keep = (boxes[:, 2] - boxes[:, 0] > min_box_side) & (
                boxes[:, 3] - boxes[:, 1] > min_box_side
            )
            instances = instances.filter(keep)
        if instances.masks is not None:
            instances = instances.replace(masks=_transform_masks(instances.masks, geometry))
        out_target[INSTANCES] = instances

    traces = out_target.get(TRACES)
    if traces is not None:
        if not (isinstance(traces, torch.Tensor) and traces.ndim == 2 and traces.shape[1] == 2):
            raise ValueError(f"target[{TRACES!r}] must be a (P, 2) tensor")
        out_target[TRACES] = geometry.points_to_output(traces)
    out_target[GEOMETRY] = geometry
    return out_image, out_target


def _check_image(image: torch.Tensor) -> None:
    if not (isinstance(image, torch.Tensor) and image.ndim == 3):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (C, H, W) tensor, got {got}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image must not be empty, got {tuple(image.shape)}")


def sample_lsj_geometry(
    input_hw: tuple[int, int],
    *,
    size: int,
    scale_range: tuple[float, float],
    flip_prob: float,
    generator: torch.Generator,
) -> Geometry:
    """Draw flip, LSJ factor and crop offset for an image of ``input_hw`` (see module doc)."""
    u_scale, u_x, u_y, u_flip = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    lo, hi = scale_range
    factor = lo + (hi - lo) * u_scale
    in_h, in_w = input_hw
    s = size * factor / max(in_h, in_w)
    res_h, res_w = max(1, round(in_h * s)), max(1, round(in_w * s))
    # The window starts on a whole input pixel (uniform over the offsets that keep it full), so
    # only its source region needs resampling (`Geometry`); its resized-image offset is then
    # offset * scale, fractional unless the scale is 1.
    sx, sy = res_w / in_w, res_h / in_h
    crop_x = _crop_offset(u_x, in_w, size / sx) * sx
    crop_y = _crop_offset(u_y, in_h, size / sy) * sy
    return Geometry(
        input_hw=(in_h, in_w),
        resized_hw=(res_h, res_w),
        crop_xy=(_int_if_whole(crop_x), _int_if_whole(crop_y)),
        output_hw=(size, size),
        flipped=u_flip < flip_prob,
    )


def _crop_offset(u: float, n_in: int, window_in: float) -> int:
    # floor keeps offset + window <= n_in, so the window holds image pixels to its far edge.
    return math.floor(u * max(n_in - window_in, 0.0) + 1e-9)


def _int_if_whole(value: float) -> float:
    return int(value) if float(value).is_integer() else value


def quantize_alp_boxes(
    instances: Instances,
    *,
    image_hw: tuple[int, int],
    content_xyxy: tuple[float, float, float, float] | None = None,
    choices: tuple[int | None, ...] = (None, *QUANTIZATION_Q),
    generator: torch.Generator,
) -> Instances:
    """Box quantization (ALP paper, Sec. 3.2) of the ALP instances.

    Every instance draws Q uniformly from ``choices`` (one draw each, ALP or not, so the random
    stream does not depend on which are ALPs); ALP boxes with a Q other than None are stretched to
    the grid of Q * L / 256 px cells of an image of ``image_hw`` (L = its shorter edge), then
    clipped to ``content_xyxy`` (the image pixels, default the whole image).
    """
    n = len(instances)
    if n == 0 or not choices:
        return instances
    pick = torch.randint(len(choices), (n,), generator=generator)
    alp = instances.alp()
    boxes = instances.boxes_xyxy_px
    out = boxes.detach().cpu().double().numpy().copy()  # (N, 4)
    for j, q in enumerate(choices):
        sel = (alp & (pick == j)).numpy()
        if q is None or not sel.any():
            continue
        out[sel] = quantize_boxes_xyxy_px(
            out[sel], image_width=image_hw[1], image_height=image_hw[0], q=q
        )
    cx0, cy0, cx1, cy1 = content_xyxy or (0.0, 0.0, float(image_hw[1]), float(image_hw[0]))
    out = np.clip(out, [cx0, cy0, cx0, cy0], [cx1, cy1, cx1, cy1])
    # Rounding to float32 is monotonic, so a stretched edge stays outside the original edge.
    return instances.replace(boxes_xyxy_px=torch.from_numpy(out).to(boxes))


@dataclass(frozen=True)
class TrainTransform:
    """Flip, large-scale jitter and ALP box quantization (module doc), for one training sample.

    ``transform(image, target, generator) -> (image, target)``: image (C, H, W) float or uint8;
    target as in the module doc (``"instances"`` required, may hold no instances). The output
    image is (C, size, size) in the input's dtype; boxes lie in [0, size]; masks are
    (N, size, size); instances cropped away are gone with all their fields.
    """

    size: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5
    quantize: tuple[int | None, ...] = (None, *QUANTIZATION_Q)
    min_box_side: float = 1e-3
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.size, int) and self.size >= 1):
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        lo, hi = self.scale_range
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        object.__setattr__(self, "quantize", tuple(self.quantize))
        bad = [q for q in self.quantize if q is not None and q not in QUANTIZATION_Q]
        if bad:
            raise ValueError(f"quantize holds {bad}; choices are None and {QUANTIZATION_Q}")
        if not self.min_box_side >= 0:
            raise ValueError(f"min_box_side must be >= 0, got {self.min_box_side}")

    def __call__(
        self, image: torch.Tensor, target: Mapping[str, Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        _check_image(image)
        if INSTANCES not in target:
            raise ValueError(f"target needs {INSTANCES!r} (Instances.empty() for none)")
        geometry = sample_lsj_geometry(
            tuple(image.shape[-2:]),
            size=self.size,
            scale_range=self.scale_range,
            flip_prob=self.flip_prob,
            generator=generator,
        )
        image, out = apply_geometry(
            image, target, geometry, min_box_side=self.min_box_side, pad_value=self.pad_value
        )
        out[INSTANCES] = quantize_alp_boxes(
            out[INSTANCES],
            image_hw=geometry.output_hw,
            content_xyxy=geometry.content_xyxy,
            choices=self.quantize,
            generator=generator,
        )
        return image, out


@dataclass(frozen=True)
class EvalTransform:
    """Resize so the longer side is ``size`` (aspect kept), pad bottom / right to size x size.

    ``transform(image, target=None) -> (image, target)``: nothing random, no instance dropped;
    ``target["geometry"]`` maps predictions back (`Geometry.boxes_to_input`, `masks_to_input`).
    """

    size: int = 512
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.size, int) and self.size >= 1):
            raise ValueError(f"size must be a positive int, got {self.size!r}")

    def __call__(
        self, image: torch.Tensor, target: Mapping[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        _check_image(image)
        in_h, in_w = image.shape[-2:]
        s = self.size / max(in_h, in_w)
        geometry = Geometry(
            input_hw=(in_h, in_w),
            resized_hw=(max(1, round(in_h * s)), max(1, round(in_w * s))),
            crop_xy=(0, 0),
            output_hw=(self.size, self.size),
        )
        return apply_geometry(image, target, geometry, pad_value=self.pad_value)
