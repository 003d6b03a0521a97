"""A synthetic world of shapes with masks and Localized Narratives about them.

Deterministic from a seed; backs the demo, the tests, the benchmarks and training experiments:
base classes come with COCO masks, novel classes with only narratives. Each image holds 1-4
textured shapes of named classes on a background scene; each narrative names every object once
("a big red circle") while its mouse trace scribbles over it, and keeps the ground truth (which
phrase names which object, where and when) for measuring the quality of curated ALPs.

    from alp_dataset.synthetic import make_world, write_world
    for sample in make_world(100, seed=0):
        sample.narrative   # LocNar JSON dict
        sample.mentions    # ground truth per named object
        sample.render()    # uint8 (H, W, 3), only when pixels are wanted

Command line: `python -m alp_dataset.synthetic --output DIR --n-images N --seed S`; with
``--open-images`` the annotations are written in Open Images' formats as well
(`alp_dataset.synthetic.oid_export.write_oid_world`).
"""

from __future__ import annotations

from alp_dataset.synthetic.export import (
    WorldPaths,
    coco_annotation,
    coco_instances,
    ground_truth_record,
    write_world,
)
from alp_dataset.synthetic.records import (
    Background,
    Mention,
    Narration,
    SyntheticObject,
    SyntheticSample,
)
from alp_dataset.synthetic.shapes import COLOURS, DEFAULT_CLASSES, category_id
from alp_dataset.synthetic.world import DATASET_ID, make_sample, make_world

__all__ = [
    "COLOURS",
    "DATASET_ID",
    "DEFAULT_CLASSES",
    "Background",
    "Mention",
    "Narration",
    "SyntheticObject",
    "SyntheticSample",
    "WorldPaths",
    "category_id",
    "coco_annotation",
    "coco_instances",
    "ground_truth_record",
    "make_sample",
    "make_world",
    "write_world",
]
