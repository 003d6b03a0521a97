"""FCOS-MO configuration: the model's and the training's frozen dataclasses, presets, CLI flags.

    from models.config import build_model, resolve_config
    model_cfg, train_cfg = resolve_config(["--preset", "synthetic-small", "--shards", "out/alps"])
    model = build_model(model_cfg)

Every dataclass field is a flag (``fpn_channels`` -> ``--fpn-channels``; booleans get a
``--no-...`` twin) whose help text is the field's ``metadata["help"]``. The value of a field is,
in increasing precedence: the dataclass default, the ``--preset``, the flag given on the command
line. `ModelConfig` holds exactly the keyword arguments of `models.fcos_mo.FCOSMO`, with the
same defaults; nothing else of the model is configurable, so a checkpoint's ``config["model"]``
rebuilds it (`build_model`).

Presets (the ALP paper, Sec. 3.4 and 4-5; ``PRESETS`` holds the values):

- ``coco-oid``: COCO masks for the 60 classes shared with Open Images + LocNar-OID ALPs;
  ResNet-50, batch 32, lr 0.05, 270k steps, 1k warm-up, LSJ 1024, SyncBN (a BN per FPN level in
  the heads), AMP, NMS 0.2 at evaluation (Sec. 4, "Test-time hyperparameters").
- ``coco-voc``: COCO VOC-masks (masks for the 20 VOC classes, ALPs of LocNar-COCO for the other
  60); the same recipe, but 90k steps (Sec. 5: "training only for 90K iterations") and NMS 0.5.
- ``coco-zsd``: COCO ZSD 48 seen / 17 unseen classes; as ``coco-voc``.
- ``synthetic-small``: a narrow ResNet, 128 px images, batch 8, a few thousand steps, GroupNorm
  heads, MiniLM phrase embeddings (384-d): for experiments on a CPU with the synthetic world.

The paper starts from ImageNet weights: pass ``--backbone-weights PATH`` (no download ever).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from alp_dataset.class_splits import SPLIT_NAMES

if typing.TYPE_CHECKING:
    from models.fcos_mo import FCOSMO

__all__ = [
    "PRESETS",
    "ConfigError",
    "ModelConfig",
    "Preset",
    "TrainConfig",
    "build_model",
    "build_parser",
    "config_from_dict",
    "config_to_dict",
    "flag_name",
    "resolve_config",
]

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet_small")
BACKBONE_NORMS = ("BN", "FrozenBN", "GN")
HEAD_NORMS = ("GN", "BN", "none")
MASK_HEADS = ("hourglass20", "conv4")
DEVICES = ("auto", "cpu", "cuda")
CLIP_B32 = "open_clip:ViT-B-32:openai"  # the paper's phrase encoder (Sec. 3.2)
PRESET_NAMES = ("coco-oid", "coco-voc", "coco-zsd", "synthetic-small")  # PRESETS, below


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the flag."""


def flag_name(name: str) -> str:
    """The command-line flag of a field: ``fpn_channels`` -> ``--fpn-channels``."""
    return "--" + name.replace("_", "-")


def _help(text: str, **more: Any) -> dict[str, Any]:
    return {"help": text, **more}


