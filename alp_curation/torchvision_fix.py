"""Make ``import torchvision`` work where its compiled operators cannot load.

Why this exists: pip resolves ``torch==2.13.0`` (CPU wheel) together with ``torchvision==0.28.0``,
and that torchvision wheel is a CUDA build. Its ``_C`` extension does not load on CPU torch, so
torchvision's own import dies in ``_meta_registrations.py`` when it registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms``::

    RuntimeError: operator torchvision::nms does not exist

Everything that imports torchvision fails the same way: open_clip, timm, transformers (and so
sentence-transformers). On every machine where the compiled operators load (any GPU machine with a
matching wheel) this module does nothing.

What it does otherwise, before torchvision is imported:

1. defines the ``torchvision::nms`` and ``torchvision::qnms`` schemas with a pure-torch greedy NMS
   kernel, so torchvision's fake-kernel registrations find their operators;
2. leaves ``torchvision.extension._has_ops()`` False, so ``roi_align`` (and ``MultiScaleRoIAlign``)
   take torchvision's own pure-Python path, and the ops that have no Python path (``roi_pool``,
   ``deform_conv2d``, ``ps_roi_*``) keep raising torchvision's "Couldn't load custom C++ ops";
3. installs a one-shot import hook that, once ``torchvision.ops.boxes`` has executed, replaces that
   module's ``_assert_has_ops`` guard so ``torchvision.ops.nms`` / ``batched_nms`` reach the kernel.

Import this module before anything that imports torchvision; importing it applies the fix, and
``apply()`` may be called again at no cost. ``STATE`` records the outcome: "compiled ops" (nothing
needed), "patched", or "no torchvision" (not installed, nothing to fix).

Note: torchvision's pure-Python ``roi_align`` is wrapped in ``torch.compile`` on first call; on a
CPU this compiles with the system C++ compiler (tens of seconds, cached on disk afterwards).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import threading
from types import ModuleType

import torch

__all__ = ["STATE", "apply", "nms_reference_kernel"]

STATE: str | None = None  # "compiled ops" | "patched" | "no torchvision"; None before apply()

_LOCK = threading.Lock()
# The registrations live as long as this Library object: it must stay referenced.
_LIB: torch.library.Library | None = None
_BOXES_MODULE = "torchvision.ops.boxes"


def apply() -> str:
    """Apply the fix once; return what this call did.

    "compiled ops" (torchvision's own operators are there, nothing done), "patched" (the pure-torch
    kernels were registered), "already patched" (an earlier call did it) or "no torchvision".
    """
    global STATE
    with _LOCK:
        if STATE == "patched":
            return "already patched"
        if STATE is not None:
            return STATE
        if _torchvision_ops_available():
            STATE = "compiled ops"
        elif importlib.util.find_spec("torchvision") is None:
            STATE = "no torchvision"
        else:
            _register_kernels()
            _patch_boxes_guard_on_import()
            STATE = "patched"
        return STATE


def _torchvision_ops_available() -> bool:
    """True when ``torchvision::nms`` exists or torchvision's ``_C`` extension loads.

    Looks the extension up on disk instead of importing torchvision, whose import is exactly what
    raises. Loading it here is what torchvision's ``extension.py`` would do first thing anyway.
    """
    if hasattr(torch.ops.torchvision, "nms"):
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    package_dir = next(iter(spec.submodule_search_locations))
    finder = importlib.machinery.FileFinder(
        package_dir,
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    )
    ext_spec = finder.find_spec("_C")
    if ext_spec is None or ext_spec.origin is None or not os.path.isfile(ext_spec.origin):
        return False
    try:
        torch.ops.load_library(ext_spec.origin)
    except (OSError, RuntimeError):
        return False  # e.g. a CUDA build on CPU torch: undefined CUDA symbols
    return hasattr(torch.ops.torchvision, "nms")


_NMS_BLOCK = 512  # boxes resolved together: a (block, block) IoU matrix at a time


def _iou_above(
    earlier: torch.Tensor,
    later: torch.Tensor,
    areas_earlier: torch.Tensor,
    areas_later: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """(E, L) bool: IoU(earlier[e], later[l]) > threshold, with the kernel's exact arithmetic
    (intersection = width * height, union = area of the earlier box + area of the later one -
    intersection)."""
    a, b = earlier[:, None], later[None, :]  # (E, 1, 4), (1, L, 4)
    width = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    height = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    width, height = width.clamp(min=0), height.clamp(min=0)  # (E, L) each
    inter = width * height  # (E, L)
    return inter / (areas_earlier[:, None] + areas_later[None, :] - inter) > threshold


def nms_reference_kernel(
    dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Greedy NMS with the semantics of torchvision's CPU kernel.

    Boxes are (x1, y1, x2, y2); visit them by decreasing score (stable sort, as torchvision does)
    and keep a box unless a kept box overlaps it with IoU > ``iou_threshold``. Returns int64
    indices into ``dets``, by decreasing score.

    Vectorised in blocks of ``_NMS_BLOCK`` boxes in visiting order, with the decisions of the
    box-by-box loop: a block's boxes are first checked against every box kept before it (one
    IoU matrix), then the greedy pass inside the block walks a precomputed bool matrix of its
    overlaps, one numpy row operation per kept box. Memory is O(N x block).
    """
    if dets.dim() != 2 or dets.size(1) != 4:
        raise RuntimeError(f"nms: boxes should have shape (N, 4), got {tuple(dets.shape)}")
    if scores.dim() != 1 or scores.size(0) != dets.size(0):
        raise RuntimeError(
            f"nms: scores should have shape ({dets.size(0)},), got {tuple(scores.shape)}"
        )
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    if not dets.is_floating_point():
        dets = dets.double()  # qnms hands over int_repr(); IoU is invariant to scale and zero point
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = dets[order]  # (N, 4), in visiting order
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept_boxes, kept_areas = boxes[:0], areas[:0]
    kept: list[torch.Tensor] = []
    for start in range(0, boxes.size(0), _NMS_BLOCK):
        block, block_areas = boxes[start : start + _NMS_BLOCK], areas[start : start + _NMS_BLOCK]
        alive = ~_iou_above(kept_boxes, block, kept_areas, block_areas, iou_threshold).any(dim=0)
        # overlaps[j, i]: boxes j and i of the block overlap above the threshold.
        overlaps = _iou_above(block, block, block_areas, block_areas, iou_threshold).cpu().numpy()
        decided = alive.cpu().numpy().copy()
        for i in range(len(decided)):  # greedy: a kept box suppresses the later ones it overlaps
            if decided[i]:
                decided[i + 1 :] &= ~overlaps[i, i + 1 :]
        keep = torch.from_numpy(decided).to(alive.device)
        kept.append(start + keep.nonzero().squeeze(1))
        kept_boxes = torch.cat([kept_boxes, block[keep]])
        kept_areas = torch.cat([kept_areas, block_areas[keep]])
    return order[torch.cat(kept)]


