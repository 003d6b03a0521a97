"""Training configuration: the frozen dataclasses of a run, presets, and the command line.

    from models.config import resolve_config
    model_cfg, train_cfg = resolve_config(
        ["--arch", "mask-rcnn-star", "--preset", "synthetic-small", "--shards", "out/alps"]
    )
    model = build_model(model_cfg)          # models.architectures.build_model

``--arch`` picks the detector (`models.architectures.ARCHITECTURES`; FCOS-MO by default) and
with it the model flags: every field of that architecture's config and of `TrainConfig` is a
flag (`models.fields`). A value is, in increasing precedence: the dataclass default, the
``--preset``, the flag given on the command line.

Presets (the ALP paper, Sec. 3.4 and 4-5; the model half is ``MODEL_PRESETS`` per architecture,
the training half ``TRAIN_PRESETS``; every architecture has every preset):

- ``coco-oid``: COCO masks for the 60 classes shared with Open Images + LocNar-OID ALPs;
  ResNet-50, batch 32, lr 0.05, 270k steps, 1k warm-up, LSJ 1024, SyncBN, AMP, NMS 0.2 at
  evaluation (Sec. 4, "Test-time hyperparameters"). Mask R-CNN* is trained alike (Sec. 4:
  "Training details for all models are same as Sec. 3.4").
- ``coco-voc``: COCO VOC-masks (masks for the 20 VOC classes, ALPs of LocNar-COCO for the other
  60); the same recipe, but 90k steps (Sec. 5: "training only for 90K iterations") and NMS 0.5.
- ``coco-zsd``: COCO ZSD 48 seen / 17 unseen classes; as ``coco-voc``.
- ``synthetic-small``: a narrow ResNet, 128 px images, batch 8, a few thousand steps, MiniLM
  phrase embeddings (384-d): for experiments on a CPU with the synthetic world.

The paper starts from ImageNet weights: pass ``--backbone-weights PATH`` (no download ever).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import textwrap
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alp_curation import flags
from alp_dataset.class_splits import SPLIT_NAMES, is_split_file
from models.architectures import (
    ARCH_NAMES,
    ARCHITECTURES,
    DEFAULT_ARCH,
    MODEL_PRESETS,
    DetectorConfig,
    build_model,
    get_architecture,
)
from models.choices import CLIP_B32, DEVICES
from models.fields import (
    ConfigError,
    add_field_flags,
    check,
    config_from_dict,
    config_to_dict,
    flag_name,
    help_meta,
)

__all__ = [
    "ALP_SUPERVISION",
    "PRESETS",
    "PRESET_NAMES",
    "ConfigError",
    "Preset",
    "TrainConfig",
    "arch_of_argv",
    "build_model",
    "build_parser",
    "config_from_dict",
    "config_to_dict",
    "flag_name",
    "resolve_config",
]

PRESET_NAMES = ("coco-oid", "coco-voc", "coco-zsd", "synthetic-small")  # PRESETS, below
ALP_SUPERVISION = ("boxes", "image-labels")


@dataclass(frozen=True)
class TrainConfig:
    """Everything of a training run that is not the model: data, optimisation, bookkeeping."""

    preset: str = field(
        default="",
        metadata=help_meta(
            "named recipe applied before the other flags (explicit flags win); '' for none",
            choices=("", *PRESET_NAMES),
            metavar="NAME",
        ),
    )
    shards: tuple[str, ...] = field(
        default=(),
        metadata=help_meta(
            "training data, repeat for a second source: an output folder of "
            "pipelines/extract_alps.py (ALPs, built with --images) or of "
            "pipelines/build_coco_shards.py (COCO masks), or a brace pattern of their .tar shards",
            append=True,
            metavar="DIR_OR_URLS",
        ),
    )
    output: str = field(
        default="",
        metadata=help_meta(
            "the run directory: checkpoints, config.json, metrics.jsonl and TensorBoard event "
            "files ('': runs/ARCH)",
            metavar="DIR",
        ),
    )
    resume: str = field(
        default="",
        metadata=help_meta(
            "continue a run exactly: a checkpoint path, or 'auto' for OUTPUT/last.pt when "
            "it exists; '' starts afresh (and refuses a folder that holds checkpoints)",
            metavar="PATH|auto",
        ),
    )
    init_from: str = field(
        default="",
        metadata=help_meta(
            "start from the model weights of this checkpoint (e.g. a detector trained on base "
            "masks) instead of random ones; optimiser, schedule and step start afresh. Its "
            "architecture and phrase encoder must be this run's and its weights must fit the "
            "model flags; ignored when resuming",
            metavar="CKPT",
        ),
    )
    text_encoder: str = field(
        default="",
        metadata=help_meta(
            "phrase encoder of the COCO class-name embeddings (minilm, "
            f"{CLIP_B32}, ...); '' takes the ALP output's encoder; must agree with it",
            metavar="SPEC",
        ),
    )
    class_split: str = field(
        default="",
        metadata=help_meta(
            f"class split of the benchmark, recorded for evaluation: {', '.join(SPLIT_NAMES)}, "
            "or a CSV of Open Images classes (alp_dataset.oid_classes); its COCO classes also "
            "name the classes of COCO shards without a manifest",
            metavar="SPLIT",
        ),
    )
    class_names: tuple[str, ...] = field(
        default=(),
        metadata=help_meta(
            "COCO class names for shards given as a pattern without a manifest, "
            "comma-separated (dog,sofa,red car)",
            metavar="NAME,NAME",
        ),
    )
    batch_size: int = field(
        default=32, metadata=help_meta("images per step, summed over all ranks")
    )
    steps: int = field(
        default=270_000, metadata=help_meta("length of the schedule (cosine reaches 0 here)")
    )
    max_steps: int = field(
        default=0,
        metadata=help_meta("stop after this step, schedule unchanged (0: run all --steps)"),
    )
    optimizer: str = field(
        default="sgd",
        metadata=help_meta(
            "sgd (momentum, the paper's) or adamw (betas (momentum, 0.999); converges faster "
            "in short runs from scratch, as the synthetic-small preset's)",
            choices=("sgd", "adamw"),
        ),
    )
    lr: float = field(default=0.05, metadata=help_meta("peak learning rate"))
    warmup_steps: int = field(default=1000, metadata=help_meta("steps of linear warm-up"))
    warmup_factor: float = field(
        default=0.001, metadata=help_meta("learning rate at step 0, as a fraction of --lr")
    )
    momentum: float = field(default=0.9, metadata=help_meta("SGD momentum (AdamW: its first beta)"))
    weight_decay: float = field(
        default=1e-4, metadata=help_meta("weight decay (none on norm layers, biases and scales)")
    )
    grad_clip: float = field(
        default=0.0, metadata=help_meta("clip the gradient's global L2 norm to this (0: off)")
    )
    image_size: int = field(
        default=1024,
        metadata=help_meta("side of the square LSJ crop (the model pads to a multiple of 128)"),
    )
    scale_range: tuple[float, float] = field(
        default=(0.5, 2.0), metadata=help_meta("LSJ rescaling range (low high)")
    )
    flip_prob: float = field(default=0.5, metadata=help_meta("probability of a horizontal flip"))
    quantize: bool = field(
        default=True,
        metadata=help_meta("ALP box quantization, Q drawn from {none, 8, 16, 32} (paper Sec. 3.3)"),
    )
    alp_supervision: str = field(
        default="boxes",
        metadata=help_meta(
            "how ALP shards supervise: 'boxes' (the ALP box and its phrase) or 'image-labels' "
            "(the phrases only, as image-level labels of the largest RPN proposal: the ALP "
            "paper's 'ALPs without boxes'; two-stage detectors only)",
            choices=ALP_SUPERVISION,
        ),
    )
    pattern: tuple[int, int] = field(
        default=(1, 1),
        metadata=help_meta("with two sources: batches of the first, then of the second, and again"),
    )
    epoch_length: int = field(
        default=0,
        metadata=help_meta(
            "samples per rank per (resampled) epoch of each source (0: the source's sample "
            "count from its manifest, divided by the ranks)"
        ),
    )
    shuffle_buffer: int = field(default=64, metadata=help_meta("samples in each shuffle buffer"))
    num_workers: int = field(
        default=2, metadata=help_meta("DataLoader workers per source and rank")
    )
    seed: int = field(
        default=0, metadata=help_meta("seeds the model's initialisation and the data")
    )
    amp: bool = field(
        default=False,
        metadata=help_meta("mixed precision: fp16 + gradient scaling on CUDA, bf16 on CPU"),
    )
    device: str = field(
        default="auto",
        metadata=help_meta("cpu, cuda, or auto (cuda when available)", choices=DEVICES),
    )
    checkpoint_every: int = field(
        default=5000, metadata=help_meta("save step_NNNNNNN.pt and last.pt every this many steps")
    )
    log_every: int = field(
        default=20,
        metadata=help_meta(
            "write a metrics.jsonl line every N steps: per source, the mean of each loss over "
            "its steps since the last line, and the foreground accuracy (models.run_log)"
        ),
    )
    tensorboard: bool = field(
        default=True,
        metadata=help_meta(
            "also write the metrics as TensorBoard event files in the run directory (needs "
            "the tensorboard extra; without it a note says so and metrics.jsonl is written)"
        ),
    )
    progress: bool = field(default=True, metadata=help_meta("show a progress bar"))

    def __post_init__(self) -> None:
        for name in ("shards", "class_names"):
            object.__setattr__(self, name, tuple(str(s) for s in getattr(self, name)))
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))
        object.__setattr__(self, "pattern", tuple(int(p) for p in self.pattern))
        for name in ("batch_size", "steps", "image_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, name, "an integer >= 1", value)
        for name in ("max_steps", "warmup_steps", "epoch_length", "num_workers", "shuffle_buffer"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 0, name, "an integer >= 0", value)
        check(math.isfinite(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
        check(0 < self.warmup_factor <= 1, "warmup_factor", "in (0, 1]", self.warmup_factor)
        check(self.optimizer in ("sgd", "adamw"), "optimizer", "sgd or adamw", self.optimizer)
        check(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        check(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        check(self.grad_clip >= 0, "grad_clip", "a number >= 0", self.grad_clip)
        lo, hi = self.scale_range
        check(0 < lo <= hi, "scale_range", "0 < low <= high", self.scale_range)
        check(0 <= self.flip_prob <= 1, "flip_prob", "in [0, 1]", self.flip_prob)
        check(
            len(self.pattern) == 2 and min(self.pattern) >= 0 and sum(self.pattern) > 0,
            "pattern",
            "two counts >= 0, not both 0",
            self.pattern,
        )
        check(self.device in DEVICES, "device", f"one of {DEVICES}", self.device)
        check(
            self.class_split in ("", *SPLIT_NAMES) or is_split_file(self.class_split),
            "class_split",
            f"one of {SPLIT_NAMES} or the path of a .csv file",
            self.class_split,
        )
        check(
            self.alp_supervision in ALP_SUPERVISION,
            "alp_supervision",
            f"one of {ALP_SUPERVISION}",
            self.alp_supervision,
        )

    @property
    def last_step(self) -> int:
        """The step this run stops after: ``max_steps`` when set, else ``steps``."""
        return min(self.max_steps, self.steps) if self.max_steps else self.steps


@dataclass(frozen=True)
class Preset:
    """A named recipe: values for the model config of each architecture and for `TrainConfig`
    (applied before explicit flags)."""

    about: str
    model: Mapping[str, Mapping[str, Any]]  # arch -> field values
    train: Mapping[str, Any]


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
TRAIN_PRESETS: Mapping[str, tuple[str, Mapping[str, Any]]] = types.MappingProxyType(
    {
        "coco-oid": (
            "COCO masks of the 60 classes shared with Open Images + LocNar-OID ALPs (Sec. 4)",
            {**_PAPER_TRAIN, "steps": 270_000},
        ),
        "coco-voc": (
            "COCO VOC-masks: masks for the 20 VOC classes, LocNar-COCO ALPs (Sec. 5)",
            {**_PAPER_TRAIN, "steps": 90_000, "class_split": "coco_voc"},
        ),
        "coco-zsd": (
            "COCO ZSD: 48 seen classes with masks, 17 unseen, LocNar-COCO ALPs (Sec. 5)",
            {**_PAPER_TRAIN, "steps": 90_000, "class_split": "coco_zsd_48_17"},
        ),
        "synthetic-small": (
            "the synthetic world on a CPU: narrow ResNet, 128 px, MiniLM phrases",
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

PRESETS: Mapping[str, Preset] = types.MappingProxyType(
    {
        name: Preset(about, {arch: MODEL_PRESETS[arch][name] for arch in ARCHITECTURES}, train)
        for name, (about, train) in TRAIN_PRESETS.items()
    }
)

if tuple(PRESETS) != PRESET_NAMES:
    raise RuntimeError("PRESET_NAMES must list the PRESETS")


# ---------------------------------------------------------------------------------------------
# The command line


def _preset_epilog(arch: str) -> str:
    def shown(name: str, value: Any) -> str:
        if isinstance(value, bool):
            return flag_name(name) if value else "--no-" + flag_name(name)[2:]
        text = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return f"{flag_name(name)} {text}"

    lines = [f"presets for --arch {arch} (--preset NAME; explicit flags win over its values):"]
    for name, preset in PRESETS.items():
        values = {**preset.model[arch], **preset.train}
        settings = " ".join(shown(k, v) for k, v in values.items())
        lines.append(f"  {name}: {preset.about}.")
        lines.append(textwrap.fill(settings, 96, initial_indent=" " * 4, subsequent_indent=" " * 4))
    lines.append("")
    lines.append("architectures (--arch NAME; its model flags are listed with --arch NAME --help):")
    for name in ARCH_NAMES:
        here = " (this help)" if name == arch else ""
        lines.append(f"  {name}{here}: {ARCHITECTURES[name].about}")
    return "\n".join(lines)


def arch_of_argv(argv: Sequence[str] | None) -> str:
    """The ``--arch`` value of a command line (the default when absent); exits 2 on a bad one."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--arch", default=DEFAULT_ARCH, choices=ARCH_NAMES)
    known, _ = probe.parse_known_args(argv)
    return known.arch


