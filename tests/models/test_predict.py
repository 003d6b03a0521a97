"""Tests for models/predict.py and models/draw.py: mapping back (zero-area boxes dropped), one
default image size, image lists, drawing the top k legibly, the command line on a real photo and
on a folder of images with a tiny random model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from alp_dataset.transforms import EvalTransform
from models.architectures import ARCH_NAMES, ARCHITECTURES
from models.draw import colour_for, draw_predictions, text_colour
from models.predict import (
    DEFAULT_IMAGE_SIZE,
    CheckpointInfo,
    default_image_size,
    find_images,
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


def test_boxes_left_without_area_are_dropped_with_their_masks() -> None:
    # A 40 x 80 image resized to 32 x 64, padded to 64 x 64: rows 32-63 are padding.
    _, target = EvalTransform(size=64)(torch.zeros(3, 40, 80, dtype=torch.uint8))
    masks = torch.zeros(4, 1, 64, 64)
    masks[1, 0, 8:16, 16:48] = 1.0
    output = {
        "boxes_xyxy_px": torch.tensor(
            [
                [10.0, 40.0, 30.0, 60.0],  # in the padding: clipped to y 40..40
                [16.0, 8.0, 48.0, 16.0],  # a real one
                [20.0, 5.0, 20.0, 9.0],  # no width
                [20.0, 5.0, 20.7, 9.0],  # 0.875 px wide in the original: degenerate
            ]
        ),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
        "labels": torch.tensor([0, 1, 2, 3]),
        "masks": masks,
    }
    pred = predictions_to_input(output, target["geometry"])
    assert pred.boxes_xyxy_px.tolist() == [[20.0, 10.0, 60.0, 20.0]]
    assert pred.labels.tolist() == [1] and pred.scores.tolist() == pytest.approx([0.8])
    assert pred.masks is not None and pred.masks.shape == (1, 40, 80) and pred.masks[0].any()


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


def test_predict_image_defaults_to_the_checkpoints_image_size() -> None:
    model = ConstantModel()
    image = np.zeros((50, 100, 3), dtype=np.uint8)
    names, embeddings = ["cat", "dog"], torch.zeros(2, 4)
    assert default_image_size(model) == DEFAULT_IMAGE_SIZE  # a model not from a checkpoint
    predict_image(model, image, names, embeddings)
    assert model.seen[-1][0] == (1, 3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    model.checkpoint_info = CheckpointInfo("ckpt.pt", "fcos-mo", None, image_size=200)
    assert default_image_size(model) == 200  # what python -m models.predict uses too
    predict_image(model, image, names, embeddings)
    assert model.seen[-1][0] == (1, 3, 256, 256)  # 200, padded to a multiple of 128
    with pytest.raises(ValueError, match="needs the text encoder"):  # no embeddings, no encoder
        predict_image(model, image, names)


def test_find_images_takes_files_folders_and_patterns(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "c.jpeg", "notes.txt"):
        (folder / name).write_bytes(b"x")
    single = tmp_path / "one.png"
    single.write_bytes(b"x")
    assert find_images([str(folder)]) == [folder / "a.JPG", folder / "b.png", folder / "c.jpeg"]
    assert find_images([str(single), str(tmp_path / "photos" / "*.png"), str(single)]) == [
        single, folder / "b.png"
    ]  # fmt: skip
    for spec, message in (
        (tmp_path / "missing.png", "no such file or folder"),
        (tmp_path / "*.gif", "the pattern matches no file"),
        (tmp_path / "empty", "a folder without images"),
    ):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match=message):
            find_images([str(spec)])


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
    assert (drawn[38, 55] == 200).all()  # far away (below the box and its caption): untouched


def test_draw_only_the_top_k_with_legible_captions() -> None:
    image = np.full((200, 300, 3), 128, dtype=np.uint8)
    # Ten boxes in a row, scores falling left to right; only the best three are drawn.
    preds = [
        {"label": f"c{i}", "class_index": 0, "score": 1 - i / 20,
         "box_xyxy_px": [10 + 28 * i, 100, 30 + 28 * i, 150], "mask": None}
        for i in range(10)
    ]  # fmt: skip
    drawn = np.asarray(draw_predictions(image, preds[::-1], top_k=3, line_width=2))
    colour = np.asarray(colour_for(preds[0]))
    for i in range(10):
        left_edge = drawn[125, 10 + 28 * i]  # the middle of the box's left side
        assert (left_edge == colour).all() == (i < 3), i
    everything = np.asarray(draw_predictions(image, preds, top_k=None, line_width=2))
    assert (everything[125, 10 + 28 * 9] == colour).all()
    assert text_colour((240, 228, 66)) == (0, 0, 0)  # black on yellow
    assert text_colour((0, 114, 178)) == (255, 255, 255)  # white on blue
    with pytest.raises(ValueError, match="top_k"):
        draw_predictions(image, preds, top_k=-1)


def test_captions_scale_with_the_image_and_do_not_overlap() -> None:
    def caption_rows(h: int) -> int:
        image = np.zeros((h, h, 3), dtype=np.uint8)
        box = [h * 0.3, h * 0.3, h * 0.6, h * 0.6]
        pred = {"label": "dog", "class_index": 4, "score": 0.9, "box_xyxy_px": box}
        drawn = np.asarray(draw_predictions(image, [pred], line_width=1))
        colour = np.asarray(colour_for(pred))
        column = round(h * 0.3) + 2  # inside the caption, left of the text
        rows = np.flatnonzero((drawn[:, column] == colour).all(axis=1))
        return int((rows < round(h * 0.3)).sum())  # caption rows above the box

    assert caption_rows(1000) > 2 * caption_rows(300) > 0  # ~2.5 % of the side
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    same = [{"label": "a", "class_index": i, "score": 0.9 - i / 10,
             "box_xyxy_px": [50, 50, 150, 150]} for i in range(2)]  # fmt: skip
    drawn = np.asarray(draw_predictions(image, same, line_width=1))
    # The second caption cannot sit where the first does: it moves inside the box.
    assert (drawn[55, 51] == colour_for(same[1])).all()  # (left of the text: the padding)
    assert (drawn[45, 51] == colour_for(same[0])).all()


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
        "--output", str(out), "--score-threshold", "0", "--image-size", "128", "--device", "cpu",
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
                  "--output", str(out)])  # fmt: skip
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
    from models.predict import embed_classes, load_for_inference, load_model

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt.pt")
    saved = load_checkpoint(checkpoint)
    parser = argparse.ArgumentParser(prog="predict")
    config = {**saved["config"], "train": {"image_size": 96}}
    sized = save_checkpoint(tmp_path / "sized.pt", model=build_model(FCOSMOConfig(
        **saved["config"]["model"])), step=0, config=config)  # fmt: skip
    # The Python API: a checkpoint to detections in three lines, at the checkpoint's size.
    model = load_model(sized, device="cpu")
    assert not model.training and default_image_size(model) == 96
    assert model.checkpoint_info.text_encoder == "minilm"
    embeddings = embed_classes(model, ["dog", "red car"])
    assert tuple(embeddings.shape) == (2, 384)
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    found = predict_image(model, image, ["dog", "red car"], embeddings, score_threshold=0.0)
    assert all(d["mask"].shape == (40, 60) for d in found)
    # The old command-line helper is still there, on top of it.
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


def test_command_line_on_a_folder_writes_one_png_each_and_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], save_tiny_checkpoint: Callable[..., Path]
) -> None:
    # MaskX R-CNN: a fixed-class detector, so no text encoder is loaded.
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt.pt", "maskx-rcnn")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in (("b.png", (48, 64)), ("a.jpg", (64, 40))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(photos / name)
    extra = tmp_path / "extra.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(extra)
    drawn, record = tmp_path / "drawn", tmp_path / "out" / "detections.json"
    status = main(
        [
            "--checkpoint", str(checkpoint), "--image", str(photos), str(tmp_path / "ex*.png"),
            "--classes", "circle,square", "--output", str(drawn), "--json", str(record),
            "--score-threshold", "0", "--top-k", "3", "--image-size", "64", "--device", "cpu",
        ]
    )  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in drawn.iterdir()) == ["a_pred.png", "b_pred.png", "extra_pred.png"]
    with Image.open(drawn / "a_pred.png") as image:
        assert image.size == (40, 64)
    written = json.loads(record.read_text())
    assert written["classes"] == ["circle", "square"] and written["image_size"] == 64
    files = [entry["file"] for entry in written["images"]]
    assert files == [str(photos / "a.jpg"), str(photos / "b.png"), str(extra)]  # sorted, then
    lines = capsys.readouterr().out.splitlines()
    total = sum(len(entry["detections"]) for entry in written["images"])
    assert len(lines) == total > 3  # every detection printed and written, not only the top 3
    assert lines[0].split("\t")[0] == str(photos / "a.jpg")  # several images: the path first
    for entry in written["images"]:
        for det in entry["detections"]:
            assert det["label"] in ("circle", "square")
            x0, y0, x1, y1 = det["box_xyxy_px"]
            assert 0 <= x0 <= x1 - 1 <= entry["width"] - 1  # no degenerate box
            assert 0 <= y0 <= y1 - 1 <= entry["height"] - 1
            mask = mask_utils.decode({**det["mask"], "counts": det["mask"]["counts"].encode()})
            assert mask.shape == (entry["height"], entry["width"])
    # Old spellings (--out, --size, space-separated --classes) still work, with a note.
    single = tmp_path / "single.png"
    status = main(
        [
            "--checkpoint", str(checkpoint), "--image", str(extra), "--classes", "circle",
            "square", "--out", str(single), "--size", "64", "--device", "cpu",
        ]
    )  # fmt: skip
    assert status == 0 and single.is_file()
    err = capsys.readouterr().err
    assert "--out is now spelled --output" in err and "--size is now spelled --image-size" in err
    # Several images need a folder; neither --output nor --json is a usage error.
    for argv, message in (
        (["--image", str(photos), "--output", str(tmp_path / "x.png")], "need a folder"),
        (["--image", str(extra)], "give --output"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["--checkpoint", str(checkpoint), *argv])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_help_gives_every_flag_a_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    from models.predict import build_parser

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--image", "--classes", "--output", "--json", "--top-k",
                 "--score-threshold", "--image-size", "--device"):  # fmt: skip
        assert flag in text
    for action in build_parser()._actions:
        assert action.help, action.option_strings


def test_a_caption_with_no_free_place_is_left_out() -> None:
    from models.draw import caption_place

    placed: list[tuple[float, ...]] = []
    box = (40.0, 40.0, 60.0, 80.0)
    while (spot := caption_place(box, (30.0, 10.0), (128, 128), placed)) is not None:
        placed.append(spot)
        assert len(placed) <= 4  # above, inside the top, below, inside the bottom
    assert len(placed) == 4
    for i, a in enumerate(placed):  # no two captions overlap
        for b in placed[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
    # On the image's edge the places are clamped onto it.
    top = caption_place((0.0, 0.0, 20.0, 20.0), (30.0, 10.0), (128, 128), [])
    assert top == (0.0, 0.0, 30.0, 10.0)
