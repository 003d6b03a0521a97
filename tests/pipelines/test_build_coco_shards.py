"""Tests for pipelines/build_coco_shards.py: the COCO checks on hand-built entries, a composite on
beam.Create, then whole runs on a small synthetic world with broken entries added.

The world's shape classes are renamed to COCO classes (seven VOC, seven non-VOC) so the real class
splits apply. Every run uses FnApiRunner, chosen explicitly (DirectRunner would first try to
download the Prism runner).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from alp_dataset.class_splits import COCO_VOC20
from alp_dataset.coco_shards import (
    DEAD_LETTER_FIELDS,
    DEAD_LETTER_REASONS,
    INSTANCE_FIELDS,
    SAMPLE_FIELDS,
    RleError,
    coco_sample_key,
    decode_masks,
    encode_mask,
    manifest_problems,
    rle_counts,
    segmentation_to_rle,
)
from alp_dataset.schema import MANIFEST_NAME
from alp_dataset.synthetic import write_world
from pipelines import build_coco_shards as b
from pipelines.coco import (
    NOT_SELECTED,
    AnnotationEntry,
    CocoDeadLetter,
    ImageEntry,
    parse_annotation,
    parse_image,
    select_classes,
)

# Shape class -> COCO class: the first seven are VOC classes, the rest are not.
RENAME = {
    "circle": "person",
    "square": "dog",
    "triangle": "car",
    "star": "cat",
    "crown": "bus",
    "moon": "boat",
    "arrow": "bird",
    "heart": "bench",
    "ring": "umbrella",
    "cross": "kite",
    "diamond": "traffic light",  # in neither part of coco_zsd_48_17
    "ellipse": "clock",
    "gear": "scissors",
    "bone": "frisbee",
}
N_IMAGES = 12


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a mask: runs over the column-major pixels, zeros first."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": runs}


@dataclass(frozen=True)
class CocoInputs:
    instances: Path
    images: Path
    original: dict[str, Any]  # the world's instances, categories renamed
    expected_dead: dict[str, int]  # reason -> count for the default run (coco_voc, base masks)
    polygon_id: int  # annotation whose segmentation was replaced by a polygon
    crowd_id: int  # annotation made a crowd with an uncompressed RLE
    box_only_bad_segmentation_id: int  # a non-VOC annotation with a broken segmentation


@pytest.fixture(scope="module")
def coco_inputs(tmp_path_factory: pytest.TempPathFactory) -> CocoInputs:
    world = write_world(tmp_path_factory.mktemp("world"), N_IMAGES, seed=0, images=True)
    assert world.images is not None
    doc = json.loads(world.instances.read_text())
    for cat in doc["categories"]:
        cat["name"] = RENAME[cat["name"]]
    original = json.loads(json.dumps(doc))
    names = {c["id"]: c["name"] for c in doc["categories"]}
    voc = [a for a in doc["annotations"] if names[a["category_id"]] in COCO_VOC20]
    non_voc = [a for a in doc["annotations"] if names[a["category_id"]] not in COCO_VOC20]
    voc_cat = next(c["id"] for c in doc["categories"] if c["name"] == "dog")
    other_cat = next(c["id"] for c in doc["categories"] if c["name"] == "bench")

    # A polygon and a crowd RLE among real annotations.
    x, y, w, h = voc[0]["bbox"]
    voc[0]["segmentation"] = [
        [x, y, x + w, y, x + w, y + h, x, y + h],
        [1.0, 2.0],
    ]  # 2nd: too short
    crowd_rle = dict(voc[1]["segmentation"], counts=voc[1]["segmentation"]["counts"].encode())
    voc[1]["segmentation"] = _uncompressed_rle(mask_utils.decode(crowd_rle))
    voc[1]["iscrowd"] = 1
    non_voc[0]["segmentation"] = [[0, 0, 1, 1]]  # never converted: its class keeps no mask

    images_dir = world.images
    (images_dir / "garbage.png").write_bytes(b"not a png at all")
    first_image = doc["images"][0]
    size = {"width": 256, "height": 256}
    doc["images"] += [
        {"id": 100, "file_name": "missing.png", **size},  # image_missing
        {"id": 101, "file_name": "x.png", "height": 256},  # bad_image (no width)
        {"id": 102, "file_name": first_image["file_name"], "width": 300, "height": 256},
        dict(first_image),  # duplicate_image_id
        {"id": 103, "file_name": "a.gif", **size},  # unsupported_image_type
        {"id": 104, "file_name": "garbage.png", **size},  # image_unreadable
        {"id": 105, "file_name": doc["images"][1]["file_name"], **size},  # no annotation
        "oops",  # bad_image
        {"id": 106, "file_name": "../etc/passwd.png", **size},  # bad_image (leaves the root)
    ]

    def ann(ann_id: int, image_id: Any, category_id: Any, **extra: Any) -> dict[str, Any]:
        return {
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": [10, 10, 20, 20],
            "area": 400,
            "iscrowd": 0,
            "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
            **extra,
        }

    doc["annotations"] += [
        ann(1000, 100, voc_cat),  # image_rejected (image_missing)
        ann(1001, 100, other_cat),  # not selected: not rejected
        ann(1002, 101, voc_cat),  # image_rejected (bad_image)
        ann(1003, 102, voc_cat),  # image_rejected (image_size_mismatch)
        ann(1004, 0, 999),  # unknown_category
        ann(1005, 0, voc_cat, bbox=[10, 10, -5, 4]),  # bad_box
        ann(1006, 0, other_cat, bbox=[10, 10, -5, 4]),  # not selected, box never checked
        ann(1007, 555, voc_cat),  # unknown_image
        ann("x", 0, voc_cat),  # bad_annotation
        dict(doc["annotations"][0]),  # duplicate_annotation_id
        ann(1008, 0, voc_cat, segmentation=[[1, 2, 3, 4]]),  # bad_segmentation
        ann(1009, 0, voc_cat, bbox=[300, 300, 5, 5]),  # bad_box: outside the image
        ann(1010, 0, voc_cat, segmentation={"size": [256, 256], "counts": [5, 3]}),
        ann(1011, 0, voc_cat, iscrowd=2),  # bad_annotation
        [1, 2],  # bad_annotation
    ]
    instances = tmp_path_factory.mktemp("coco") / "instances.json"
    instances.write_text(json.dumps(doc))
    expected = Counter(
        {
            "image_missing": 1,
            "bad_image": 3,
            "image_size_mismatch": 1,
            "duplicate_image_id": 1,
            "unsupported_image_type": 1,
            "image_unreadable": 1,
            "image_rejected": 3,
            "unknown_category": 1,
            "bad_box": 2,
            "unknown_image": 1,
            "bad_annotation": 3,
            "duplicate_annotation_id": 1,
            "bad_segmentation": 2,
        }
    )
    return CocoInputs(
        instances=instances,
        images=images_dir,
        original=original,
        expected_dead=dict(expected),
        polygon_id=voc[0]["id"],
        crowd_id=voc[1]["id"],
        box_only_bad_segmentation_id=non_voc[0]["id"],
    )


def build(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = b.run(["--runner", "FnApiRunner", *argv])
    return status, out.getvalue(), err.getvalue()


def read_shards(out_dir: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((out_dir / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                samples.setdefault(key, {})[ext] = data
    return samples


def dead_letters(out_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted((out_dir / "dead_letters").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def voc_run(coco_inputs: CocoInputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("voc") / "out"
    status, stdout, err = build(
        "--instances", str(coco_inputs.instances), "--images", str(coco_inputs.images),
        "--output", str(out), "--class-split", "coco_voc", "--shard-size", "4",
    )  # fmt: skip
    assert status == 0, err
    assert "samples" in stdout
    # Progress on stderr (a local run without --quiet): every image entry checked, of the total.
    n_images = len(json.loads(coco_inputs.instances.read_text())["images"])
    assert f"build_coco_shards: images: {n_images:,} of {n_images:,} images checked" in err
    assert "build_coco_shards: writing shards: " in err
    return out


# ---------------------------------------------------------------------------------------------
# Entries, one at a time


def test_select_classes_follows_split_mask_classes_and_boxes_for() -> None:
    names = ["person", "dog", "bench", "traffic light"]
    s = select_classes(names, split="coco_voc", mask_classes="base", boxes_for="mask-classes")
    assert (s.mask, s.box_only, s.not_selected) == (
        {"person", "dog"},
        set(),
        {"bench", "traffic light"},
    )
    maskx = select_classes(names, split="coco_voc", mask_classes="base", boxes_for="split-classes")
    assert (maskx.mask, maskx.box_only) == ({"person", "dog"}, {"bench", "traffic light"})
    assert len(maskx.split_not_in_file) == 80 - 4
    novel = select_classes(names, split="coco_voc", mask_classes="novel", boxes_for="mask-classes")
    assert novel.mask == {"bench", "traffic light"}
    zsd = select_classes(names, split="coco_zsd_48_17", mask_classes="all", boxes_for="all")
    assert zsd.mask == {"person", "dog", "bench"}  # traffic light is in neither part
    assert zsd.box_only == {"traffic light"}
    zsd_split = select_classes(
        names, split="coco_zsd_48_17", mask_classes="all", boxes_for="split-classes"
    )
    assert zsd_split.not_selected == {"traffic light"}
    every = select_classes(["circle", "star"], split="all", mask_classes="base", boxes_for="all")
    assert every.mask == {"circle", "star"}
    with pytest.raises(ValueError, match=r"no category .* split 'coco_voc'"):
        select_classes(["circle"], split="coco_voc", mask_classes="base", boxes_for="all")


def test_select_classes_takes_a_split_given_as_base_and_novel_classes() -> None:
    names = ["circle", "square", "triangle", "star", "heart"]
    lists = {"base": frozenset({"circle", "square"}), "novel": frozenset({"triangle", "unicorn"})}
    maskx = select_classes(names, **lists, mask_classes="base", boxes_for="split-classes")
    assert (maskx.mask, maskx.box_only) == ({"circle", "square"}, {"triangle"})
    assert (maskx.not_selected, maskx.split_not_in_file) == ({"star", "heart"}, ("unicorn",))
    full = select_classes(names, **lists, mask_classes="all", boxes_for="split-classes")
    assert (full.mask, full.box_only) == ({"circle", "square", "triangle"}, set())
    alone = select_classes(
        names, base=frozenset({"star"}), mask_classes="novel", boxes_for="split-classes"
    )
    assert (alone.mask, alone.box_only) == (set(), {"star"})  # no novel class: boxes only
    kw: dict[str, Any] = {"mask_classes": "base", "boxes_for": "split-classes"}
    errors = [
        ({"base": frozenset({"circle", "star"}), "novel": frozenset({"star"})},
         r"classes \['star'\] are both base and novel"),
        ({"novel": frozenset({"star"})}, r"novel classes \['star'\] need base classes"),
        ({"split": "coco_voc", "base": frozenset({"circle"})}, "given together"),
        ({}, "expected a split name or at least one base class"),
        ({"base": frozenset({"person"})}, "no category .* the base and novel classes"),
    ]  # fmt: skip
    for chosen, message in errors:
        with pytest.raises(ValueError, match=message):
            select_classes(names, **chosen, **kw)


def test_parse_image_names_field_and_reason() -> None:
    good = parse_image({"id": 3, "file_name": "a/B.JPG", "width": 4, "height": 5})
    assert isinstance(good, ImageEntry)
    assert (good.extension, good.key) == ("jpg", coco_sample_key(3)) == ("jpg", "000000000003")
    cases = [
        ({"id": "3", "file_name": "a.png", "width": 4, "height": 5}, "bad_image", "id"),
        ({"id": 3, "file_name": "/abs.png", "width": 4, "height": 5}, "bad_image", "file_name"),
        ({"id": 3, "file_name": "a.png", "width": 0, "height": 5}, "bad_image", "width"),
        ({"id": 3, "file_name": "a.png", "width": 4, "height": True}, "bad_image", "height"),
        ({"id": 3, "file_name": "a.tif", "width": 4, "height": 5}, "unsupported_image_type",
         "file_name"),
    ]  # fmt: skip
    for entry, reason, field in cases:
        dead = parse_image(entry)
        assert isinstance(dead, CocoDeadLetter)
        assert (dead.reason, dead.field, dead.kind) == (reason, field, "image")
        assert json.loads(dead.raw) == entry


def test_parse_annotation_checks_only_what_a_kept_instance_uses() -> None:
    images = {1: ImageEntry(1, "a.png", 100, 50, "png", "{}")}
    selection = select_classes(
        ["dog", "bench"], split="coco_voc", mask_classes="base", boxes_for="mask-classes"
    )
    kw: dict[str, Any] = {
        "images": images,
        "rejected_images": {2},
        "categories": {1: "dog", 2: "bench"},
        "selection": selection,
    }
    base = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [90, 40, 20, 20], "iscrowd": 0}
    entry = parse_annotation(base, **kw)
    assert isinstance(entry, AnnotationEntry)
    assert entry.box_xyxy_px == (90.0, 40.0, 100.0, 50.0)  # clipped to the image
    assert (entry.source, entry.class_name, entry.area) == ("mask", "dog", None)
    assert parse_annotation(base | {"category_id": 2, "bbox": None}, **kw) == NOT_SELECTED
    cases = [
        (base | {"image_id": 2}, "image_rejected", "image_id"),
        (base | {"image_id": 3}, "unknown_image", "image_id"),
        (base | {"category_id": 9}, "unknown_category", "category_id"),
        (base | {"bbox": [1, 2, 3, float("nan")]}, "bad_box", "bbox"),
        (base | {"bbox": [1, 2, 3]}, "bad_box", "bbox"),
        (base | {"bbox": [1, 2, 0, 3]}, "bad_box", "bbox"),
        (base | {"area": -1}, "bad_annotation", "area"),
        (base | {"iscrowd": 1.0}, "bad_annotation", "iscrowd"),
        ({k: v for k, v in base.items() if k != "category_id"}, "bad_annotation", "category_id"),
    ]
    for ann, reason, field in cases:
        dead = parse_annotation(ann, **kw)
        assert isinstance(dead, CocoDeadLetter), ann
        assert (dead.reason, dead.field) == (reason, field), ann


def test_dead_letter_reasons_and_fields_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "coco_shards.md").read_text()
    for name in (*DEAD_LETTER_REASONS, *DEAD_LETTER_FIELDS, *INSTANCE_FIELDS, *SAMPLE_FIELDS):
        assert f"`{name}`" in doc, name


def test_build_samples_composite_on_created_entries(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    image = ImageEntry(1, "a.png", 8, 6, "png", "{}")
    missing = ImageEntry(2, "b.png", 8, 6, "png", "{}")

    def ann(ann_id: int, image_id: int, segmentation: Any) -> AnnotationEntry:
        return AnnotationEntry(
            ann_id,
            image_id,
            1,
            "dog",
            "mask",
            (0.0, 0.0, 4.0, 4.0),
            None,
            False,
            segmentation,
            "{}",
        )

    square = [[0, 0, 4, 0, 4, 4, 0, 4]]
    per_image = {
        "image": [(1, image), (2, missing)],
        "annotations": [(1, ann(10, 1, square)), (1, ann(11, 1, None)), (2, ann(12, 2, square))],
        "dead_counts": [(1, 1)],
    }
    with BeamTestPipeline(runner="FnApiRunner", options=PipelineOptions([])) as p:
        inputs = {k: p | f"Create{k}" >> beam.Create(v) for k, v in per_image.items()}
        built = inputs | b.BuildSamples(str(tmp_path), keep_empty=False)
        documents = built.samples | beam.Map(lambda s: (s.key, json.loads(s.instances_json)))
        assert_that(
            documents | "Summary" >> beam.MapTuple(
                lambda key, d: (key, [i["annotation_id"] for i in d["instances"]],
                                d["dead_annotations"])
            ),
            equal_to([("000000000001", [10], 2)]),
        )  # fmt: skip
        assert_that(
            built.dead | beam.Map(lambda d: (d.kind, d.id, d.reason)),
            equal_to(
                [
                    ("annotation", 11, "bad_segmentation"),
                    ("image", 2, "image_missing"),
                    ("annotation", 12, "image_rejected"),
                ]
            ),
            label="Dead",
        )


# ---------------------------------------------------------------------------------------------
# Whole runs


def test_default_run_keeps_masks_of_base_classes_only(
    voc_run: Path, coco_inputs: CocoInputs
) -> None:
    manifest = json.loads((voc_run / MANIFEST_NAME).read_text())
    assert manifest_problems(manifest) == []
    counts = manifest["counts"]
    names = {c["id"]: c["name"] for c in coco_inputs.original["categories"]}
    original = coco_inputs.original["annotations"]
    voc = [a for a in original if names[a["category_id"]] in COCO_VOC20]
    assert counts["annotations"]["mask"] == len(voc)
    assert counts["annotations"]["box"] == 0
    assert counts["annotations"]["crowd"] == 1
    dead = {r: n for r, n in counts["dead_letters"]["by_reason"].items() if n}
    assert dead == coco_inputs.expected_dead
    letters = dead_letters(voc_run)
    assert Counter(d["reason"] for d in letters) == Counter(coco_inputs.expected_dead)
    assert all(set(d) == set(DEAD_LETTER_FIELDS) for d in letters)
    assert {d["id"] for d in letters if d["reason"] == "image_rejected"} == {1000, 1002, 1003}
    assert manifest["classes"]["mask"] == sorted(n for n in RENAME.values() if n in COCO_VOC20)

    samples = read_shards(voc_run)
    images_with_voc = {a["image_id"] for a in voc}
    # Image 105 shares a file with image 1 but has no annotation: no sample.
    assert set(samples) == {coco_sample_key(i) for i in images_with_voc}
    assert counts["images"]["samples"] == len(samples)
    assert counts["images"]["without_instances"] == N_IMAGES - len(images_with_voc) + 1
    by_id = {a["id"]: a for a in original}
    seen = set()
    for key, members in samples.items():
        assert set(members) == {"instances.json", "png"}
        doc = json.loads(members["instances.json"])
        assert set(doc) == set(SAMPLE_FIELDS)
        assert coco_sample_key(doc["image_id"]) == key
        ids = [i["annotation_id"] for i in doc["instances"]]
        assert ids == sorted(ids)
        masks = decode_masks([i["rle"] for i in doc["instances"]], doc["height"], doc["width"])
        for inst, mask in zip(doc["instances"], masks, strict=True):
            assert set(inst) == set(INSTANCE_FIELDS)
            assert (inst["source"], inst["has_mask"]) == ("mask", True)
            assert inst["class_name"] in COCO_VOC20
            seen.add(inst["annotation_id"])
            if inst["annotation_id"] == coco_inputs.polygon_id:
                x, y, w, h = by_id[inst["annotation_id"]]["bbox"]
                poly = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], 256, 256)
                assert (mask == mask_utils.decode(mask_utils.merge(poly)).astype(bool)).all()
            else:
                truth = dict(by_id[inst["annotation_id"]]["segmentation"])
                truth["counts"] = truth["counts"].encode()
                assert (mask == mask_utils.decode(truth).astype(bool)).all()
            if inst["annotation_id"] == coco_inputs.crowd_id:
                assert inst["iscrowd"] is True
        if doc["image_id"] == 0:
            # bad_box x2, unknown_category, duplicate id, bad_segmentation x2, bad_annotation x2
            assert doc["dead_annotations"] == 8
    assert seen == {a["id"] for a in voc}


def test_maskx_run_keeps_boxes_of_every_split_class(
    coco_inputs: CocoInputs, tmp_path: Path
) -> None:
    out = tmp_path / "maskx"
    status, _, err = build(
        "--instances", str(coco_inputs.instances), "--images", str(coco_inputs.images),
        "--output", str(out), "--class-split", "coco_voc", "--boxes-for", "split-classes",
    )  # fmt: skip
    assert status == 0, err
    counts = json.loads((out / MANIFEST_NAME).read_text())["counts"]
    names = {c["id"]: c["name"] for c in coco_inputs.original["categories"]}
    n_voc = sum(names[a["category_id"]] in COCO_VOC20 for a in coco_inputs.original["annotations"])
    n_all = len(coco_inputs.original["annotations"])
    # 1001 and 1006 (bench) are wanted now: 1001's image is a dead letter, 1006's box is bad.
    assert (counts["annotations"]["mask"], counts["annotations"]["box"]) == (n_voc, n_all - n_voc)
    assert counts["dead_letters"]["by_reason"]["image_rejected"] == 4
    assert counts["dead_letters"]["by_reason"]["bad_box"] == 3
    for members in read_shards(out).values():
        for inst in json.loads(members["instances.json"])["instances"]:
            if inst["class_name"] in COCO_VOC20:
                assert (inst["source"], inst["has_mask"]) == ("mask", True)
            else:
                assert (inst["source"], inst["has_mask"], inst["rle"]) == ("box", False, None)


@pytest.fixture(scope="module")
def shape_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(instances, images) of a clean world of five shape classes, under their own names."""
    world = write_world(
        tmp_path_factory.mktemp("shapes"),
        8,
        seed=3,
        classes=("circle", "square", "triangle", "star", "heart"),
        image_size=(64, 64),
    )
    assert world.images is not None
    return world.instances, world.images


