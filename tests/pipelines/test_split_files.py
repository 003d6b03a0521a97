"""``--class-split PATH.csv`` in pipelines/build_coco_shards.py: a CSV of Open Images classes
keeps the masks of the COCO classes its base classes come from, and the run says what it
matched."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from alp_dataset.synthetic import write_world
from pipelines import build_coco_shards

# Shape class -> COCO class, as tests/pipelines/test_build_coco_shards.py renames them.
RENAME = {"circle": "person", "square": "dog", "triangle": "car", "star": "cell phone"}


@pytest.mark.slow
def test_coco_shards_from_an_open_images_class_list(tmp_path: Path) -> None:
    world = write_world(tmp_path / "world", 4, seed=2, classes=tuple(RENAME), image_size=(64, 64))
    assert world.images is not None
    doc = json.loads(world.instances.read_text())
    for category in doc["categories"]:
        category["name"] = RENAME[category["name"]]
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps(doc))
    classes = tmp_path / "oid_classes.csv"  # Open Images class descriptions, no header
    classes.write_text("/m/01g317,Person\n/m/050k8,Mobile phone\n/m/0dzct,Human face\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = build_coco_shards.run([
            "--runner", "FnApiRunner", "--instances", str(instances),
            "--images", str(world.images), "--output", str(tmp_path / "out"),
            "--class-split", str(classes), "--mask-classes", "base",
        ])  # fmt: skip
    assert status == 0, err.getvalue()
    assert "2 base (from COCO), 1 novel" in err.getvalue()
    assert "Mobile phone <- cell phone" in err.getvalue()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["classes"]["mask"] == ["cell phone", "person"]
    assert manifest["classes"]["not_selected"] == ["car", "dog"]
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        build_coco_shards.run(["--class-split", "coco_vocc", "--instances", "x", "--images", "y"])
