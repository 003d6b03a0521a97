from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest

from alp_curation.phrases import load_stuff_names
from alp_dataset.class_splits import (
    COCO80,
    COCO_CATEGORY_IDS,
    COCO_NONVOC60,
    COCO_STUFF91,
    COCO_STUFF_CATEGORY_IDS,
    COCO_VOC20,
    COCO_ZSD_SEEN48,
    COCO_ZSD_UNSEEN17,
    SPLIT_NAMES,
    ClassSplit,
    get_split,
    open_images_split,
)

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "class_splits.json"


def test_counts() -> None:
    assert len(COCO80) == 80
    assert len(COCO_VOC20) == 20
    assert len(COCO_NONVOC60) == 60
    assert len(COCO_ZSD_SEEN48) == 48
    assert len(COCO_ZSD_UNSEEN17) == 17
    assert len(COCO_STUFF91) == 91
    for names in (COCO80, COCO_VOC20, COCO_NONVOC60, COCO_ZSD_SEEN48, COCO_ZSD_UNSEEN17):
        assert len(set(names)) == len(names)


def test_voc_and_nonvoc_partition_coco() -> None:
    assert not set(COCO_VOC20) & set(COCO_NONVOC60)
    assert set(COCO_VOC20) | set(COCO_NONVOC60) == set(COCO80)
    # The MaskX R-CNN split, as contiguous indices over the 80 classes.
    voc_indices = (0, 1, 2, 3, 4, 5, 6, 8, 14, 15, 16, 17, 18, 19, 39, 56, 57, 58, 60, 62)
    assert tuple(COCO80[i] for i in voc_indices) == COCO_VOC20


def test_zsd_split_is_disjoint_inside_coco() -> None:
    assert not set(COCO_ZSD_SEEN48) & set(COCO_ZSD_UNSEEN17)
    assert set(COCO_ZSD_SEEN48) | set(COCO_ZSD_UNSEEN17) <= set(COCO80)
    assert {"dog", "cat", "umbrella", "couch"} <= set(COCO_ZSD_UNSEEN17)
    assert len(set(COCO80) - set(COCO_ZSD_SEEN48) - set(COCO_ZSD_UNSEEN17)) == 15


def test_coco_category_ids_follow_the_annotation_files() -> None:
    assert tuple(COCO_CATEGORY_IDS) == COCO80
    ids = list(COCO_CATEGORY_IDS.values())
    assert ids == sorted(ids)
    assert ids[0] == 1 and ids[-1] == 90
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    known = {"person": 1, "stop sign": 13, "backpack": 27, "wine glass": 46, "dining table": 67}
    known |= {"toilet": 70, "tv": 72, "book": 84, "toothbrush": 90}
    assert {name: COCO_CATEGORY_IDS[name] for name in known} == known
    with pytest.raises(TypeError):
        COCO_CATEGORY_IDS["person"] = 2  # type: ignore[index]


def test_coco_stuff_matches_the_curation_list() -> None:
    assert COCO_STUFF91 == load_stuff_names()
    assert COCO_STUFF_CATEGORY_IDS["banner"] == 92
    assert COCO_STUFF_CATEGORY_IDS["wood"] == 182
    assert not set(COCO_STUFF91) & set(COCO80)


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared reference files not checked out")
def test_data_file_agrees_with_the_reference() -> None:
    reference = json.loads(REFERENCE.read_text())
    assert reference["coco80"] == list(COCO80)
    assert reference["coco_voc20"] == list(COCO_VOC20)
    assert reference["coco_zsd_unseen17"] == list(COCO_ZSD_UNSEEN17)
    assert reference["coco_stuff91"] == list(COCO_STUFF91)


@pytest.mark.parametrize(
    ("name", "n_base", "n_novel"),
    [("coco_voc", 20, 60), ("coco_nonvoc", 60, 20), ("coco_zsd_48_17", 48, 17)],
)
def test_get_split(name: str, n_base: int, n_novel: int) -> None:
    split = get_split(name)
    assert split.name == name
    assert (len(split.base), len(split.novel)) == (n_base, n_novel)
    assert split.classes == split.base + split.novel
    assert all(split.is_base(c) for c in split.base)
    assert not any(split.is_base(c) for c in split.novel)
    assert split.index(split.novel[0]) == n_base


