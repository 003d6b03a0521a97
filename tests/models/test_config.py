"""Tests for models/config.py and models/architectures.py: each architecture's config mirrors
its detector's keyword arguments, --arch picks it, flags come from the fields, presets apply
before explicit flags, and config dicts round-trip."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from alp_dataset.class_splits import SPLIT_NAMES
from models.architectures import (
    ARCH_NAMES,
    ARCHITECTURES,
    FCOSMOConfig,
    MaskRCNNStarConfig,
    architecture_of,
    get_architecture,
)
from models.config import (
    PRESETS,
    TrainConfig,
    build_model,
    build_parser,
    config_from_dict,
    config_to_dict,
    flag_name,
    resolve_config,
)

TINY = FCOSMOConfig(backbone="resnet_small", fpn_channels=16, text_dim=384, mask_channels=8)
ModelConfig = FCOSMOConfig  # the default architecture's config


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_each_config_is_its_detectors_keyword_arguments_with_their_defaults(arch: str) -> None:
    architecture = get_architecture(arch)
    params = inspect.signature(architecture.detector_class().__init__).parameters
    expected = {
        name: p.default for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    got = {f.name: f.default for f in dataclasses.fields(architecture.config)}
    assert got == expected
    assert architecture_of(architecture.config()) is architecture


def test_build_model_gives_the_detector_of_the_config() -> None:
    from models.meta_arch.fcos_mo import FCOSMO
    from models.meta_arch.mask_rcnn_star import MaskRCNNStar

    model = build_model(TINY)
    assert isinstance(model, FCOSMO)
    assert model.text_dim == 384
    two_stage = build_model(
        MaskRCNNStarConfig(backbone="resnet_small", fpn_channels=16, text_dim=32, box_head_dim=8)
    )
    assert isinstance(two_stage, MaskRCNNStar)
    assert two_stage.strides == (4, 8, 16, 32, 64)  # P2..P6


def test_defaults_without_a_preset() -> None:
    model, train = resolve_config([])
    assert model == ModelConfig()
    assert train == TrainConfig()
    assert resolve_config(["--arch", "mask-rcnn-star"])[0] == MaskRCNNStarConfig()
    with pytest.raises(ValueError, match="arch"):
        get_architecture("yolo")


def test_a_preset_fills_values_and_explicit_flags_win() -> None:
    model, train = resolve_config(
        ["--lr", "0.02", "--preset", "synthetic-small", "--fpn-channels", "32", "--amp"]
    )
    assert (model.backbone, model.text_dim, model.mask_channels) == ("resnet_small", 384, 16)
    assert model.fpn_channels == 32  # explicit, over the preset's 64
    assert train.lr == 0.02  # explicit, even though given before --preset
    assert train.amp is True  # the preset says --no-amp
    assert (train.image_size, train.batch_size, train.text_encoder) == (128, 8, "minilm")
    assert train.preset == "synthetic-small"


def test_presets_follow_the_paper() -> None:
    model, train = resolve_config(["--preset", "coco-oid"])
    assert (model.backbone, model.head_norm, model.backbone_norm) == ("resnet50", "BN", "BN")
    assert (model.nms_threshold, model.score_threshold, model.text_dim) == (0.2, 0.05, 512)
    assert (train.batch_size, train.lr, train.steps, train.warmup_steps) == (
        32,
        0.05,
        270_000,
        1000,
    )
    assert (train.image_size, train.scale_range, train.amp) == (1024, (0.5, 2.0), True)
    assert (train.momentum, train.weight_decay, train.optimizer) == (0.9, 1e-4, "sgd")
    voc_model, voc = resolve_config(["--preset", "coco-voc"])
    assert (voc_model.nms_threshold, voc.class_split, voc.steps) == (0.5, "coco_voc", 90_000)
    _, zsd = resolve_config(["--preset", "coco-zsd"])
    assert zsd.class_split == "coco_zsd_48_17"
    for preset in PRESETS.values():
        assert preset.train.get("class_split", "coco_voc") in SPLIT_NAMES
        assert set(preset.model) == set(ARCHITECTURES)  # every architecture has every preset
        for arch, values in preset.model.items():
            ARCHITECTURES[arch].config(**values)  # every preset is a valid config
        TrainConfig(**preset.train)
    rcnn, rcnn_train = resolve_config(["--arch", "mask-rcnn-star", "--preset", "coco-oid"])
    assert (rcnn.backbone, rcnn.mask_head, rcnn.nms_threshold, rcnn.text_dim) == (
        "resnet50", "hourglass20", 0.2, 512
    )  # fmt: skip
    # detectron2's R-50-FPN numbers (the ALP paper, Sec. 4)
    assert rcnn.anchor_sizes == (32, 64, 128, 256, 512)
    assert rcnn.aspect_ratios == (0.5, 1.0, 2.0)
    assert (rcnn.rpn_post_nms_topk_train, rcnn.rpn_post_nms_topk_test) == (2000, 1000)
    assert (rcnn.roi_batch_size, rcnn.roi_positive_fraction, rcnn.roi_fg_iou) == (512, 0.25, 0.5)
    assert (rcnn.box_roi_size, rcnn.box_head_dim, rcnn.image_label_weight) == (7, 1024, 0.1)
    assert (rcnn.tau, rcnn.background_alpha) == (0.01, 0.1)
    assert rcnn_train == train  # trained alike (Sec. 4: "same as Sec. 3.4")


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_help_explains_every_field_with_its_default(
    arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        resolve_config(["--arch", arch, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    text = " ".join(out.split())  # unwrap the help's lines
    squeezed = "".join(out.split())  # argparse also breaks lines after hyphens
    model_cls = ARCHITECTURES[arch].config
    for cls in (model_cls, TrainConfig):
        for f in dataclasses.fields(cls):
            assert flag_name(f.name) in text, f.name
            assert "".join(f.metadata["help"].split()) in squeezed, f.name
    assert text.count("(default:") >= len(dataclasses.fields(model_cls)) + len(
        dataclasses.fields(TrainConfig)
    )
    for name in (*PRESETS, *ARCH_NAMES):
        assert name in text


def test_flags_of_each_kind_parse() -> None:
    model, train = resolve_config(
        [
            "--shards", "a", "--shards", "b/{000..001}.tar", "--size-ranges", "32", "64", "128",
            "256", "--no-use-centerness", "--backbone-weights", "w.pth", "--pattern", "2", "1",
            "--scale-range", "0.1", "1.5", "--class-names", "dog", "red car",
        ]
    )  # fmt: skip
    assert train.shards == ("a", "b/{000..001}.tar")
    assert model.size_ranges == (32, 64, 128, 256)
    assert model.use_centerness is False
    assert model.backbone_weights == "w.pth"
    assert (train.pattern, train.scale_range) == ((2, 1), (0.1, 1.5))
    assert train.class_names == ("dog", "red car")
    assert resolve_config(["--backbone-weights", "none"])[0].backbone_weights is None


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--fpn-channels", "0"], "--fpn-channels"),
        (["--size-ranges", "64", "32", "128", "256"], "--size-ranges"),
        (["--lr", "-1"], "--lr"),
        (["--pattern", "0", "0"], "--pattern"),
        (["--head-norm", "LN"], "--head-norm"),
        (["--preset", "imagenet"], "--preset"),
        (["--batch-size", "two"], "--batch-size"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--arch", "yolo"], "--arch"),
        (["--arch", "fcos-mo", "--anchor-sizes", "16"], "--anchor-sizes"),  # not FCOS-MO's flag
        (["--arch", "mask-rcnn-star", "--anchor-sizes", "16", "32"], "--anchor-sizes"),
        (["--arch", "mask-rcnn-star", "--rpn-bg-iou", "0.8"], "--rpn-bg-iou"),
        (["--mask-roi-size", "14"], "--mask-roi-size"),  # hourglass20 halves it twice
        (["--alp-supervision", "captions"], "--alp-supervision"),
        (["--class-split", "coco_vocc"], "--class-split"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        resolve_config(argv)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_config_dicts_round_trip_and_reject_unknown_fields() -> None:
    model, train = resolve_config(["--preset", "coco-voc", "--shards", "x"])
    assert config_from_dict(ModelConfig, config_to_dict(model)) == model
    assert config_from_dict(TrainConfig, config_to_dict(train)) == train
    assert config_to_dict(model)["size_ranges"] == [64, 128, 256, 512]  # JSON: lists
    with pytest.raises(ValueError, match="no fields \\['depth'\\]"):
        config_from_dict(ModelConfig, {"depth": 3}, where="ckpt.pt")


def test_class_split_is_a_named_split_or_a_csv_file(tmp_path: Path) -> None:
    assert resolve_config(["--class-split", "coco_voc"])[1].class_split == "coco_voc"
    classes = tmp_path / "oid_classes.csv"
    classes.write_text("/m/01g317,Person\n/m/04rmv,Mouse\n")
    assert resolve_config(["--class-split", str(classes)])[1].class_split == str(classes)
    assert resolve_config(["--split", str(classes)])[1].class_split == str(classes)  # old name


def test_old_flag_spellings_are_read_as_todays_with_a_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, train = resolve_config(
        ["--output-dir", "runs/a", "--workers", "3", "--size", "256", "--batch", "4",
         "--split", "coco_voc"]
    )  # fmt: skip
    assert (train.output, train.num_workers, train.image_size, train.batch_size) == (
        "runs/a", 3, 256, 4,
    )  # fmt: skip
    assert train.class_split == "coco_voc"
    err = capsys.readouterr().err
    for old, new in (("--output-dir", "--output"), ("--workers", "--num-workers"),
                     ("--size", "--image-size"), ("--batch", "--batch-size"),
                     ("--split", "--class-split")):  # fmt: skip
        assert f"note: {old} is now spelled {new}" in err, old
    assert resolve_config(["--output", "runs/b"])[1].output == "runs/b"
    assert "is now spelled" not in capsys.readouterr().err


def test_class_lists_are_comma_separated(capsys: pytest.CaptureFixture[str]) -> None:
    _, train = resolve_config(["--class-names", "dog,red car, sofa"])
    assert train.class_names == ("dog", "red car", "sofa")
    model, _ = resolve_config(["--arch", "maskx-rcnn", "--classes", "circle,square", "star"])
    assert model.classes == ("circle", "square", "star")  # the older spaces still read
    for argv in (["--class-names", "dog,,cat"], ["--class-names", "dog,cat", "dog"]):
        with pytest.raises(SystemExit) as exit_info:
            resolve_config(argv)
        assert exit_info.value.code == 2
        assert "--class-names" in capsys.readouterr().err


def test_last_step_is_max_steps_when_given() -> None:
    assert TrainConfig(steps=10).last_step == 10
    assert TrainConfig(steps=10, max_steps=4).last_step == 4
    assert TrainConfig(steps=10, max_steps=40).last_step == 10


def test_the_parser_lists_model_and_training_groups() -> None:
    titles = [g.title for g in build_parser()._action_groups]
    assert "model (fcos-mo)" in titles and "training" in titles
    titles = [g.title for g in build_parser("mask-rcnn-star")._action_groups]
    assert "model (mask-rcnn-star)" in titles
