"""What an input file looks like, from its first bytes: to name the wrong file when a job gets one.

A Localized Narratives file given to `build_coco_shards`, or a COCO instances file given to
`extract_alps`, would otherwise end as a JSON error or as every line a dead letter. `kind_of`
recognises the two formats (and UTF-16 text, which no JSONL reader takes) by their first bytes
only (`pipelines.io.read_head`), so a file of gigabytes costs one small read. Pure: no Beam.
"""

from __future__ import annotations

import re

from alp_curation.streams import BOM

__all__ = ["COCO_INSTANCES", "HEAD_BYTES", "LOCNAR_JSONL", "UTF16", "kind_of"]

HEAD_BYTES = 1 << 16

LOCNAR_JSONL = "Localized Narratives JSONL"
COCO_INSTANCES = "COCO instances JSON"
UTF16 = "UTF-16 text"

# A LocNar record's own keys; the official files start every line with the first three.
_LOCNAR_KEYS = (b"dataset_id", b"image_id", b"annotator_id", b"timed_caption", b"traces")
# The top-level arrays of a COCO instances file ("images" and "annotations" come first in COCO's
# own files, "categories" last).
_COCO_ARRAY = re.compile(rb'"(images|annotations|categories)"\s*:\s*\[')


def _has_key(text: bytes, key: bytes) -> bool:
    return re.search(rb'"' + key + rb'"\s*:', text) is not None


def kind_of(head: bytes) -> str | None:
    """`LOCNAR_JSONL`, `COCO_INSTANCES` or `UTF16` when the first bytes of a file read like one,
    else None."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return UTF16
    text = head.removeprefix(BOM).lstrip()
    if not text.startswith(b"{"):
        return None
    first_line = text.split(b"\n", 1)[0]
    if sum(_has_key(first_line, key) for key in _LOCNAR_KEYS) >= 2:
        return LOCNAR_JSONL
    if _COCO_ARRAY.search(text):
        return COCO_INSTANCES
    return None
