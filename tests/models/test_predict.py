"""Tests for models/predict.py and models/draw.py: mapping back, drawing, the command line on a
real photo with a tiny random model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alp_dataset.transforms import EvalTransform
from models.architectures import ARCH_NAMES, ARCHITECTURES
from models.draw import colour_for, draw_predictions
from models.predict import (
    inference_settings,
    main,
    parse_class_list,
    predict_image,
    predictions_to_input,
)


def test_parse_class_list() -> None:
    assert parse_class_list(" dog, sofa ,red car") == ["dog", "sofa", "red car"]
    with pytest.raises(ValueError, match="empty name"):
        parse_class_list("dog,,cat")
    with pytest.raises(ValueError, match=r"repeats \['dog'\]"):
        parse_class_list("dog,cat,dog")


def test_predictions_map_back_to_the_original_pixels() -> None:
    # A 40 x 80 image resized to 32 x 64 (scale 0.8), padded to 64 x 64.
    _, target = EvalTransform(size=64)(torch.zeros(3, 40, 80, dtype=torch.uint8))
    masks = torch.zeros(1, 1, 64, 64)
    masks[0, 0, 8:16, 16:48] = 1.0  # rows 10-19, columns 20-59 of the original
    output = {
        "boxes_xyxy_px": torch.tensor([[16.0, 8.0, 48.0, 16.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([2]),
        "masks": masks,
    }
    pred = predictions_to_input(output, target["geometry"])
    assert pred.boxes_xyxy_px.tolist() == [[20.0, 10.0, 60.0, 20.0]]
    assert pred.masks is not None and pred.masks.shape == (1, 40, 80)
    rows, cols = np.nonzero(pred.masks[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 19, 20, 59)
    assert pred.labels.tolist() == [2] and pred.scores.tolist() == pytest.approx([0.9])


class ConstantModel(torch.nn.Module):
    """One detection in the middle of the (padded) input, with a settable score threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.score_threshold = 0.05
        self.seen: list[tuple[tuple[int, ...], float]] = []

    def forward(self, images: torch.Tensor, *, class_embeddings: torch.Tensor) -> list[dict]:
        self.seen.append((tuple(images.shape), self.score_threshold))
        h, w = images.shape[-2:]
        masks = torch.zeros(1, 1, h, w)
        masks[..., h // 4 : h // 2, w // 4 : w // 2] = 1.0
        box = torch.tensor([[w / 4, h / 4, w / 2, h / 2]])
        return [
            {"boxes_xyxy_px": box, "scores": torch.tensor([0.2]),
             "labels": torch.tensor([1]), "masks": masks}
            for _ in images
        ]  # fmt: skip


def test_predict_image_pads_lowers_the_threshold_and_filters() -> None:
    model = ConstantModel()
    image = np.zeros((50, 100, 3), dtype=np.uint8)
    names, embeddings = ["cat", "dog"], torch.zeros(2, 4)
    found = predict_image(model, image, names, embeddings, size=100, score_threshold=0.01)
    assert model.seen == [((1, 3, 128, 128), 0.01)]  # 100 -> padded to 128; threshold lowered
    assert model.score_threshold == 0.05  # restored
    (det,) = found
    assert det["label"] == "dog" and det["mask"].shape == (50, 100)
    assert predict_image(model, image, names, embeddings, size=100, score_threshold=0.5) == []
    assert model.seen[-1][1] == 0.05  # a higher threshold filters afterwards


def test_inference_settings_name_a_missing_attribute() -> None:
    with (
        pytest.raises(AttributeError, match="nms_threshold"),
        inference_settings(ConstantModel(), nms_threshold=0.3),
    ):
        pass


def test_draw_predictions_paints_masks_and_boxes() -> None:
    image = np.full((40, 60, 3), 200, dtype=np.uint8)
    mask = np.zeros((40, 60), dtype=bool)
    mask[20:30, 10:30] = True
    pred = {"label": "dog", "class_index": 0, "score": 0.9, "box_xyxy_px": [10, 20, 30, 30],
            "mask": mask}  # fmt: skip
    drawn = np.asarray(draw_predictions(image, [pred], mask_alpha=0.5, line_width=1))
    assert drawn.shape == image.shape
    colour = np.asarray(colour_for(pred))
    assert np.allclose(drawn[25, 20], (200 + colour) / 2, atol=1)  # inside the mask, blended
    assert (drawn[25, 10] == colour).all()  # on the box's left edge
    assert (drawn[5, 50] == 200).all()  # far away: untouched


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_command_line_draws_on_a_real_photo(
    arch: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    save_tiny_checkpoint: Callable[..., Path],
) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    torch.set_num_threads(1)
    photo = skimage_data.astronaut()  # (512, 512, 3)
    Image.fromarray(photo[:, :400]).save(tmp_path / "astronaut.png")  # 400 x 512: not square
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt.pt", arch)
    out = tmp_path / "drawn" / "astronaut_pred.png"
    # Free text for the open-vocabulary detectors; a fixed-class one (MaskX R-CNN) detects all
    # of its own classes when --classes is not given, and refuses names it does not have.
    fixed = ARCHITECTURES[arch].fixed_classes
    names = (
        ("circle", "square", "triangle", "star") if fixed else ("person", "rocket", "american flag")
    )
    common = [
        "--checkpoint", str(checkpoint), "--image", str(tmp_path / "astronaut.png"),
        "--out", str(out), "--score-threshold", "0", "--size", "128", "--device", "cpu",
    ]  # fmt: skip
    if fixed:
        with pytest.raises(SystemExit) as exc:
            main([*common, "--classes", "person,circle"])
        assert exc.value.code == 2
        assert "['person'] are not classes of this checkpoint" in capsys.readouterr().err
    status = main(common if fixed else [*common, "--classes", ",".join(names)])
    assert status == 0
    with Image.open(out) as drawn:
        assert drawn.format == "PNG" and drawn.size == (400, 512) and drawn.mode == "RGB"
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert 0 < len(lines) <= 100
    for line in lines:
        label, score, box = line.split("\t")
        assert label in names
        assert 0.0 <= float(score) <= 1.0
        x0, y0, x1, y1 = (float(v) for v in box.split())
        assert 0 <= x0 <= x1 <= 400 and 0 <= y0 <= y1 <= 512
    assert f"{len(lines)} detections" in captured.err


def test_command_line_names_a_bad_image_or_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    Image.new("RGB", (32, 24)).save(tmp_path / "photo.png")
    out = tmp_path / "out.png"
    cases = (
        (tmp_path / "missing.png", garbage, "--image"),
        (not_an_image, garbage, "--image"),  # the image is read before the checkpoint
        (tmp_path / "photo.png", garbage, "--checkpoint"),
        (tmp_path / "photo.png", tmp_path / "missing.pt", "--checkpoint"),
    )
    for image, checkpoint, flag in cases:
        with pytest.raises(SystemExit) as exc:
            main(["--checkpoint", str(checkpoint), "--image", str(image), "--classes", "dog",
                  "--out", str(out)])  # fmt: skip
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{flag} " in err or f"{flag}:" in err, err
        assert not out.exists()


@pytest.mark.slow
def test_inference_loading_takes_the_checkpoints_size_and_names_a_bad_encoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], save_tiny_checkpoint: Callable[..., Path]
) -> None:
    import argparse

    from models.architectures import FCOSMOConfig, build_model
    from models.engine.checkpoint import load_checkpoint, save_checkpoint
    from models.predict import load_for_inference

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt.pt")
    saved = load_checkpoint(checkpoint)
    parser = argparse.ArgumentParser(prog="predict")
    config = {**saved["config"], "train": {"image_size": 96}}
    sized = save_checkpoint(tmp_path / "sized.pt", model=build_model(FCOSMOConfig(
        **saved["config"]["model"])), step=0, config=config)  # fmt: skip
    model, got, embeddings, size = load_for_inference(
        parser, str(sized), ["dog", "red car"], size=None, device="cpu"
    )
    assert (size, tuple(embeddings.shape), got["text_encoder"]) == (96, (2, 384), "minilm")
    assert not model.training
    assert load_for_inference(parser, str(sized), ["dog"], size=64, device="cpu")[3] == 64
    config["text_encoder"] = "no-such-encoder"
    bad = save_checkpoint(tmp_path / "bad.pt", model=model, step=0, config=config)
    with pytest.raises(SystemExit) as exc:
        load_for_inference(parser, str(bad), ["dog"], size=None, device="cpu")
    assert exc.value.code == 2
    assert "text encoder 'no-such-encoder' of the checkpoint" in capsys.readouterr().err
