"""Tests for the Open Images formats (alp_dataset/open_images.py), the COCO <-> Open Images
correspondence and splits from CSV files (alp_dataset/oid_classes.py, class_splits), the mask PNG
conversion and manifest checks (alp_dataset/oid_shards.py), and the synthetic world's export."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from alp_dataset.class_splits import COCO80, get_coco_split, get_split, is_split_file
from alp_dataset.coco_shards import RleError
from alp_dataset.oid_classes import (
    coco_split,
    format_matches,
    load_correspondence,
    main,
    match_classes,
    split_from_csv,
)
from alp_dataset.oid_shards import mask_png_to_rle
from alp_dataset.open_images import (
    Hierarchy,
    OidClass,
    OpenImagesFormatError,
    parse_hierarchy,
    read_class_descriptions,
)
from alp_dataset.synthetic.oid_export import oid_label_name, write_oid_world

# An excerpt in the layout of challenge-2019-classes-description-segmentable.csv (no header).
CLASSES = "/m/01g317,Person\n/m/050k8,Mobile phone\n/m/04rmv,Mouse\n/m/0dzct,Human face\n"


def test_class_descriptions_in_both_real_layouts() -> None:
    classes = read_class_descriptions(CLASSES, "c.csv")
    assert classes[1] == OidClass("/m/050k8", "Mobile phone", 2)
    with_header = read_class_descriptions("LabelName,DisplayName\n" + CLASSES, "v6.csv")
    assert [c.label_name for c in with_header] == [c.label_name for c in classes]
    quoted = read_class_descriptions('/m/0hf58v5,"Luggage, and bags"\n', "q.csv")
    assert quoted[0].display_name == "Luggage, and bags"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Person,/m/01g317\n", "line 1, column LabelName: 'Person' is not an Open Images"),
        ("/m/01g317,Person,extra\n", "line 1: expected 2 cells"),
        ("/m/01g317,Person\n/m/01g317,Man\n", "line 2, column LabelName: /m/01g317 repeats line 1"),
        ("/m/01g317,Person\n/m/04yx4,Person\n", "line 2, column DisplayName: 'Person' repeats"),
        ("/m/01g317,\n", "line 1, column DisplayName: empty"),
        ('/m/01g317,"Person\n', "line 1: unbalanced quote"),
        ("\n\n", "no classes"),
    ],
)
def test_class_description_errors_name_file_line_and_column(text: str, message: str) -> None:
    with pytest.raises(OpenImagesFormatError, match=message) as info:
        read_class_descriptions(text, "classes.csv")
    assert str(info.value).startswith("classes.csv")


def test_hierarchy_ancestors_descendants_root_and_parts() -> None:
    doc = {
        "LabelName": "/m/0bl9f",  # the root, no class
        "Subcategory": [
            {"LabelName": "/m/0a", "Subcategory": [
                {"LabelName": "/m/0b", "Subcategory": [{"LabelName": "/m/0c"}]}]},
            {"LabelName": "/m/0d", "Subcategory": [{"LabelName": "/m/0c"}],  # two parents
             "Part": [{"LabelName": "/m/0e"}]},  # part-of: not expanded
        ],
    }  # fmt: skip
    h = parse_hierarchy(doc, "h.json")
    assert h.root == "/m/0bl9f"
    assert h.labels == ("/m/0a", "/m/0b", "/m/0c", "/m/0d")
    assert h.ancestors("/m/0c") == ("/m/0a", "/m/0b", "/m/0d")
    assert h.ancestors("/m/0a") == () and h.ancestors("/m/0e") == ()
    assert h.descendants("/m/0a") == ("/m/0b", "/m/0c")
    assert Hierarchy.from_json(json.loads(json.dumps(h.to_json()))) == h
    with pytest.raises(OpenImagesFormatError, match=r"h.json: \$.Subcategory\[0\].LabelName"):
        parse_hierarchy({"LabelName": "/m/0bl9f", "Subcategory": [{"Name": "x"}]}, "h.json")
    with pytest.raises(OpenImagesFormatError, match="Subcategory: expected a list"):
        parse_hierarchy({"LabelName": "/m/0bl9f", "Subcategory": {}}, "h.json")
    cycle = {"LabelName": "/m/0r", "Subcategory": [{"LabelName": "/m/0x", "Subcategory": [
        {"LabelName": "/m/0y", "Subcategory": [{"LabelName": "/m/0x"}]}]}]}  # fmt: skip
    with pytest.raises(OpenImagesFormatError, match="cycle"):
        parse_hierarchy(cycle, "h.json")


def test_the_shipped_correspondence_is_checked_and_matches_by_name() -> None:
    pairs = load_correspondence()
    assert {p.coco_name for p in pairs} <= set(COCO80)
    assert {p.coco_name for p in pairs if p.relation != "different"} == set(COCO80)
    classes = read_class_descriptions(CLASSES + "/m/0k4j,Car\n/m/0ch_cf,  mobile PHONE\n", "c")
    matches = {m.display_name: (m.coco_name, m.relation) for m in match_classes(classes[:5])}
    assert matches == {
        "Person": ("person", "exact"),
        "Mobile phone": ("cell phone", "synonym"),
        "Mouse": (None, None),  # the animal: listed as "different"
        "Human face": (None, None),
        "Car": ("car", "exact"),
    }
    # case and spaces are ignored
    assert match_classes(classes[5:])[0].coco_name == "cell phone"


def test_bad_correspondence_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    header = "coco_name,oid_display_name,relation,note\n"
    for body, message in [
        ("phone,Mobile phone,synonym,\n", "line 2, column coco_name: 'phone' is not a COCO"),
        ("tv,Television,exactly,\n", "column relation"),
        ("tv,Television,exact,\n", "are not equal names"),
        ("tv,Television,synonym,\nlaptop,television,synonym,\n", "already paired on line 2"),
    ]:
        path.write_text(header + body)
        with pytest.raises(ValueError, match=message):
            load_correspondence(path)


def test_splits_from_both_csv_forms_and_the_override(tmp_path: Path, capsys) -> None:
    descriptions = tmp_path / "classes.csv"
    descriptions.write_text(CLASSES)
    assert is_split_file(str(descriptions)) and not is_split_file("coco_voc")
    split = get_split(str(descriptions))
    assert (split.base, split.novel) == (("Person", "Mobile phone"), ("Mouse", "Human face"))
    assert get_coco_split(str(descriptions)).base == ("cell phone", "person")
    classes = split_from_csv(descriptions)
    assert classes.mids["Mouse"] == "/m/04rmv"
    note = format_matches(classes, source="classes.csv")
    assert note.startswith("classes of classes.csv: 2 base (from COCO), 2 novel")
    assert "Mobile phone <- cell phone" in note
    # The override: write the result out, edit it, name the edited file.
    edited = tmp_path / "split.csv"
    assert main(["--classes", str(descriptions), "--output", str(edited)]) == 0
    assert "2 base (from COCO), 2 novel" in capsys.readouterr().out
    again = tmp_path / "again.csv"  # the old spelling still works, with a note
    assert main(["--classes", str(descriptions), "--out", str(again)]) == 0
    assert "--out is now spelled --output" in capsys.readouterr().err
    assert again.read_bytes() == edited.read_bytes()
    rows = list(csv.reader(edited.open()))
    assert rows[0] == ["display_name", "mid", "coco_name"]
    assert rows[1] == ["Person", "/m/01g317", "person"]
    rows[3][2] = "mouse"  # Mouse: the user says it is COCO's (computer) mouse after all
    with edited.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    overridden = get_split(str(edited))
    assert overridden.base == ("Person", "Mobile phone", "Mouse")
    assert coco_split(split_from_csv(edited)).base == ("cell phone", "mouse", "person")
    with pytest.raises(ValueError, match="no such file"):
        get_split(str(tmp_path / "missing.csv"))


def _png(mask: np.ndarray, mode: str = "1") -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert(mode).save(out, format="PNG")
    return out.getvalue()


def test_mask_pngs_of_any_size_become_rles_of_the_image() -> None:
    small = np.zeros((3, 4), bool)
    small[1, 2] = True
    for mode in ("1", "L"):
        rle = mask_png_to_rle(_png(small, mode), width=8, height=6)
        full = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        expected = np.zeros((6, 8), np.uint8)
        expected[2:4, 4:6] = 1  # nearest-neighbour, 2x
        assert rle["size"] == [6, 8] and np.array_equal(full, expected)
    with pytest.raises(RleError, match="no pixel set") as empty:
        mask_png_to_rle(_png(np.zeros((3, 4), bool)), 8, 6)
    assert empty.value.field == "mask"
    with pytest.raises(RleError, match="not an image") as garbage:
        mask_png_to_rle(b"\x89PNG garbage", 8, 6)
    assert garbage.value.field == "file"


def test_synthetic_world_in_open_images_format(tmp_path: Path) -> None:
    world = write_oid_world(tmp_path / "w", 6, seed=1, image_size=(80, 64))
    classes = read_class_descriptions(world.classes.read_text(), "classes")
    assert classes[-1] == OidClass(oid_label_name("polygon"), "Polygon", len(classes))
    hierarchy = parse_hierarchy(json.loads(world.hierarchy.read_text()), "h")
    assert hierarchy.ancestors(oid_label_name("square")) == (oid_label_name("polygon"),)
    with world.masks.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == world.counts["mask_rows"] > 0
    names = {n for z in world.mask_zips for n in zipfile.ZipFile(z).namelist()}
    assert names == {r["MaskPath"] for r in rows}
    first = rows[0]
    assert first["MaskPath"] == (
        f"{first['ImageID']}_{first['LabelName'].replace('/', '')}_{first['BoxID']}.png"
    )
    assert (world.images / f"{first['ImageID']}.png").is_file()
    with world.labels.open() as f:
        confidences = [r["Confidence"] for r in csv.DictReader(f)]
    assert confidences.count("0") == world.counts["negative_labels"] > 0
    again = write_oid_world(tmp_path / "w2", 6, seed=1, image_size=(80, 64))
    assert world.masks.read_bytes() == again.masks.read_bytes()
    assert [z.read_bytes() for z in world.mask_zips] == [z.read_bytes() for z in again.mask_zips]
