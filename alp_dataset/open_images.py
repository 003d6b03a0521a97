"""Open Images files as plain data: column layouts, the class descriptions, the class hierarchy.

The files a user downloads with Open Images (all CSV with a header row unless noted; the formats of
https://storage.googleapis.com/openimages/web/download.html):

- class descriptions, no header (``/m/01bjv,Bus``): `read_class_descriptions`. v6's
  ``oidv6-class-descriptions.csv`` starts with a ``LabelName,DisplayName`` header; it is skipped.
- the class hierarchy JSON (``challenge-2019-label300-segmentable-hierarchy.json``): nested
  objects ``{"LabelName": mid, "Subcategory": [...]}`` under a root that is not a class (the
  challenge's expansion tool skips it); "Part" lists are part-of relations, not kinds, and are
  not expanded. `Hierarchy`.
- instance segmentations: `SEGMENTATION_COLUMNS`, one row per mask PNG (``MaskPath``).
- human-verified image-level labels: `IMAGE_LABEL_COLUMNS`, Confidence 1 (present) or 0
  (verified absent).
- boxes: `BOX_COLUMNS`, coordinates normalised to the image.

Parsing rows of the three annotation files is the pipeline's (`pipelines.oid`); what is here is
shared by the pipeline, the class splits and the evaluation.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "BOX_COLUMNS",
    "CLASS_DESCRIPTION_COLUMNS",
    "IMAGE_LABEL_COLUMNS",
    "LABEL_NAME_PATTERN",
    "SEGMENTATION_COLUMNS",
    "Hierarchy",
    "OidClass",
    "OpenImagesFormatError",
    "csv_lines",
    "load_hierarchy",
    "parse_hierarchy",
    "read_class_descriptions",
]

CLASS_DESCRIPTION_COLUMNS = ("LabelName", "DisplayName")
SEGMENTATION_COLUMNS = (
    "MaskPath",
    "ImageID",
    "LabelName",
    "BoxID",
    "BoxXMin",
    "BoxXMax",
    "BoxYMin",
    "BoxYMax",
    "PredictedIoU",
    "Clicks",
)
IMAGE_LABEL_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")
BOX_COLUMNS = (
    "ImageID",
    "Source",
    "LabelName",
    "Confidence",
    "XMin",
    "XMax",
    "YMin",
    "YMax",
    "IsOccluded",
    "IsTruncated",
    "IsGroupOf",
    "IsDepiction",
    "IsInside",
)
# Freebase machine ids ("/m/01bjv") and Knowledge Graph ids ("/g/11bc5z7gx").
LABEL_NAME_PATTERN = re.compile(r"/[mg]/[0-9a-z_]+")


class OpenImagesFormatError(ValueError):
    """A class descriptions or hierarchy file that is not in Open Images' format (the message
    names the file, the line or path in it, and what was expected)."""


def csv_lines(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, line, cells) of each non-blank line of CSV text, line numbers from 1.

    Open Images' CSV files hold one record per line (no quoted newlines), so each line is read on
    its own: a line with an unclosed quote gives an error naming it instead of swallowing the
    lines after it. A UTF-8 byte order mark is dropped.
    """
    text = text.removeprefix("\ufeff")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.count('"') % 2:
            raise OpenImagesFormatError(f"line {number}: unbalanced quote in {line!r}")
        yield number, line, next(csv.reader(io.StringIO(line)))


@dataclass(frozen=True)
class OidClass:
    """One row of a class descriptions file."""

    label_name: str  # "/m/01bjv"
    display_name: str  # "Bus"
    line: int  # line number in the file (1-based)


def read_class_descriptions(text: str, source: str) -> tuple[OidClass, ...]:
    """The classes of a class descriptions file (``LabelName,DisplayName``, no header; a v6
    header row is skipped), in file order.

    Raises OpenImagesFormatError naming ``source``, the line and the column: not two cells, a
    LabelName that is no /m/ or /g/ id, an empty DisplayName, a repeated LabelName or
    DisplayName, no classes at all.
    """
    classes: list[OidClass] = []
    by_label: dict[str, int] = {}
    by_name: dict[str, int] = {}
    try:
        for number, line, cells in csv_lines(text):
            where = f"{source}, line {number}"
            if [c.strip() for c in cells] == list(CLASS_DESCRIPTION_COLUMNS) and not classes:
                continue  # oidv6-class-descriptions.csv has a header
            if len(cells) != 2:
                raise OpenImagesFormatError(
                    f"{where}: expected 2 cells (LabelName,DisplayName, e.g. /m/01bjv,Bus), got "
                    f"{len(cells)} in {line!r}"
                )
            label, name = (c.strip() for c in cells)
            if not LABEL_NAME_PATTERN.fullmatch(label):
                raise OpenImagesFormatError(
                    f"{where}, column LabelName: {label!r} is not an Open Images label id "
                    "(/m/... or /g/...)"
                )
            if not name:
                raise OpenImagesFormatError(f"{where}, column DisplayName: empty")
            if label in by_label:
                raise OpenImagesFormatError(
                    f"{where}, column LabelName: {label} repeats line {by_label[label]}"
                )
            if name in by_name:
                raise OpenImagesFormatError(
                    f"{where}, column DisplayName: {name!r} repeats line {by_name[name]}"
                )
            by_label[label], by_name[name] = number, number
            classes.append(OidClass(label, name, number))
    except OpenImagesFormatError as exc:
        message = str(exc)
        raise OpenImagesFormatError(
            message if message.startswith(source) else f"{source}, {message}"
        ) from None
    if not classes:
        raise OpenImagesFormatError(f"{source}: no classes (an empty file)")
    return tuple(classes)


