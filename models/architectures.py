"""The detectors by name: one frozen config dataclass per architecture, and `build_model`.

    from models.architectures import FCOSMOConfig, MaskRCNNStarConfig, build_model
    model = build_model(MaskRCNNStarConfig(backbone="resnet_small", text_dim=384))

``ARCHITECTURES`` maps the names ``--arch`` accepts to an `Architecture`: its config class, the
detector class that config builds (imported only when a model is built, so that configs and
``--help`` need no torch), and what it can learn from. A config holds exactly the keyword
arguments of its detector, with the same defaults; nothing else of the model is configurable,
so a checkpoint's ``config["arch"]`` and ``config["model"]`` rebuild it.

- ``fcos-mo``: FCOS-MO (ALP paper, Sec. 3.2-3.4), `models.meta_arch.fcos_mo.FCOSMO`.
- ``mask-rcnn-star``: Mask R-CNN* (ALP paper, Sec. 4), Mask R-CNN R-50-FPN with a
  class-agnostic box head, the Hourglass-20 mask head on GT boxes and the open-vocabulary
  classifier, `models.meta_arch.mask_rcnn_star.MaskRCNNStar`.
- ``maskx-rcnn``: MaskX R-CNN (Hu et al., "Learning to Segment Every Thing"), Mask R-CNN over a
  fixed class list whose mask weights the weight transfer function T predicts from the box
  head's, `models.meta_arch.maskx_rcnn.MaskXRCNN`.

The configs share their fields through bases: `DetectorConfig` (backbone, mask head,
inference), `OpenVocabConfig` (the phrase classifier) and `TwoStageConfig` (RPN and RoI box
head).

Model presets (the model half of ``--preset``; `models.config` holds the training half) are
``MODEL_PRESETS[arch][preset]``.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from models.choices import (
    BACKBONE_NORMS,
    BACKBONES,
    HEAD_NORMS,
    MASK_HEADS,
    MASK_PREDICTORS,
    TRAIN_STAGES,
    TRANSFER_ACTIVATIONS,
    TRANSFER_INPUTS,
)
from models.fields import check, help_meta

if TYPE_CHECKING:
    from models.meta_arch.base import Detector

__all__ = [
    "ARCHITECTURES",
    "ARCH_NAMES",
    "MODEL_PRESETS",
    "Architecture",
    "DetectorConfig",
    "FCOSMOConfig",
    "MaskRCNNStarConfig",
    "MaskXRCNNConfig",
    "OpenVocabConfig",
    "TwoStageConfig",
    "architecture_of",
    "build_model",
    "get_architecture",
]

DEFAULT_ARCH = "fcos-mo"


@dataclass(frozen=True)
class DetectorConfig:
    """The fields every detector has: backbone, phrase space, mask head, classifier, inference."""

    backbone: str = field(
        default="resnet50",
        metadata=help_meta("backbone (resnet_small: a narrow ResNet for CPUs)", choices=BACKBONES),
    )
    backbone_weights: str | None = field(
        default=None,
        metadata=help_meta(
            "local file of backbone weights (the paper: ImageNet-pretrained ResNet-50); "
            "'none': random initialisation",
            metavar="PATH",
        ),
    )
    backbone_norm: str = field(
        default="BN",
        metadata=help_meta(
            "normalisation in the backbone (BN becomes SyncBN under multi-GPU DDP)",
            choices=BACKBONE_NORMS,
        ),
    )
    fpn_channels: int = field(default=256, metadata=help_meta("channels of the FPN levels"))
    text_dim: int = field(
        default=512,
        metadata=help_meta("width of the phrase embeddings (CLIP ViT-B/32: 512, MiniLM: 384)"),
    )
    mask_head: str = field(
        default="hourglass20",
        metadata=help_meta(
            "Hourglass-20 (the ALP paper's) or Mask R-CNN's 4-conv head", choices=MASK_HEADS
        ),
    )
    mask_channels: int = field(default=64, metadata=help_meta("base width c of the mask head"))
    mask_roi_size: int = field(
        default=16,
        metadata=help_meta("RoI-align output side for the mask head (masks are 2x this)"),
    )
    score_threshold: float = field(
        default=0.05, metadata=help_meta("inference: keep candidates scoring above this")
    )
    nms_threshold: float = field(
        default=0.5, metadata=help_meta("inference: IoU threshold of the class-specific NMS")
    )
    detections_per_image: int = field(
        default=100, metadata=help_meta("inference: detections kept per image")
    )

    # Fields that must be integers >= 1 / lie in [0, 1]: each config class names its own, and
    # every class of the MRO is checked (the two-stage configs inherit from two bases).
    _positive_ints = (
        "fpn_channels", "text_dim", "mask_channels", "mask_roi_size", "detections_per_image"
    )  # fmt: skip
    _unit_interval = ("score_threshold", "nms_threshold")

    def _names(self, attribute: str) -> list[str]:
        return [n for cls in type(self).__mro__ for n in vars(cls).get(attribute, ())]

    def __post_init__(self) -> None:
        check(self.backbone in BACKBONES, "backbone", f"one of {BACKBONES}", self.backbone)
        for name, choices in (("backbone_norm", BACKBONE_NORMS), ("mask_head", MASK_HEADS)):
            value = getattr(self, name)
            check(value in choices, name, f"one of {choices}", value)
        for name in self._names("_positive_ints"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, name, "an integer >= 1", value)
        for name in self._names("_unit_interval"):
            value = getattr(self, name)
            check(0 <= value <= 1, name, "in [0, 1]", value)
        if self.mask_head == "hourglass20":
            check(
                self.mask_roi_size % 4 == 0,
                "mask_roi_size",
                "a multiple of 4 for the hourglass20 mask head (it halves the RoI twice)",
                self.mask_roi_size,
            )


@dataclass(frozen=True)
class OpenVocabConfig(DetectorConfig):
    """The fields of the open-vocabulary classifier (ALP paper Sec. 3.2), shared by FCOS-MO and
    Mask R-CNN*."""

    tau: float = field(
        default=0.01, metadata=help_meta("softmax temperature of the phrase classifier")
    )
    background_alpha: float = field(
        default=0.1,
        metadata=help_meta("weight of the background's -log p in the classifier (paper's alpha)"),
    )

    _positive_ints = ()
    _unit_interval = ("background_alpha",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.tau > 0, "tau", "a number > 0", self.tau)


@dataclass(frozen=True)
class FCOSMOConfig(OpenVocabConfig):
    """The keyword arguments of `models.meta_arch.fcos_mo.FCOSMO` (same names, same defaults)."""

    head_norm: str = field(
        default="GN",
        metadata=help_meta(
            "normalisation in the heads; BN keeps separate statistics per FPN level "
            "(paper Sec. 3.4)",
            choices=HEAD_NORMS,
        ),
    )
    head_convs: int = field(
        default=4, metadata=help_meta("conv3x3-norm-ReLU layers per head tower")
    )
    center_sampling_radius: float = field(
        default=1.5, metadata=help_meta("FCOS centre region radius, in strides")
    )
    size_ranges: tuple[float, ...] = field(
        default=(64, 128, 256, 512),
        metadata=help_meta("boundaries of the box sizes each of P3..P7 is assigned (4 numbers)"),
    )
    use_centerness: bool = field(
        default=True,
        metadata=help_meta("centerness branch and loss (--no-use-centerness: ablation)"),
    )
    pre_nms_topk: int = field(
        default=1000, metadata=help_meta("inference: candidates per FPN level before NMS")
    )

    _positive_ints = ("head_convs", "pre_nms_topk")

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_ranges", tuple(float(r) for r in self.size_ranges))
        super().__post_init__()
        check(self.head_norm in HEAD_NORMS, "head_norm", f"one of {HEAD_NORMS}", self.head_norm)
        check(
            self.center_sampling_radius > 0,
            "center_sampling_radius",
            "a number > 0",
            self.center_sampling_radius,
        )
        r = self.size_ranges
        check(
            len(r) == 4 and r[0] > 0 and all(a < b for a, b in itertools.pairwise(r)),
            "size_ranges",
            "4 increasing positive numbers (P3/P4, P4/P5, P5/P6, P6/P7 boundaries)",
            r,
        )


@dataclass(frozen=True)
class TwoStageConfig(DetectorConfig):
    """The RPN and RoI box head fields of the two-stage detectors: detectron2's Mask R-CNN
    R-50-FPN numbers."""

    anchor_sizes: tuple[float, ...] = field(
        default=(32, 64, 128, 256, 512),
        metadata=help_meta("RPN anchor side of each level P2..P6, in pixels (5 numbers)"),
    )
    aspect_ratios: tuple[float, ...] = field(
        default=(0.5, 1.0, 2.0), metadata=help_meta("RPN anchor aspect ratios (height / width)")
    )
    rpn_fg_iou: float = field(
        default=0.7, metadata=help_meta("RPN: anchors with IoU >= this are positives")
    )
    rpn_bg_iou: float = field(
        default=0.3, metadata=help_meta("RPN: anchors with IoU < this are negatives")
    )
    rpn_batch_size: int = field(
        default=256, metadata=help_meta("RPN: anchors sampled per image for its loss")
    )
    rpn_positive_fraction: float = field(
        default=0.5, metadata=help_meta("RPN: at most this share of the sampled anchors positive")
    )
    rpn_pre_nms_topk_train: int = field(
        default=2000, metadata=help_meta("RPN: proposals per level before NMS, training")
    )
    rpn_pre_nms_topk_test: int = field(
        default=1000, metadata=help_meta("RPN: proposals per level before NMS, inference")
    )
    rpn_post_nms_topk_train: int = field(
        default=2000, metadata=help_meta("RPN: proposals per image after NMS, training")
    )
    rpn_post_nms_topk_test: int = field(
        default=1000, metadata=help_meta("RPN: proposals per image after NMS, inference")
    )
    rpn_nms_threshold: float = field(
        default=0.7, metadata=help_meta("RPN: IoU threshold of the proposals' NMS")
    )
    roi_batch_size: int = field(
        default=512, metadata=help_meta("second stage: RoIs sampled per image for its losses")
    )
    roi_positive_fraction: float = field(
        default=0.25, metadata=help_meta("second stage: at most this share of them positive")
    )
    roi_fg_iou: float = field(
        default=0.5,
        metadata=help_meta(
            "second stage: RoIs with IoU >= this are positives, the rest background"
        ),
    )
    box_roi_size: int = field(
        default=7, metadata=help_meta("RoI-align output side for the box head")
    )
    box_head_dim: int = field(
        default=1024, metadata=help_meta("width of the box head's two fully connected layers")
    )

    _positive_ints = (
        "rpn_batch_size", "rpn_pre_nms_topk_train", "rpn_pre_nms_topk_test",
        "rpn_post_nms_topk_train", "rpn_post_nms_topk_test", "roi_batch_size", "box_roi_size",
        "box_head_dim",
    )  # fmt: skip
    _unit_interval = (
        "rpn_fg_iou", "rpn_bg_iou", "rpn_positive_fraction", "rpn_nms_threshold",
        "roi_positive_fraction", "roi_fg_iou",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("anchor_sizes", "aspect_ratios"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        super().__post_init__()
        sizes = self.anchor_sizes
        check(
            len(sizes) == 5 and all(s > 0 for s in sizes),
            "anchor_sizes",
            "5 positive numbers (one per level P2..P6)",
            sizes,
        )
        check(
            len(self.aspect_ratios) >= 1 and all(r > 0 for r in self.aspect_ratios),
            "aspect_ratios",
            "positive numbers",
            self.aspect_ratios,
        )
        check(
            self.rpn_bg_iou <= self.rpn_fg_iou,
            "rpn_bg_iou",
            f"at most --rpn-fg-iou ({self.rpn_fg_iou})",
            self.rpn_bg_iou,
        )


@dataclass(frozen=True)
class MaskRCNNStarConfig(TwoStageConfig, OpenVocabConfig):
    """The keyword arguments of `models.meta_arch.mask_rcnn_star.MaskRCNNStar` (same names, same
    defaults): detectron2's Mask R-CNN R-50-FPN numbers, with the ALP paper's changes."""

    image_label_weight: float = field(
        default=0.1,
        metadata=help_meta(
            "lambda: weight of the image-label loss of ALPs without boxes (Detic's, Sec. 4)"
        ),
    )

    _positive_ints = ()
    _unit_interval = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.image_label_weight >= 0,
            "image_label_weight",
            "a number >= 0",
            self.image_label_weight,
        )


@dataclass(frozen=True)
class MaskXRCNNConfig(TwoStageConfig):
    """The keyword arguments of `models.meta_arch.maskx_rcnn.MaskXRCNN` (same names, same
    defaults): Mask R-CNN R-50-FPN over a fixed class list with a class-specific box head, the
    4-conv mask head (14 x 14 RoIs, 28 x 28 masks) and the weight transfer function of MaskX
    R-CNN (Hu et al., Sec. 3; numbers of its reference code)."""

    mask_head: str = field(
        default="conv4",
        metadata=help_meta(
            "Mask R-CNN's 4-conv head (MaskX R-CNN's) or the Hourglass-20", choices=MASK_HEADS
        ),
    )
    mask_channels: int = field(
        default=256, metadata=help_meta("width of the mask head (the width of w_seg for conv4)")
    )
    mask_roi_size: int = field(
        default=14,
        metadata=help_meta("RoI-align output side for the mask head (masks are 2x this)"),
    )
    classes: tuple[str, ...] = field(
        default=(),
        metadata=help_meta(
            "the fixed class list (A and B), in label order; default: every class of the COCO "
            "shards' manifests, sorted",
            metavar="NAME",
        ),
    )
    mask_predictor: str = field(
        default="transfer",
        metadata=help_meta(
            "each class's mask weights w_seg: predicted from its detection weights by T "
            "(MaskX R-CNN), one shared set (the class-agnostic baseline), or learnt per class "
            "(the fully supervised oracle)",
            choices=MASK_PREDICTORS,
        ),
    )
    transfer_input: str = field(
        default="cls+box",
        metadata=help_meta(
            "what T reads: the RoI classification weights, the box regression weights, both "
            "(5 x box_head_dim), a fixed random Gaussian vector per class, or the class name's "
            "text embedding (the paper's GloVe row)",
            choices=TRANSFER_INPUTS,
        ),
    )
    transfer_layers: int = field(
        default=2, metadata=help_meta("fully connected layers of T (1: affine, 2 or 3)")
    )
    transfer_hidden: int = field(default=256, metadata=help_meta("width of T's hidden layers"))
    transfer_activation: str = field(
        default="leaky-relu",
        metadata=help_meta(
            "activation after T's hidden layers (LeakyReLU slope 0.1)",
            choices=TRANSFER_ACTIVATIONS,
        ),
    )
    stop_gradient: bool = field(
        default=True,
        metadata=help_meta(
            "the mask loss trains T but not the detection weights it reads (Sec. 3.2; "
            "--no-stop-gradient: the ablation)"
        ),
    )
    mask_mlp: bool = field(
        default=False,
        metadata=help_meta(
            "add the class-agnostic MLP mask branch (one FC to 28 x 28 logits, tiled over the "
            "classes) to the FCN logits (Sec. 3.4)"
        ),
    )
    train_stage: str = field(
        default="joint",
        metadata=help_meta(
            "joint: end to end; detection: stage one of stage-wise training (a Faster R-CNN, no "
            "mask loss); masks: stage two (the mask branch and T on frozen backbone, RPN and box "
            "head; needs --init-from a stage-one checkpoint)",
            choices=TRAIN_STAGES,
        ),
    )

    _positive_ints = ("transfer_hidden",)
    _unit_interval = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        super().__post_init__()
        for name, choices in (
            ("mask_predictor", MASK_PREDICTORS),
            ("transfer_input", TRANSFER_INPUTS),
            ("transfer_activation", TRANSFER_ACTIVATIONS),
            ("train_stage", TRAIN_STAGES),
        ):
            value = getattr(self, name)
            check(value in choices, name, f"one of {choices}", value)
        check(
            self.transfer_layers in (1, 2, 3), "transfer_layers", "1, 2 or 3", self.transfer_layers
        )
        repeated = sorted({c for c in self.classes if self.classes.count(c) > 1})
        check(not repeated, "classes", "distinct class names", repeated)
        check(all(c.strip() for c in self.classes), "classes", "non-empty names", self.classes)


@dataclass(frozen=True)
class Architecture:
    """A detector the library can build: ``--arch`` name, config, detector class, abilities."""

    name: str
    config: type[DetectorConfig]
    detector: str  # "module:Class", imported when a model is built
    about: str
    image_labels: bool  # can learn from image-level phrases (ALPs without boxes)
    fixed_classes: bool = False  # a closed class list (config.classes), not free-text phrases

    def detector_class(self) -> type[Detector]:
        module, name = self.detector.split(":")
        return getattr(importlib.import_module(module), name)


ARCHITECTURES: Mapping[str, Architecture] = types.MappingProxyType(
    {
        "fcos-mo": Architecture(
            "fcos-mo",
            FCOSMOConfig,
            "models.meta_arch.fcos_mo:FCOSMO",
            "FCOS-MO: one-stage FCOS + Hourglass-20 mask head + open-vocabulary classifier "
            "(ALP paper, Sec. 3)",
            image_labels=False,
        ),
        "mask-rcnn-star": Architecture(
            "mask-rcnn-star",
            MaskRCNNStarConfig,
            "models.meta_arch.mask_rcnn_star:MaskRCNNStar",
            "Mask R-CNN*: two-stage Mask R-CNN R-50-FPN with a class-agnostic box head, "
            "Hourglass-20 mask head and open-vocabulary classifier (ALP paper, Sec. 4)",
            image_labels=True,
        ),
        "maskx-rcnn": Architecture(
            "maskx-rcnn",
            MaskXRCNNConfig,
            "models.meta_arch.maskx_rcnn:MaskXRCNN",
            "MaskX R-CNN: Mask R-CNN R-50-FPN over a fixed class list whose mask weights a "
            "learnt transfer function predicts from the box head's (Hu et al., 'Learning to "
            "Segment Every Thing'): masks for every class with boxes",
            image_labels=False,
            fixed_classes=True,
        ),
    }
)
ARCH_NAMES = tuple(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    """The architecture ``--arch name`` means; ValueError listing the names otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"arch: expected one of {list(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