def build_parser(
    arch: str = DEFAULT_ARCH, prog: str = "python -m models.train"
) -> argparse.ArgumentParser:
    """The parser of ``--arch``, every field of that architecture's config and of `TrainConfig`
    (defaults suppressed, so the namespace holds the explicit flags only)."""
    architecture = get_architecture(arch)
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a detector on COCO masks and ALPs (the ALP paper: FCOS-MO or the "
        "Mask R-CNN* baseline), or on boxes of every class with masks of some (MaskX R-CNN).",
        epilog=_preset_epilog(arch),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arch",
        default=DEFAULT_ARCH,
        choices=ARCH_NAMES,
        help=f"the detector to train; recorded in every checkpoint (default: {DEFAULT_ARCH})",
    )
    add_field_flags(parser.add_argument_group(f"model ({arch})"), architecture.config)
    add_field_flags(parser.add_argument_group("training"), TrainConfig)
    return parser


CLASS_LIST_FIELDS = ("class_names", "classes")  # comma-separated on the command line


def _split_class_lists(explicit: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    """``--class-names dog,sofa`` (the convention, `alp_curation.flags.class_list`) and the
    older ``--class-names dog sofa`` both give ("dog", "sofa"); so does MaskX's ``--classes``."""
    for name in CLASS_LIST_FIELDS:
        if name not in explicit:
            continue
        try:
            explicit[name] = flags.join_class_lists(explicit[name])
        except ValueError as exc:
            parser.error(f"argument {flag_name(name)}: {exc}")


def resolve_config(argv: Sequence[str] | None = None) -> tuple[DetectorConfig, TrainConfig]:
    """Command-line flags (a list such as ``["--preset", "synthetic-small", "--shards",
    "out/alps"]``; None reads ``sys.argv``) -> ``(model config, TrainConfig)``, the configs
    `models.train.train` takes. A value is the dataclass default, then ``--preset``'s, then the
    explicit flag's; the model config is of the class ``--arch`` names. Old flag spellings
    (``--output-dir``, ``--split``, ...) are read as today's with a note
    (`alp_curation.flags`).

    Exits through argparse (SystemExit, status 2, the flag named) on unknown flags and bad
    values, and with status 0 after ``--help``. From Python without a command line, build the
    dataclasses directly: ``TrainConfig(shards=("out/alps",), steps=100)``.
    """
    arch = arch_of_argv(argv)
    parser = build_parser(arch)
    explicit = vars(flags.parse_args(parser, argv))
    explicit.pop("arch")
    _split_class_lists(explicit, parser)
    preset = PRESETS.get(explicit.get("preset", ""))
    model_cls = get_architecture(arch).config
    names = {f.name for f in dataclasses.fields(model_cls)}
    model_preset = preset.model[arch] if preset else {}
    train_preset = preset.train if preset else {}
    try:
        model = model_cls(**{**model_preset, **{k: v for k, v in explicit.items() if k in names}})
        train = TrainConfig(
            **{**train_preset, **{k: v for k, v in explicit.items() if k not in names}}
        )
    except ConfigError as exc:
        parser.error(str(exc))
    return model, train
