"""What evaluating on Open Images shards needs beyond the COCO path: the class table and the
hierarchy of the shards' manifest, and each image's verified labels as category ids.

    manifest = find_oid_manifest(["out/oid_val"])          # None for COCO shards
    table = OidClassTable.from_manifest(manifest)           # or hierarchy=load_hierarchy(path)
    table.image_labels({"positive": ["/m/01bjv"], "negative": []})   # -> ImageLabels
    oid_mask_ap50(gt, dets, ..., hierarchy=table.ancestors)

Category ids are those of the shards (the classes' positions in the --classes file of
`pipelines/build_oid_shards.py`); a class of the hierarchy outside the shards' classes has no
id, and expansion stops at the kept classes (a detection can only name a kept class).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from alp_dataset.oid_shards import OID_SHARDS_FORMAT
from alp_dataset.open_images import Hierarchy
from alp_dataset.schema import MANIFEST_NAME
from models.evaluation.open_images import ImageLabels

__all__ = ["OidClassTable", "find_oid_manifest"]


@dataclass(frozen=True)
class OidClassTable:
    """The kept classes of Open Images shards, and their hierarchy in category ids.

    Attributes:
        category_ids: DisplayName -> category id.
        label_names: category id -> LabelName.
        ancestors: category id -> the category ids of its ancestors among the kept classes.
    """

    category_ids: Mapping[str, int]
    label_names: Mapping[int, str]
    ancestors: Mapping[int, tuple[int, ...]]

    def __post_init__(self) -> None:
        for name in ("category_ids", "label_names", "ancestors"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def by_label(self) -> dict[str, int]:
        return {label: c for c, label in self.label_names.items()}

    @classmethod
    def from_manifest(
        cls, manifest: Mapping[str, Any], hierarchy: Hierarchy | None = None
    ) -> OidClassTable:
        """The table of an Open Images shards manifest; ``hierarchy`` replaces the one the
        manifest recorded (none recorded and none given: no expansion)."""
        if manifest.get("format") != OID_SHARDS_FORMAT:
            raise ValueError(
                f"not an Open Images shards manifest (format {manifest.get('format')})"
            )
        kept = manifest["classes"]["kept"]
        category_ids = {k["display_name"]: int(k["category_id"]) for k in kept}
        label_names = {int(k["category_id"]): k["label_name"] for k in kept}
        if hierarchy is None and manifest.get("hierarchy"):
            hierarchy = Hierarchy.from_json(manifest["hierarchy"])
        by_label = {label: c for c, label in label_names.items()}
        ancestors: dict[int, tuple[int, ...]] = {}
        if hierarchy is not None:
            for label, c in by_label.items():
                ups = [by_label[a] for a in hierarchy.ancestors(label) if a in by_label]
                if ups:
                    ancestors[c] = tuple(sorted(ups))
        return cls(category_ids, label_names, ancestors)

    def image_labels(self, labels: Mapping[str, Iterable[str]]) -> ImageLabels:
        """A sample's ``image_labels`` (LabelNames) as category ids; labels of classes outside
        the table are left out (the pipeline keeps none)."""
        by_label = self.by_label
        return ImageLabels(
            positive=frozenset(by_label[x] for x in labels.get("positive", ()) if x in by_label),
            negative=frozenset(by_label[x] for x in labels.get("negative", ()) if x in by_label),
        )


def _manifest_at(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return manifest if manifest.get("format") == OID_SHARDS_FORMAT else None


def find_oid_manifest(specs: Sequence[str]) -> dict[str, Any] | None:
    """The Open Images manifest of ``--shards`` values: an output folder's, or the one two
    folders above a local shard pattern (``out/shards/shard-{...}.tar``). None when no value is
    an Open Images output; ValueError when values mix outputs of different class tables."""
    found: list[dict[str, Any]] = []
    for spec in specs:
        for part in spec.split("::"):
            folder = Path(part)
            candidate = folder if folder.is_dir() else folder.parent.parent
            manifest = _manifest_at(candidate) if "://" not in part else None
            if manifest is not None:
                found.append(manifest)
    if not found:
        return None
    tables = {json.dumps(m["classes"]["kept"], sort_keys=True) for m in found}
    if len(tables) > 1:
        raise ValueError("--shards: Open Images outputs with different class tables")
    return found[0]