def architecture_of(config: DetectorConfig) -> Architecture:
    """The architecture whose config class ``config`` is an instance of."""
    for arch in ARCHITECTURES.values():
        if type(config) is arch.config:
            return arch
    raise TypeError(f"{type(config).__name__} is the config of no architecture")


def build_model(config: DetectorConfig) -> Detector:
    """The detector a config describes (random or ``backbone_weights`` initialisation)."""
    cls = architecture_of(config).detector_class()
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})


# ---------------------------------------------------------------------------------------------
# The model half of the presets (the ALP paper, Sec. 3.4 and 4-5)

_PAPER = {
    "backbone": "resnet50",
    "backbone_norm": "BN",  # SyncBN under DDP on GPUs (Sec. 3.4)
    "text_dim": 512,  # CLIP ViT-B/32 text embeddings (Sec. 3.2)
    "mask_head": "hourglass20",
    "score_threshold": 0.05,
}
_PAPER_BY_ARCH = {
    "fcos-mo": {**_PAPER, "head_norm": "BN"},  # separate SyncBN statistics per level (3.4)
    "mask-rcnn-star": dict(_PAPER),
    # MaskX R-CNN's own numbers (Hu et al. Sec. 4.1): the 4-conv head at 14 -> 28, the class
    # names embedded by CLIP only for --transfer-input text.
    "maskx-rcnn": {**_PAPER, "mask_head": "conv4"},
}
# Narrow everything for CPUs: the same shapes of network, a fraction of the width.
_SMALL = {
    "backbone": "resnet_small",
    "backbone_norm": "BN",
    "fpn_channels": 64,
    "mask_channels": 16,
    "text_dim": 384,  # MiniLM
}
_SMALL_BY_ARCH = {
    "fcos-mo": {**_SMALL, "head_norm": "GN"},
    # A 128-px image has 4,092 anchors and a few objects: 1,000 proposals and 128 sampled RoIs
    # per image (instead of 2,000 and 512) keep the RPN's NMS and the box head in proportion.
    "mask-rcnn-star": {
        **_SMALL,
        "box_head_dim": 256,
        "rpn_pre_nms_topk_train": 1000,
        "rpn_post_nms_topk_train": 1000,
        "roi_batch_size": 128,
    },
    # The 4-conv head at the small preset's width; 14 x 14 RoIs as the paper's.
    "maskx-rcnn": {
        **_SMALL,
        "mask_head": "conv4",
        "mask_channels": 64,
        "box_head_dim": 256,
        "rpn_pre_nms_topk_train": 1000,
        "rpn_post_nms_topk_train": 1000,
        "roi_batch_size": 128,
    },
}

MODEL_PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = types.MappingProxyType(
    {
        arch: {
            "coco-oid": {**_PAPER_BY_ARCH[arch], "nms_threshold": 0.2},  # Sec. 4, test-time
            "coco-voc": {**_PAPER_BY_ARCH[arch], "nms_threshold": 0.5},
            "coco-zsd": {**_PAPER_BY_ARCH[arch], "nms_threshold": 0.5},
            "synthetic-small": dict(_SMALL_BY_ARCH[arch]),
        }
        for arch in ARCHITECTURES
    }
)