def _check(ok: bool, name: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{flag_name(name)}: expected {expected}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The keyword arguments of `models.fcos_mo.FCOSMO` (same names, same defaults)."""

    backbone: str = field(
        default="resnet50",
        metadata=_help("backbone (resnet_small: a narrow ResNet for CPUs)", choices=BACKBONES),
    )
    backbone_weights: str | None = field(
        default=None,
        metadata=_help(
            "local file of backbone weights (the paper: ImageNet-pretrained ResNet-50); "
            "'none': random initialisation",
            metavar="PATH",
        ),
    )
    backbone_norm: str = field(
        default="BN",
        metadata=_help(
            "normalisation in the backbone (BN becomes SyncBN under multi-GPU DDP)",
            choices=BACKBONE_NORMS,
        ),
    )
    head_norm: str = field(
        default="GN",
        metadata=_help(
            "normalisation in the heads; BN keeps separate statistics per FPN level "
            "(paper Sec. 3.4)",
            choices=HEAD_NORMS,
        ),
    )
    fpn_channels: int = field(default=256, metadata=_help("channels of the FPN levels P3-P7"))
    head_convs: int = field(default=4, metadata=_help("conv3x3-norm-ReLU layers per head tower"))
    text_dim: int = field(
        default=512,
        metadata=_help("width of the phrase embeddings (CLIP ViT-B/32: 512, MiniLM: 384)"),
    )
    mask_head: str = field(
        default="hourglass20",
        metadata=_help("Hourglass-20 (paper) or the 4-conv ablation", choices=MASK_HEADS),
    )
    mask_channels: int = field(default=64, metadata=_help("base width c of the mask head"))
    mask_roi_size: int = field(
        default=16, metadata=_help("RoI-align output side for the mask head (masks are 2x this)")
    )
    tau: float = field(default=0.01, metadata=_help("softmax temperature of the phrase classifier"))
    background_alpha: float = field(
        default=0.1, metadata=_help("weight of the background locations' -log p (paper's alpha)")
    )
    center_sampling_radius: float = field(
        default=1.5, metadata=_help("FCOS centre region radius, in strides")
    )
    size_ranges: tuple[float, ...] = field(
        default=(64, 128, 256, 512),
        metadata=_help("boundaries of the box sizes each of P3..P7 is assigned (4 numbers)"),
    )
    use_centerness: bool = field(
        default=True, metadata=_help("centerness branch and loss (--no-use-centerness: ablation)")
    )
    score_threshold: float = field(
        default=0.05, metadata=_help("inference: keep candidates scoring above this")
    )
    nms_threshold: float = field(
        default=0.5, metadata=_help("inference: IoU threshold of the class-specific NMS")
    )
    pre_nms_topk: int = field(
        default=1000, metadata=_help("inference: candidates per FPN level before NMS")
    )
    detections_per_image: int = field(
        default=100, metadata=_help("inference: detections kept per image")
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_ranges", tuple(float(r) for r in self.size_ranges))
        _check(self.backbone in BACKBONES, "backbone", f"one of {BACKBONES}", self.backbone)
        for name, choices in (
            ("backbone_norm", BACKBONE_NORMS),
            ("head_norm", HEAD_NORMS),
            ("mask_head", MASK_HEADS),
        ):
            value = getattr(self, name)
            _check(value in choices, name, f"one of {choices}", value)
        for name in (
            "fpn_channels",
            "head_convs",
            "text_dim",
            "mask_channels",
            "mask_roi_size",
            "pre_nms_topk",
            "detections_per_image",
        ):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, "an integer >= 1", value)
        _check(self.tau > 0, "tau", "a number > 0", self.tau)
        _check(
            0 <= self.background_alpha <= 1, "background_alpha", "in [0, 1]", self.background_alpha
        )
        _check(
            self.center_sampling_radius > 0,
            "center_sampling_radius",
            "a number > 0",
            self.center_sampling_radius,
        )
        r = self.size_ranges
        _check(
            len(r) == 4 and r[0] > 0 and all(a < b for a, b in itertools.pairwise(r)),
            "size_ranges",
            "4 increasing positive numbers (P3/P4, P4/P5, P5/P6, P6/P7 boundaries)",
            r,
        )
        for name in ("score_threshold", "nms_threshold"):
            value = getattr(self, name)
            _check(0 <= value <= 1, name, "in [0, 1]", value)


@dataclass(frozen=True)
class TrainConfig:
    """Everything of a training run that is not the model: data, optimisation, bookkeeping."""

    preset: str = field(
        default="",
        metadata=_help(
            "named recipe applied before the other flags (explicit flags win); '' for none",
            choices=("", *PRESET_NAMES),
            metavar="NAME",
        ),
    )
    shards: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "training data, repeat for a second source: an output folder of "
            "pipelines/extract_alps.py (ALPs, built with --images) or of "
            "pipelines/build_coco_shards.py (COCO masks), or a brace pattern of their .tar shards",
            append=True,
            metavar="DIR_OR_URLS",
        ),
    )
    output_dir: str = field(
        default="runs/fcos_mo",
        metadata=_help("folder for checkpoints, config.json and metrics.jsonl", metavar="DIR"),
    )
    resume: str = field(
        default="",
        metadata=_help(
            "continue a run exactly: a checkpoint path, or 'auto' for OUTPUT_DIR/last.pt when "
            "it exists; '' starts afresh (and refuses a folder that holds checkpoints)",
            metavar="PATH|auto",
        ),
    )
    init_from: str = field(
        default="",
        metadata=_help(
            "start from the model weights of this FCOS-MO checkpoint (e.g. a detector trained on "
            "base masks) instead of random ones; optimiser, schedule and step start afresh. Its "
            "phrase encoder must be this run's and its weights must fit the model flags; ignored "
            "when resuming",
            metavar="CKPT",
        ),
    )
    text_encoder: str = field(
        default="",
        metadata=_help(
            "phrase encoder of the COCO class-name embeddings (minilm, "
            f"{CLIP_B32}, ...); '' takes the ALP output's encoder; must agree with it",
            metavar="SPEC",
        ),
    )
    class_split: str = field(
        default="",
        metadata=_help(
            "class split of the benchmark (alp_dataset.class_splits), recorded for evaluation; "
            "its classes also name the COCO classes of shards without a manifest",
            choices=("", *SPLIT_NAMES),
            metavar="SPLIT",
        ),
    )
    class_names: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "COCO class names for shards given as a pattern without a manifest", metavar="NAME"
        ),
    )
    batch_size: int = field(default=32, metadata=_help("images per step, summed over all ranks"))
    steps: int = field(
        default=270_000, metadata=_help("length of the schedule (cosine reaches 0 here)")
    )
    max_steps: int = field(
        default=0,
        metadata=_help("stop after this step, schedule unchanged (0: run all --steps)"),
    )
    optimizer: str = field(
        default="sgd",
        metadata=_help(
            "sgd (momentum, the paper's) or adamw (betas (momentum, 0.999); converges faster "
            "in short runs from scratch, as the synthetic-small preset's)",
            choices=("sgd", "adamw"),
        ),
    )
    lr: float = field(default=0.05, metadata=_help("peak learning rate"))
    warmup_steps: int = field(default=1000, metadata=_help("steps of linear warm-up"))
    warmup_factor: float = field(
        default=0.001, metadata=_help("learning rate at step 0, as a fraction of --lr")
    )
    momentum: float = field(default=0.9, metadata=_help("SGD momentum (AdamW: its first beta)"))
    weight_decay: float = field(
        default=1e-4, metadata=_help("weight decay (none on norm layers, biases and scales)")
    )
    grad_clip: float = field(
        default=0.0, metadata=_help("clip the gradient's global L2 norm to this (0: off)")
    )
    image_size: int = field(
        default=1024,
        metadata=_help("side of the square LSJ crop (the model pads to a multiple of 128)"),
    )
    scale_range: tuple[float, float] = field(
        default=(0.5, 2.0), metadata=_help("LSJ rescaling range (low high)")
    )
    flip_prob: float = field(default=0.5, metadata=_help("probability of a horizontal flip"))
    quantize: bool = field(
        default=True,
        metadata=_help("ALP box quantization, Q drawn from {none, 8, 16, 32} (paper Sec. 3.3)"),
    )
    pattern: tuple[int, int] = field(
        default=(1, 1),
        metadata=_help("with two sources: batches of the first, then of the second, and again"),
    )
    epoch_length: int = field(
        default=0,
        metadata=_help(
            "samples per rank per (resampled) epoch of each source (0: the source's sample "
            "count from its manifest, divided by the ranks)"
        ),
    )
    shuffle_buffer: int = field(default=64, metadata=_help("samples in each shuffle buffer"))
    num_workers: int = field(default=2, metadata=_help("DataLoader workers per source and rank"))
    seed: int = field(default=0, metadata=_help("seeds the model's initialisation and the data"))
    amp: bool = field(
        default=False,
        metadata=_help("mixed precision: fp16 + gradient scaling on CUDA, bf16 on CPU"),
    )
    device: str = field(
        default="auto",
        metadata=_help("cpu, cuda, or auto (cuda when available)", choices=DEVICES),
    )
    checkpoint_every: int = field(
        default=5000, metadata=_help("save step_NNNNNNN.pt and last.pt every this many steps")
    )
    log_every: int = field(default=20, metadata=_help("write a metrics.jsonl line every N steps"))
    progress: bool = field(default=True, metadata=_help("show a progress bar"))

    def __post_init__(self) -> None:
        for name in ("shards", "class_names"):
            object.__setattr__(self, name, tuple(str(s) for s in getattr(self, name)))
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))
        object.__setattr__(self, "pattern", tuple(int(p) for p in self.pattern))
        for name in ("batch_size", "steps", "image_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, "an integer >= 1", value)
        for name in ("max_steps", "warmup_steps", "epoch_length", "num_workers", "shuffle_buffer"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, name, "an integer >= 0", value)
        _check(math.isfinite(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
        _check(0 < self.warmup_factor <= 1, "warmup_factor", "in (0, 1]", self.warmup_factor)
        _check(self.optimizer in ("sgd", "adamw"), "optimizer", "sgd or adamw", self.optimizer)
        _check(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        _check(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        _check(self.grad_clip >= 0, "grad_clip", "a number >= 0", self.grad_clip)
        lo, hi = self.scale_range
        _check(0 < lo <= hi, "scale_range", "0 < low <= high", self.scale_range)
        _check(0 <= self.flip_prob <= 1, "flip_prob", "in [0, 1]", self.flip_prob)
        _check(
            len(self.pattern) == 2 and min(self.pattern) >= 0 and sum(self.pattern) > 0,
            "pattern",
            "two counts >= 0, not both 0",
            self.pattern,
        )
        _check(self.device in DEVICES, "device", f"one of {DEVICES}", self.device)

    @property
    def last_step(self) -> int:
        """The step this run stops after: ``max_steps`` when set, else ``steps``."""
        return min(self.max_steps, self.steps) if self.max_steps else self.steps


@dataclass(frozen=True)
class Preset:
    """Values a named recipe gives to fields of both configs (before explicit flags)."""

    about: str
    model: Mapping[str, Any]
    train: Mapping[str, Any]


_PAPER_MODEL = {
    "backbone": "resnet50",
    "backbone_norm": "BN",  # SyncBN under DDP on GPUs (Sec. 3.4)
    "head_norm": "BN",  # separate SyncBN statistics per FPN level (Sec. 3.4)
    "text_dim": 512,  # CLIP ViT-B/32 text embeddings (Sec. 3.2)
    "mask_head": "hourglass20",
    "score_threshold": 0.05,
}
_PAPER_TRAIN = {
    "batch_size": 32,
    "lr": 0.05,
    "warmup_steps": 1000,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "image_size": 1024,
    "scale_range": (0.5, 2.0),
    "quantize": True,
    "pattern": (1, 1),  # alternating batches of the two datasets (Sec. 3.3)
    "amp": True,
    "text_encoder": CLIP_B32,
}

PRESETS: Mapping[str, Preset] = types.MappingProxyType(
    {
        "coco-oid": Preset(
            "COCO masks of the 60 classes shared with Open Images + LocNar-OID ALPs (Sec. 4)",
            {**_PAPER_MODEL, "nms_threshold": 0.2},
            {**_PAPER_TRAIN, "steps": 270_000},
        ),
        "coco-voc": Preset(
            "COCO VOC-masks: masks for the 20 VOC classes, LocNar-COCO ALPs (Sec. 5)",
            {**_PAPER_MODEL, "nms_threshold": 0.5},
            {**_PAPER_TRAIN, "steps": 90_000, "class_split": "coco_voc"},
        ),
        "coco-zsd": Preset(
            "COCO ZSD: 48 seen classes with masks, 17 unseen, LocNar-COCO ALPs (Sec. 5)",
            {**_PAPER_MODEL, "nms_threshold": 0.5},
            {**_PAPER_TRAIN, "steps": 90_000, "class_split": "coco_zsd_48_17"},
        ),
        "synthetic-small": Preset(
            "the synthetic world on a CPU: narrow ResNet, 128 px, MiniLM phrases",
            {
                "backbone": "resnet_small",
                "backbone_norm": "BN",
                "head_norm": "GN",
                "fpn_channels": 64,
                "mask_channels": 16,
                "text_dim": 384,
            },
            {
                "batch_size": 8,
                "optimizer": "adamw",  # from scratch in minutes: SGD barely starts (training.md)
                "lr": 0.002,
                "steps": 3000,
                "warmup_steps": 100,
                "image_size": 128,
                "amp": False,
                "text_encoder": "minilm",
                "checkpoint_every": 500,
            },
        ),
    }
)

if tuple(PRESETS) != PRESET_NAMES:
    raise RuntimeError("PRESET_NAMES must list the PRESETS")

C = TypeVar("C", ModelConfig, TrainConfig)


# ---------------------------------------------------------------------------------------------
# Flags from fields


def _optional_str(text: str) -> str | None:
    return None if text.lower() in ("", "none") else text


def _add_field_flag(group: Any, f: dataclasses.Field[Any], hint: Any) -> None:
    meta = dict(f.metadata)
    default = f.default
    shown = "''" if default == "" else ("none" if default is None else default)
    if isinstance(default, tuple):
        shown = " ".join(str(v) for v in default) or "none"
    kwargs: dict[str, Any] = {
        "dest": f.name,
        "default": argparse.SUPPRESS,  # only explicit flags reach the namespace
        "help": f"{meta['help']} (default: {shown})",
    }
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
        if "metavar" in meta:  # the metavar hides the choices: list them in the help
            listed = ", ".join(c for c in meta["choices"] if c)
            kwargs["help"] = f"{meta['help']}; one of: {listed} (default: {shown})"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is tuple:
        kwargs["type"] = args[0]
        if meta.get("append"):
            kwargs["action"] = "append"
        else:
            kwargs["nargs"] = "+" if args[-1] is Ellipsis else len(args)
    elif origin in (typing.Union, types.UnionType) and type(None) in args:
        kwargs["type"] = _optional_str
    else:
        kwargs["type"] = hint
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    elif kwargs.get("type") in (int, float):
        kwargs["metavar"] = "N" if kwargs["type"] is int else "X"
    group.add_argument(flag_name(f.name), **kwargs)


def _preset_epilog() -> str:
    def shown(name: str, value: Any) -> str:
        if isinstance(value, bool):
            return flag_name(name) if value else "--no-" + flag_name(name)[2:]
        text = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return f"{flag_name(name)} {text}"

    lines = ["presets (--preset NAME; explicit flags win over a preset's values):"]
    for name, preset in PRESETS.items():
        settings = " ".join(shown(k, v) for k, v in {**preset.model, **preset.train}.items())
        lines.append(f"  {name}: {preset.about}.")
        lines.append(textwrap.fill(settings, 96, initial_indent=" " * 4, subsequent_indent=" " * 4))
    return "\n".join(lines)


def build_parser(prog: str = "python -m models.train") -> argparse.ArgumentParser:
    """The parser of every `ModelConfig` and `TrainConfig` field (defaults suppressed, so the
    namespace holds the explicit flags only)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train FCOS-MO on COCO masks and ALPs (the ALP paper, Sec. 3).",
        epilog=_preset_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for cls, title in ((ModelConfig, "model"), (TrainConfig, "training")):
        group = parser.add_argument_group(title)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            _add_field_flag(group, f, hints[f.name])
    return parser


def resolve_config(argv: Sequence[str] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Flags -> configs: dataclass defaults, then ``--preset``'s values, then explicit flags.

    Exits through argparse (status 2, the flag named) on unknown flags and bad values.
    """
    parser = build_parser()
    explicit = vars(parser.parse_args(argv))
    preset = PRESETS.get(explicit.get("preset", ""), Preset("", {}, {}))
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        model = ModelConfig(**{**preset.model, **{k: v for k, v in explicit.items() if k in names}})
        train = TrainConfig(
            **{**preset.train, **{k: v for k, v in explicit.items() if k not in names}}
        )
    except ConfigError as exc:
        parser.error(str(exc))
    return model, train


# ---------------------------------------------------------------------------------------------
# Dicts (checkpoints, config.json) and the model


def config_to_dict(config: ModelConfig | TrainConfig) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def config_from_dict(cls: type[C], values: Mapping[str, Any], *, where: str = "config") -> C:
    """A config from a dict as `config_to_dict` wrote it; ValueError naming unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"{where}: {cls.__name__} has no fields {unknown}; expected some of {sorted(names)}"
        )
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_model(cfg: ModelConfig) -> FCOSMO:
    """The FCOS-MO module a config describes (random or ``backbone_weights`` initialisation)."""
    from models.fcos_mo import FCOSMO  # the module imports torchvision: only when a model is built

    return FCOSMO(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
