"""Tests for pipelines/build_oid_shards.py: a hand-written excerpt of every Open Images file in its
exact real layout (broken rows added, each with the dead letter it must give), then the synthetic
world exported in Open Images format, run twice. Every run uses FnApiRunner, chosen explicitly.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from alp_dataset.datasets import CocoShardDataset
from alp_dataset.oid_shards import DEAD_LETTER_REASONS, INSTANCE_FIELDS, SAMPLE_FIELDS
from alp_dataset.synthetic.oid_export import write_oid_world
from pipelines import build_oid_shards as b

PERSON, DOG, PHONE, FACE = "/m/01g317", "/m/0bt9lr", "/m/050k8", "/m/0dzct"
IMG_A, IMG_B, IMG_GONE = "0a1b2c3d4e5f6a7b", "1f2e3d4c5b6a7988", "2c3d4e5f6a7b8c9d"
SIZE = (64, 48)  # images are 64 x 48; masks come at 32 x 24
CLICKS = "0.25781 0.43750 1;0.41406 0.31250 0"  # the annotator's clicks: x y inside;...


def _png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(out, format="PNG")
    return out.getvalue()


def _half_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((24, 32), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# The files of the excerpt, line by line (line 1 is the header). Values are made up; the layout,
# column names and cell formats are Open Images' own.
SEGMENTATION = f"""\
MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks
{IMG_A}_m01g317_5d3c2b1a.png,{IMG_A},{PERSON},5d3c2b1a,0.125000,0.500000,0.250000,0.750000,0.86541,{CLICKS}
{IMG_A}_m0bt9lr_0e9f8a7b.png,{IMG_A},{DOG},0e9f8a7b,0.500000,0.875000,0.083333,0.500000,0.71205,
{IMG_A}_m0dzct_11aa22bb.png,{IMG_A},{FACE},11aa22bb,0.1,0.2,0.1,0.2,0.5,
{IMG_B}_m050k8_33cc44dd.png,{IMG_B},{PHONE},33cc44dd,0.250000,0.500000,0.500000,1.000000,0.90000,
{IMG_B}_m01g317_55ee66ff.png,{IMG_B},{PERSON},55ee66ff,0.0,0.5,0.0,0.5
bad.id_m01g317_00000001.png,bad.id,{PERSON},00000001,0.1,0.2,0.1,0.2,0.5,
{IMG_B}_m01g317_00000002.png,{IMG_B},{PERSON},00000002,0.6,0.5,0.1,0.2,0.5,
{IMG_A}_m01g317_5d3c2b1a.png,{IMG_A},{PERSON},5d3c2b1a,0.125000,0.500000,0.250000,0.750000,0.8,
{IMG_B}_m01g317_00000003.png,{IMG_B},{PERSON},00000003,0.1,0.2,0.1,0.2,0.5,
{IMG_B}_m01g317_00000004.png,{IMG_B},{PERSON},00000004,0.1,0.2,0.1,0.2,0.5,
{IMG_B}_m01g317_00000005.png,{IMG_B},{PERSON},00000005,0.1,0.2,0.1,0.2,0.5,
{IMG_GONE}_m0bt9lr_00000006.png,{IMG_GONE},{DOG},00000006,0.1,0.2,0.1,0.2,0.5,
"""
LABELS = f"""\
ImageID,Source,LabelName,Confidence
{IMG_A},verification,{PERSON},1
{IMG_A},crowdsource-verification,{PERSON},1
{IMG_A},verification,{DOG},1
{IMG_A},verification,{PHONE},0
{IMG_B},verification,{PHONE},1
{IMG_B},verification,{DOG},0
{IMG_B},machine,{PERSON},0.7
{IMG_A},verification,{FACE},1
"""
BOXES = f"""\
ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside
{IMG_A},xclick,{PERSON},1,0.125,0.5,0.25,0.75,1,0,0,0,0
{IMG_A},xclick,{DOG},1,0.5,0.875,0.083333,0.5,0,1,0,0,-1
{IMG_B},xclick,{PERSON},1,0.0,1.0,0.0,0.5,0,0,1,0,0
{IMG_B},xclick,{DOG},1,0.1,0.2,0.1,0.2,0,0,x,0,0
"""
EXPECTED_DEAD = {  # (kind, line) -> (reason, field)
    ("mask_row", 6): ("bad_row", ""),
    ("mask_row", 7): ("bad_image_id", "ImageID"),
    ("mask_row", 8): ("bad_box", "BoxXMin"),
    ("mask_row", 9): ("duplicate_mask_path", "MaskPath"),
    ("mask_row", 10): ("mask_missing", "MaskPath"),
    ("mask_row", 11): ("mask_unreadable", "MaskPath"),
    ("mask_row", 12): ("empty_mask", "MaskPath"),
    ("mask_row", 13): ("image_rejected", "ImageID"),
    ("label_row", 8): ("bad_confidence", "Confidence"),
    ("box_row", 5): ("bad_row", "IsGroupOf"),
    ("image", None): ("image_missing", "ImageID"),
}


@dataclass(frozen=True)
class Excerpt:
    root: Path
    person_mask: np.ndarray  # the 64 x 48 mask the person's PNG must become


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory: pytest.TempPathFactory) -> Excerpt:
    root = tmp_path_factory.mktemp("oid_excerpt")
    (root / "classes.csv").write_text(
        f"{PERSON},Person\n{DOG},Dog\n{PHONE},Mobile phone\n/m/04rmv,Mouse\n"
    )
    (root / "hierarchy.json").write_text(json.dumps({
        "LabelName": "/m/0bl9f",
        "Subcategory": [{"LabelName": PERSON}, {"LabelName": "/m/0jbk", "Subcategory": [
            {"LabelName": DOG}]}, {"LabelName": PHONE, "Part": [{"LabelName": "/m/04rmv"}]}],
    }))  # fmt: skip
    (root / "segmentation.csv").write_text(SEGMENTATION)
    (root / "labels.csv").write_text(LABELS)
    (root / "boxes.csv").write_text(BOXES)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for image_id in (IMG_A, IMG_B):
        pixels = rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{image_id}.jpg", quality=90)
    masks = root / "masks"
    masks.mkdir()
    person = _half_mask(6, 18, 4, 16)
    files = {
        f"{IMG_A}_m01g317_5d3c2b1a.png": _png(person),
        f"{IMG_A}_m0dzct_11aa22bb.png": _png(_half_mask(2, 4, 2, 4)),  # a class not kept
        f"{IMG_B}_m050k8_33cc44dd.png": _png(_half_mask(12, 24, 8, 16)),
        f"{IMG_B}_m01g317_00000004.png": b"not a png",
        f"{IMG_B}_m01g317_00000005.png": _png(np.zeros((24, 32), bool)),
        f"{IMG_GONE}_m0bt9lr_00000006.png": _png(_half_mask(0, 4, 0, 4)),
        "ffffffffffffffff_m01g317_99999999.png": _png(_half_mask(0, 4, 0, 4)),  # unreferenced
    }
    for name, data in files.items():
        (masks / name).write_bytes(data)
    with zipfile.ZipFile(root / "validation-masks-0.zip", "w") as z:  # the real layout
        z.writestr(f"{IMG_A}_m0bt9lr_0e9f8a7b.png", _png(_half_mask(2, 12, 16, 28)))
        z.writestr(f"{IMG_B}_m050k8_33cc44dd.png", _png(_half_mask(0, 1, 0, 1)))  # shadowed
    full = np.repeat(np.repeat(person, 2, axis=0), 2, axis=1)  # nearest-neighbour, 2x
    return Excerpt(root, full)


def build(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = b.run(["--runner", "FnApiRunner", *argv])
    return status, out.getvalue(), err.getvalue()


def excerpt_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--classes", str(root / "classes.csv"), "--hierarchy", str(root / "hierarchy.json"),
        "--masks", str(root / "segmentation.csv"), "--mask-dir", str(root / "masks"),
        "--mask-dir", str(root / "validation-masks-0.zip"), "--labels", str(root / "labels.csv"),
        "--boxes", str(root / "boxes.csv"), "--images", str(root / "images"),
        "--output", str(out), "--keep-empty-images", *extra,
    ]  # fmt: skip


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return samples


def dead_letters(out: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted((out / "dead_letters").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def excerpt_run(excerpt: Excerpt, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("excerpt_run") / "out"
    status, stdout, err = build(*excerpt_args(excerpt.root, out))
    assert status == 0, err
    assert "Open Images shards" in stdout
    return out


@pytest.mark.slow
def test_every_row_and_mask_file_is_accounted_for(excerpt_run: Path) -> None:
    manifest = json.loads((excerpt_run / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["images"] == {"total": 3, "samples": 2, "without_instances": 0, "dead_letters": 1}
    assert c["mask_rows"] == {"total": 12, "mask": 3, "not_selected": 1, "dead_letters": 8}
    assert c["box_rows"] == {
        "total": 4, "box": 1, "with_mask": 2, "group_of": 1, "not_selected": 0, "dead_letters": 1
    }  # fmt: skip
    assert c["label_rows"] == {
        "total": 8, "positive": 4, "negative": 2, "not_selected": 1, "dead_letters": 1
    }  # fmt: skip
    by_reason = {r: n for r, n in c["dead_letters"]["by_reason"].items() if n}
    expected: dict[str, int] = {}
    for reason, _ in EXPECTED_DEAD.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert by_reason == expected
    assert set(c["dead_letters"]["by_reason"]) == set(DEAD_LETTER_REASONS)
    files = manifest["mask_files"]
    # 7 in the folder + 2 in the zip; one zip entry repeats a folder name.
    assert [k["files"] for k in files["containers"]] == [7, 2]
    assert files == {
        **files, "total": 9, "referenced": 6, "not_selected": 1, "unreferenced": 1, "shadowed": 1
    }  # fmt: skip
    assert manifest["classes"]["mask"] == ["Dog", "Mobile phone", "Mouse", "Person"]
    assert manifest["hierarchy"]["parents"][DOG] == ["/m/0jbk"]  # "Part" is not a kind


@pytest.mark.slow
def test_dead_letters_name_the_row_the_field_and_the_reason(excerpt_run: Path) -> None:
    letters = dead_letters(excerpt_run)
    got = {(d["kind"], d["id"]): (d["reason"], d["field"]) for d in letters}
    assert got == EXPECTED_DEAD
    lines = SEGMENTATION.splitlines()
    for d in letters:
        assert set(d) == {"kind", "id", "image_id", "reason", "field", "message", "raw"}
        if d["kind"] == "mask_row":
            assert d["raw"] == lines[d["id"] - 1]  # the row as it is in the file
    gone = next(d for d in letters if d["kind"] == "image")
    assert gone["image_id"] == IMG_GONE and "no 2c3d4e5f6a7b8c9d.jpg" in gone["message"]


@pytest.mark.slow
def test_samples_hold_resized_masks_merged_boxes_groups_and_labels(
    excerpt: Excerpt, excerpt_run: Path
) -> None:
    samples = read_samples(excerpt_run)
    assert sorted(samples) == [IMG_A, IMG_B]
    assert set(samples[IMG_A]) == {"instances.json", "jpg"}
    doc = json.loads(samples[IMG_A]["instances.json"])
    assert set(doc) == set(SAMPLE_FIELDS)
    assert (doc["width"], doc["height"], doc["file_name"]) == (64, 48, f"{IMG_A}.jpg")
    assert doc["image_labels"] == {"positive": sorted([DOG, PERSON]), "negative": [PHONE]}
    person, dog = doc["instances"]
    assert set(person) == set(INSTANCE_FIELDS)
    assert (person["class_name"], person["category_id"], person["source"]) == ("Person", 1, "mask")
    rle = person["rle"]
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), excerpt.person_mask)  # 32 x 24 PNG, resized
    assert person["box_xyxy_px"] == [8.0, 12.0, 32.0, 36.0]
    # "0.125" in the box file and "0.125000" in the segmentation file are one box: merged.
    assert (person["box_row"], person["is_occluded"], person["is_group_of"]) == (2, True, False)
    assert (dog["csv"], dog["row"], dog["is_truncated"], dog["is_inside"]) == (
        "masks",
        3,
        True,
        None,
    )
    doc_b = json.loads(samples[IMG_B]["instances.json"])
    phone, group = doc_b["instances"]
    assert phone["has_mask"] and phone["box_row"] is None and not phone["is_group_of"]
    assert (group["source"], group["csv"], group["has_mask"]) == ("box", "boxes", False)
    assert group["is_group_of"] and group["iscrowd"]
    # Rows of this image that became dead letters: 5 while reading, 2 masks while building.
    assert doc_b["dead_annotations"] == 7
    assert doc_b["image_labels"] == {"positive": [PHONE], "negative": [DOG]}


@pytest.mark.slow
def test_the_shards_read_as_coco_shards(excerpt_run: Path) -> None:
    urls = sorted(str(p) for p in (excerpt_run / "shards").glob("*.tar"))
    dataset = CocoShardDataset(urls, keep_crowd=True, epoch_length=None, shuffle_buffer=0,
                               rank=0, world_size=1)  # fmt: skip
    targets = {t["image_id"]: t for _, t in dataset}
    assert sorted(targets) == [IMG_A, IMG_B]
    b_target = targets[IMG_B]
    assert b_target["phrases"] == ("Mobile phone", "Person")
    assert b_target["iscrowd"].tolist() == [False, True]
    assert b_target["image_labels"] == {"positive": (PHONE,), "negative": (DOG,)}
    assert b_target["masks"].shape == (2, 48, 64)


@pytest.mark.slow
def test_a_split_csv_picks_the_classes_that_keep_masks(excerpt: Excerpt, tmp_path: Path) -> None:
    # Class descriptions as the split: the shipped correspondence makes Person, Dog and Mobile
    # phone base classes (COCO person, dog, cell phone), Mouse (the animal) novel.
    status, _, err = build(*excerpt_args(
        excerpt.root, tmp_path / "out", "--class-split", str(excerpt.root / "classes.csv"),
        "--mask-classes", "novel", "--boxes-for", "all",
    ))  # fmt: skip
    assert status == 0, err
    assert "3 base (from COCO), 1 novel" in err and "Mobile phone <- cell phone" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["classes"]["mask"] == ["Mouse"]
    assert manifest["classes"]["box_only"] == ["Dog", "Mobile phone", "Person"]
    c = manifest["counts"]
    assert c["mask_rows"]["mask"] == 0 and c["box_rows"]["box"] == 3  # boxes, no masks


@pytest.mark.slow
def test_boxes_without_masks_make_box_only_shards(excerpt: Excerpt, tmp_path: Path) -> None:
    # The box oracles' training data: Open Images boxes, no segmentation file, no labels.
    status, _, err = build(
        "--classes", str(excerpt.root / "classes.csv"), "--boxes", str(excerpt.root / "boxes.csv"),
        "--images", str(excerpt.root / "images"), "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert status == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["box_rows"] == {
        "total": 4, "box": 3, "with_mask": 0, "group_of": 1, "not_selected": 0, "dead_letters": 1
    }  # fmt: skip
    assert c["mask_rows"]["total"] == 0 and manifest["mask_files"]["total"] == 0
    samples = read_samples(tmp_path / "out")
    instances = [i for s in samples.values() for i in json.loads(s["instances.json"])["instances"]]
    assert [i["has_mask"] for i in instances] == [False] * 3
    assert all(json.loads(s["instances.json"])["image_labels"] == {"positive": [], "negative": []}
               for s in samples.values())  # fmt: skip


@pytest.mark.slow
def test_bad_files_are_usage_errors(excerpt: Excerpt, tmp_path: Path) -> None:
    broken = tmp_path / "boxes.csv"
    broken.write_text(BOXES.replace("IsGroupOf", "IsGroup"))
    args = excerpt_args(excerpt.root, tmp_path / "out")
    args[args.index("--boxes") + 1] = str(broken)
    status, _, err = build(*args)
    assert status == 2 and "the header lacks ['IsGroupOf']" in err and "--boxes" in err
    bad_classes = tmp_path / "classes.csv"
    bad_classes.write_text(f"{PERSON},Person\nPerson,/m/01g317\n")
    args = excerpt_args(excerpt.root, tmp_path / "out")
    args[args.index("--classes") + 1] = str(bad_classes)
    status, _, err = build(*args)
    assert status == 2 and "line 2, column LabelName: 'Person'" in err
    with pytest.raises(SystemExit):
        build("--classes", "c.csv", "--images", ".", "--output", "o", "--masks", "m.csv")


# ---------------------------------------------------------------------------------------------
# The synthetic world in Open Images format


@pytest.mark.slow
def test_synthetic_export_runs_byte_identically_and_adds_up(tmp_path: Path) -> None:
    world = write_oid_world(tmp_path / "world", 10, seed=3, image_size=(96, 64))
    args = [
        "--classes", str(world.classes), "--hierarchy", str(world.hierarchy),
        "--masks", str(world.masks), *[a for z in world.mask_zips for a in ("--mask-dir", str(z))],
        "--labels", str(world.labels), "--boxes", str(world.boxes), "--images", str(world.images),
        "--shard-size", "4",
    ]  # fmt: skip
    trees = []
    for name in ("one", "two"):
        status, _, err = build(*args, "--output", str(tmp_path / name))
        assert status == 0, err
        root = tmp_path / name
        trees.append({p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                      if p.is_file()})  # fmt: skip
    assert trees[0] == trees[1]
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    c, n = manifest["counts"], world.counts
    assert c["dead_letters"]["total"] == 0
    assert c["mask_rows"]["mask"] == n["mask_rows"] == c["box_rows"]["with_mask"]
    assert c["box_rows"]["box"] == c["box_rows"]["group_of"] == n["group_of"]
    assert c["label_rows"]["negative"] == n["negative_labels"]
    assert c["label_rows"]["total"] == n["label_rows"]
    assert manifest["mask_files"]["referenced"] == manifest["mask_files"]["total"] == n["mask_rows"]
    assert c["images"]["total"] == n["images"]


def test_the_old_split_flag_is_read_as_class_split_with_a_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipelines import build_oid_shards, launcher

    argv = ["--split", "classes.csv", "--direct_num_workers", "2", "--output=out"]
    args, options = launcher.parse_args(build_oid_shards.build_parser(), argv, "oid")
    assert args.class_split == "classes.csv" and args.output == "out"
    assert options.get_all_options()["direct_num_workers"] == 2  # Beam's own: untouched
    assert "oid: note: --split is now spelled --class-split" in capsys.readouterr().err