def test_class_lists_give_boxes_for_base_and_novel_and_masks_for_base(
    shape_world: tuple[Path, Path], tmp_path: Path
) -> None:
    instances, images = shape_world
    out = tmp_path / "lists"
    status, stdout, err = build(
        "--instances", str(instances), "--images", str(images), "--output", str(out),
        "--base-classes", "square, circle", "--novel-classes", "triangle,star,unicorn",
        "--boxes-for", "split-classes",
    )  # fmt: skip
    assert status == 0, err
    assert "(base classes square, circle; novel classes triangle, star, unicorn)" in stdout
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest_problems(manifest) == []
    assert manifest["classes"] == {
        "mask": ["circle", "square"],
        "box_only": ["star", "triangle"],
        "not_selected": ["heart"],
        "split_not_in_file": ["unicorn"],
    }
    options = manifest["options"]
    assert (options["split"], options["base_classes"], options["novel_classes"]) == (
        None,
        ["square", "circle"],
        ["triangle", "star", "unicorn"],
    )
    doc = json.loads(instances.read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    wanted = Counter(names[a["category_id"]] for a in doc["annotations"])
    counts = manifest["counts"]["annotations"]
    assert counts["mask"] == wanted["circle"] + wanted["square"] > 0
    assert counts["box"] == wanted["triangle"] + wanted["star"] > 0
    assert counts["not_selected"] == wanted["heart"]
    for members in read_shards(out).values():
        for inst in json.loads(members["instances.json"])["instances"]:
            has_mask = inst["class_name"] in ("circle", "square")
            assert (inst["source"], inst["has_mask"]) == ("mask" if has_mask else "box", has_mask)


def test_class_lists_that_clash_are_usage_errors(
    shape_world: tuple[Path, Path], tmp_path: Path
) -> None:
    instances, images = shape_world
    out = tmp_path / "out"
    paths = ["--instances", str(instances), "--images", str(images), "--output", str(out)]
    cases = [
        (
            ["--class-split", "all", "--base-classes", "circle"],
            "--class-split all and --base-classes",
        ),
        (["--novel-classes", "star"], "--novel-classes star needs --base-classes"),
        (["--base-classes", "circle,,star"], "'circle,,star' holds an empty name"),
        (["--base-classes", "circle", "--novel-classes", "star,star"], r"repeats ['star']"),
        (["--base-classes", "circle,star", "--novel-classes", "star,square"],
         "classes ['star'] are both base and novel classes"),
        (["--base-classes", "person", "--novel-classes", "dog"], "no category"),
    ]  # fmt: skip
    for argv, message in cases:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                status = b.run(["--runner", "FnApiRunner", *paths, *argv])
            except SystemExit as exc:  # argparse's own usage errors
                status = exc.code
        assert status == 2 and message in err.getvalue(), (argv, err.getvalue())
        assert not out.exists()


def test_a_second_run_is_byte_identical(
    voc_run: Path, coco_inputs: CocoInputs, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    # The old spelling --split still works, with a note; --quiet: no progress, same bytes.
    status, _, err = build(
        "--instances", str(coco_inputs.instances), "--images", str(coco_inputs.images),
        "--output", str(out), "--split", "coco_voc", "--shard-size", "4", "--quiet",
    )  # fmt: skip
    assert status == 0, err
    assert "--split is now spelled --class-split" in err
    assert "build_coco_shards: images" not in err
    first, second = tree_bytes(voc_run), tree_bytes(out)
    assert first.keys() == second.keys()
    assert first == second
    assert not [name for name in first if ".tmp-" in name]


def test_existing_output_is_refused_then_overwritten(
    voc_run: Path, coco_inputs: CocoInputs, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(voc_run, out)
    argv = [
        "--instances", str(coco_inputs.instances), "--images", str(coco_inputs.images),
        "--output", str(out), "--class-split", "coco_voc", "--shard-size", "100",
    ]  # fmt: skip
    status, _, err = build(*argv)
    assert status == 2 and "--overwrite" in err
    (out / "notes.txt").write_text("mine")
    status, _, err = build(*argv, "--overwrite")
    assert status == 0, err
    assert [p.name for p in (out / "shards").iterdir()] == ["shard-000000.tar"]
    assert (out / "notes.txt").read_text() == "mine"

    alp_run = tmp_path / "alp_run"
    (alp_run / "alps").mkdir(parents=True)
    status, _, err = build(*argv[:4], "--output", str(alp_run), "--overwrite")
    assert status == 2 and "ALP curation run" in err


def test_launcher_refuses_bad_inputs_before_any_work(
    coco_inputs: CocoInputs, tmp_path: Path
) -> None:
    images = str(coco_inputs.images)
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[1, 2]")
    instances = str(coco_inputs.instances)
    cases = [
        (["--instances", str(tmp_path / "none.json"), "--images", images], "matches 0 files"),
        (["--instances", str(not_coco), "--images", images], "expected a JSON object"),
        (["--instances", instances, "--images", str(tmp_path / "nowhere")], "no such folder"),
    ]
    for argv, message in cases:
        status, _, err = build(*argv, "--output", str(tmp_path / "out"))
        assert status == 2 and message in err, err
        assert not (tmp_path / "out").exists()
    status, _, err = build(
        "--instances", str(coco_inputs.instances), "--images", images,
        "--output", str(tmp_path / "out"), "--not-an-option", "1",
    )  # fmt: skip
    assert status == 2 and "--not_an_option" in err


def test_an_instances_file_that_is_not_coco_json_is_named_and_recognised(
    coco_inputs: CocoInputs, tmp_path: Path
) -> None:
    world = write_world(tmp_path / "world", 2, seed=1)
    one_line = tmp_path / "one.jsonl"
    one_line.write_bytes(world.narratives.read_bytes().splitlines()[0] + b"\n")
    not_json = tmp_path / "notes.json"
    not_json.write_text('{"images": nope}')
    cases = [
        (world.narratives, "looks like Localized Narratives JSONL"),  # many lines: not JSON
        (one_line, "looks like Localized Narratives JSONL"),  # one line: JSON, not COCO
        (not_json, f"{not_json} is not JSON (JSONDecodeError: Expecting value"),
    ]
    for path, message in cases:
        status, _, err = build(
            "--instances", str(path), "--images", str(coco_inputs.images),
            "--output", str(tmp_path / "out"),
        )  # fmt: skip
        assert status == 2 and message in err and str(path) in err, err
        assert "Traceback" not in err and not (tmp_path / "out").exists()
        if "Localized Narratives" in message:
            assert f"curate it with pipelines/extract_alps.py --input {path}" in err


def test_a_run_whose_every_image_is_a_dead_letter_warns_and_can_fail(
    coco_inputs: CocoInputs, tmp_path: Path
) -> None:
    packed = tmp_path / "instances.json.gz"  # compressed instances are read by extension
    packed.write_bytes(gzip.compress(coco_inputs.instances.read_bytes(), mtime=0))
    empty = tmp_path / "wrong-folder"
    empty.mkdir()
    argv = ["--instances", str(packed), "--images", str(empty), "--class-split", "coco_voc"]
    status, _, err = build(*argv, "--output", str(tmp_path / "a"))
    assert status == 0
    assert "warning: every one of the" in err and f"is --images {empty}" in err
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    assert manifest_problems(manifest) == []
    images = manifest["counts"]["images"]
    assert images["dead_letters"] == images["total"] > 0
    status, _, err = build(*argv, "--output", str(tmp_path / "b"), "--fail-on-dead-letters", "0.5")
    assert status == 3 and "more than --fail-on-dead-letters 0.5 allows" in err
    assert (tmp_path / "b" / MANIFEST_NAME).exists()  # the outputs are complete all the same


def test_the_shards_feed_the_coco_dataset(voc_run: Path, coco_inputs: CocoInputs) -> None:
    from alp_dataset.datasets import CocoShardDataset

    manifest = json.loads((voc_run / MANIFEST_NAME).read_text())
    urls = [str(voc_run / f["path"]) for f in manifest["files"]["shards"]]
    dataset = CocoShardDataset(urls, keep_crowd=True, shuffle_buffer=0)
    samples = list(dataset)
    assert len(samples) == manifest["counts"]["images"]["samples"]
    assert dataset.error_counts() == {"bad_shards": 0, "bad_samples": 0}
    n = sum(len(t["phrases"]) for _, t in samples)
    assert n == manifest["counts"]["annotations"]["mask"]
    for image, target in samples:
        assert image.shape == (3, 256, 256)
        assert target["masks"].shape == (len(target["phrases"]), 256, 256)
        assert bool(target["has_mask"].all()) and not bool(target["is_alp"].any())


# ---------------------------------------------------------------------------------------------
# Segmentations -> RLE


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_rle_runs_read_back_what_pycocotools_writes(
    h: int, w: int, density: float, seed: int
) -> None:
    mask = np.random.default_rng(seed).random((h, w)) < density
    rle = encode_mask(mask)
    runs = rle_counts(rle["counts"])
    assert runs.sum() == h * w and runs[1::2].sum() == mask.sum()
    assert runs.tolist() == _uncompressed_rle(mask)["counts"]
    if mask.any():
        assert segmentation_to_rle(_uncompressed_rle(mask), h, w) == rle
        assert segmentation_to_rle(rle, h, w) == rle
    assert np.array_equal(decode_masks([rle], h, w)[0], mask)


def test_segmentation_to_rle_merges_polygons_and_names_what_is_wrong() -> None:
    square, triangle = [2, 2, 8, 2, 8, 8, 2, 8], [10, 10, 14, 10, 12, 14]
    rle = segmentation_to_rle([square, triangle, [1, 1, 2, 2]], 20, 30)  # the last: 2 points
    expected = mask_utils.merge(mask_utils.frPyObjects([square, triangle], 20, 30))
    assert rle == {"size": [20, 30], "counts": expected["counts"].decode()}
    cases = [
        ([[1, 2, 3]], "segmentation[0]", "odd number"),
        ([[1, 2, "3", 4, 5, 6]], "segmentation[0]", "finite numbers"),
        ([[1, 2, 3, 4]], "segmentation", "3 or more points"),
        ([[0, 0, 5, 0, 10, 0]], "segmentation", "empty"),  # a flat polygon covers nothing
        ([[0, 0, 1e9, 0, 1e9, 1e9]], "segmentation[0]", "beyond"),  # crashed pycocotools
        ([[0, 0, 5, -21, 5, 5]], "segmentation[0]", r"y coordinates span \[-21, 5\]"),
        ({"size": [20, 31], "counts": [600]}, "segmentation.size", "differs"),
        ({"size": [20, 30], "counts": [5, 10]}, "segmentation.counts", "runs cover 15"),
        ({"size": [20, 30], "counts": "Q"}, "segmentation.counts", "ends inside"),
        ({"size": [20, 30], "counts": "@@"}, "segmentation.counts", "negative"),
        ({"size": [20, 30], "counts": 7}, "segmentation.counts", "a list or a string"),
        ("polygon", "segmentation", "polygons or an RLE"),
    ]
    for segmentation, field, message in cases:
        with pytest.raises(RleError, match=message) as caught:
            segmentation_to_rle(segmentation, 20, 30)
        assert caught.value.field == field, segmentation


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes(
    voc_run: Path, coco_inputs: CocoInputs, tmp_path: Path
) -> None:
    """As a user runs it (python -m), in two worker processes: every DoFn and record pickles,
    and the output does not depend on the workers."""
    out = tmp_path / "mp"
    done = subprocess.run(
        [
            sys.executable, "-m", "pipelines.build_coco_shards",
            "--instances", str(coco_inputs.instances), "--images", str(coco_inputs.images),
            "--output", str(out), "--class-split", "coco_voc", "--shard-size", "4",
            "--direct_num_workers", "2", "--direct_running_mode", "multi_processing",
        ],
        capture_output=True, text=True, timeout=300, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert tree_bytes(out) == tree_bytes(voc_run)