@dataclass(frozen=True)
class Hierarchy:
    """A class hierarchy: each label's parents (a label may have several), root left out.

    ``ancestors`` and ``descendants`` follow the challenge's expansion: ground-truth boxes, masks
    and positive image-level labels are expanded to every ancestor, negative image-level labels
    to every descendant (tensorflow/models, oid_hierarchical_labels_expansion.py).
    """

    parents: Mapping[str, tuple[str, ...]]
    root: str = ""
    _ancestors: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        parents = {k: tuple(sorted(set(v))) for k, v in self.parents.items()}
        object.__setattr__(self, "parents", MappingProxyType(parents))
        self._ancestors.clear()
        for label in parents:
            self._ancestors[label] = self._walk(label, ())

    def __reduce__(self) -> tuple[object, ...]:
        return (Hierarchy, (dict(self.parents), self.root))

    def _walk(self, label: str, path: tuple[str, ...]) -> tuple[str, ...]:
        if label in path:
            raise OpenImagesFormatError(f"hierarchy: a cycle through {' -> '.join((*path, label))}")
        found: set[str] = set()
        for parent in self.parents.get(label, ()):
            found.add(parent)
            found.update(self._walk(parent, (*path, label)))
        return tuple(sorted(found))

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label of the hierarchy (root left out), sorted."""
        return tuple(sorted(self.parents))

    def ancestors(self, label: str) -> tuple[str, ...]:
        """Every label above ``label`` (sorted; () for a label outside the hierarchy)."""
        return self._ancestors.get(label, ())

    def descendants(self, label: str) -> tuple[str, ...]:
        """Every label below ``label`` (sorted)."""
        return tuple(sorted(k for k, up in self._ancestors.items() if label in up))

    def to_json(self) -> dict[str, Any]:
        """{"root", "parents": {label: [parents]}}: what a manifest records."""
        return {"root": self.root, "parents": {k: list(v) for k, v in sorted(self.parents.items())}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Hierarchy:
        """The inverse of `to_json`."""
        return cls({str(k): tuple(v) for k, v in doc["parents"].items()}, str(doc.get("root", "")))


def parse_hierarchy(doc: Any, source: str) -> Hierarchy:
    """The `Hierarchy` of an Open Images hierarchy JSON document.

    The top object is the root (``/m/0bl9f``, "Entity", in the released files): it is no class
    and is left out, as the challenge's expansion tool does. Raises OpenImagesFormatError naming
    ``source`` and the JSON path of a node without a LabelName id, a Subcategory that is not a
    list, or a cycle.
    """
    parents: dict[str, set[str]] = {}

    def children_of(node: Any, path: str) -> list[Any]:
        if not isinstance(node, dict):
            raise OpenImagesFormatError(f"{source}: {path}: expected an object")
        label = node.get("LabelName")
        if not (isinstance(label, str) and LABEL_NAME_PATTERN.fullmatch(label)):
            raise OpenImagesFormatError(
                f"{source}: {path}.LabelName: expected an Open Images label id, got {label!r}"
            )
        children = node.get("Subcategory", [])
        if not isinstance(children, list):
            raise OpenImagesFormatError(f"{source}: {path}.Subcategory: expected a list")
        return children

    def visit(node: Any, path: str, parent: str | None) -> None:
        children = children_of(node, path)
        label = node["LabelName"]
        parents.setdefault(label, set()).update([parent] if parent else [])
        for i, child in enumerate(children):
            visit(child, f"{path}.Subcategory[{i}]", label)

    for i, child in enumerate(children_of(doc, "$")):
        visit(child, f"$.Subcategory[{i}]", None)  # the root's children have no parent class
    try:
        return Hierarchy({k: tuple(v) for k, v in parents.items()}, str(doc["LabelName"]))
    except OpenImagesFormatError as exc:
        raise OpenImagesFormatError(f"{source}: {exc}") from None


def load_hierarchy(path: str | Path) -> Hierarchy:
    """`parse_hierarchy` of a local JSON file; OpenImagesFormatError for one that is not JSON."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise OpenImagesFormatError(f"{path} is not JSON ({exc})") from None
    return parse_hierarchy(doc, str(path))