def test_voc_and_nonvoc_are_reverse_directions() -> None:
    voc, nonvoc = get_split("coco_voc"), get_split("coco_nonvoc")
    assert voc.base == nonvoc.novel == COCO_VOC20
    assert voc.novel == nonvoc.base == COCO_NONVOC60
    assert voc.is_base("person") and not nonvoc.is_base("person")
    assert nonvoc.is_novel("person")


def test_split_errors() -> None:
    assert SPLIT_NAMES == ("coco_voc", "coco_nonvoc", "coco_zsd_48_17")
    with pytest.raises(ValueError, match="unknown class split 'voc'"):
        get_split("voc")
    zsd = get_split("coco_zsd_48_17")
    # "hair drier" is a COCO class in neither part of the zero-shot split: an error, not "novel".
    with pytest.raises(KeyError, match="hair drier"):
        zsd.is_base("hair drier")
    with pytest.raises(KeyError, match="hair drier"):
        zsd.index("hair drier")
    with pytest.raises(ValueError, match="both base and novel"):
        ClassSplit("bad", base=("cat", "dog"), novel=("dog",))
    with pytest.raises(ValueError, match="repeats"):
        ClassSplit("bad", base=("cat", "cat"), novel=())
    with pytest.raises(dataclasses.FrozenInstanceError):
        zsd.name = "other"  # type: ignore[misc]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "classes.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_open_images_split_reads_base_and_novel(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "display_name,mid,coco_name\n"
        "Man,/m/04yx4,person\n"
        "Woman,/m/03bt1vf, person \n"
        "\n"
        "Jellyfish,/m/0d8zb,\n"
        "Dog,,dog\n"
        "Tortoise,,\n",
    )
    oi = open_images_split(path)
    assert oi.split.name == "open_images"
    assert oi.split.base == ("Man", "Woman", "Dog")
    assert oi.split.novel == ("Jellyfish", "Tortoise")
    assert dict(oi.to_coco) == {"Man": "person", "Woman": "person", "Dog": "dog"}
    assert dict(oi.mids) == {"Man": "/m/04yx4", "Woman": "/m/03bt1vf", "Jellyfish": "/m/0d8zb"}
    assert oi.split.is_base("Dog") and not oi.split.is_base("Jellyfish")
    assert pickle.loads(pickle.dumps(oi)) == oi
    with pytest.raises(TypeError):
        oi.to_coco["Cat"] = "cat"  # type: ignore[index]


def test_open_images_split_optional_columns(tmp_path: Path) -> None:
    oi = open_images_split(_write(tmp_path, "display_name\nJellyfish\nTortoise\n"), name="oi")
    assert oi.split.name == "oi"
    assert oi.split.base == ()
    assert oi.split.novel == ("Jellyfish", "Tortoise")
    assert not oi.to_coco and not oi.mids


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "display_name,coco_name\nDog,doggo\n",
            r"line 2, column 'coco_name': 'doggo' is not a COCO",
        ),
        ("display_name,coco_name\nCouch,Couch\n", r"'Couch' is not a COCO class; did you mean"),
        ("display_name,coco_name\nDog,dog\n,cat\n", r"line 3, column 'display_name': empty"),
        ("display_name\nDog\nCat\nDog\n", r"line 4, column 'display_name': 'Dog' repeats line 2"),
        ("display_name,mid\nDog,/m/1\nCat,/m/1\n", r"line 3, column 'mid': '/m/1' repeats line 2"),
        ("name,coco_name\nDog,dog\n", r"unknown column\(s\) \['name'\]"),
        ("mid\n/m/1\n", r"missing column 'display_name'"),
        ("display_name,mid\nDog,/m/1,dog\n", r"line 2: more cells than the 2 columns"),
        ("display_name,mid,coco_name\n", r"no classes"),
        ("", r"missing column 'display_name'"),
    ],
)
def test_open_images_split_bad_rows(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=match) as info:
        open_images_split(path)
    assert str(path) in str(info.value)