def _register_kernels() -> None:
    global _LIB
    # FRAGMENT, not DEF: it must not claim the whole "torchvision" namespace.
    _LIB = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        _LIB.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        # CompositeExplicitAutograd: one kernel for every backend; torchvision then adds its Meta
        # (fake) kernel on top, as it does for the compiled operator.
        _LIB.impl(name, nms_reference_kernel, "CompositeExplicitAutograd")


def _assert_has_nms() -> None:
    """Stands in for ``_assert_has_ops`` inside ``torchvision.ops.boxes``.

    There it guards ``nms`` (registered above) and rotated ``box_iou``, whose operator stays missing
    and so still fails, naming ``torchvision::box_iou_rotated``.
    """


class _BoxesGuardHook:
    """Meta-path finder that patches ``torchvision.ops.boxes`` right after it executes.

    Patching must happen before ``torchvision.ops`` runs ``from .boxes import nms``, i.e. inside the
    import of torchvision itself, which is why this is an import hook and not a later assignment.
    """

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _BOXES_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)  # type: ignore[arg-type]
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            module._assert_has_ops = _assert_has_nms  # type: ignore[attr-defined]
            _remove_hook()

        # The loader instance is created for this spec alone, so shadowing its method is local.
        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


_HOOK = _BoxesGuardHook()


def _patch_boxes_guard_on_import() -> None:
    module = sys.modules.get(_BOXES_MODULE)
    if module is not None:
        module._assert_has_ops = _assert_has_nms  # type: ignore[attr-defined]
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def _remove_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


apply()
