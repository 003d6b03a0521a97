"""Class splits as data: COCO's 80 classes and their ids, the base / novel splits, COCO-Stuff.

Both papers train on masks for *base* classes and evaluate on *novel* ones:

- ``coco_voc``: base = the 20 VOC classes, novel = the other 60 (MaskX R-CNN, Sec. 4.1, "voc →
  non-voc"; the ALP paper's Table 2).
- ``coco_nonvoc``: the reverse direction, base = the 60 non-VOC classes, novel = the 20 VOC ones.
- ``coco_zsd_48_17``: the 48 seen / 17 unseen zero-shot split (Bansal et al., used by OVR-CNN and
  the ALP paper's Table 4); the remaining 15 COCO classes are in neither part.
- Open Images: the user supplies the classes in a CSV (``open_images_split``); rows that name a
  COCO class are base classes, the rest novel. `get_split` also takes the path of such a CSV,
  or of Open Images' own class descriptions (`alp_dataset.oid_classes`).

The names live in ``data/class_splits.json`` (copied from the project's reference file, provenance
in its ``_sources`` entry). COCO category ids are derived, not typed in: the COCO paper lists 91
thing categories with id = position + 1, and 11 of them were never annotated, which is why the ids
of ``instances_*.json`` run from 1 to 90 with gaps (12, 26, 29, 30, 45, 66, 68, 69, 71, 83).

``ClassSplit.classes`` lists base classes first, then novel ones, so a model trained on the base
classes only uses a prefix of the label indices.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "COCO80",
    "COCO_CATEGORY_IDS",
    "COCO_NONVOC60",
    "COCO_STUFF91",
    "COCO_STUFF_CATEGORY_IDS",
    "COCO_VOC20",
    "COCO_ZSD_SEEN48",
    "COCO_ZSD_UNSEEN17",
    "OPEN_IMAGES_COLUMNS",
    "SPLIT_NAMES",
    "ClassSplit",
    "OpenImagesClasses",
    "get_coco_split",
    "get_split",
    "is_split_file",
    "open_images_split",
]

_DATA_FILE = "class_splits.json"


def _load() -> dict[str, object]:
    text = (files("alp_dataset") / "data" / _DATA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def _names(data: Mapping[str, object], key: str, count: int) -> tuple[str, ...]:
    names = tuple(data[key])  # type: ignore[arg-type]
    if len(names) != count or len(set(names)) != count:
        raise ValueError(f"{_DATA_FILE}: {key!r} must hold {count} distinct names")
    return names


_DATA = _load()

COCO80: tuple[str, ...] = _names(_DATA, "coco80", 80)
"""The 80 annotated COCO classes in category-id order (contiguous index 0-79)."""
_COCO91_PAPER: tuple[str, ...] = _names(_DATA, "coco91_paper", 91)
COCO_VOC20: tuple[str, ...] = _names(_DATA, "coco_voc20", 20)
COCO_NONVOC60: tuple[str, ...] = _names(_DATA, "coco_nonvoc60", 60)
COCO_ZSD_SEEN48: tuple[str, ...] = _names(_DATA, "coco_zsd_seen48", 48)
COCO_ZSD_UNSEEN17: tuple[str, ...] = _names(_DATA, "coco_zsd_unseen17", 17)
COCO_STUFF91: tuple[str, ...] = _names(_DATA, "coco_stuff91", 91)
"""COCO-Stuff's 91 stuff classes in label-id order (ids 92-182), in the dataset's own spelling."""

COCO_CATEGORY_IDS: Mapping[str, int] = MappingProxyType(
    {name: i + 1 for i, name in enumerate(_COCO91_PAPER) if name in COCO80}
)
"""COCO class name -> category id of the official annotation files (1-90, with gaps)."""
COCO_STUFF_CATEGORY_IDS: Mapping[str, int] = MappingProxyType(
    {name: 92 + i for i, name in enumerate(COCO_STUFF91)}
)

if tuple(COCO_CATEGORY_IDS) != COCO80:
    raise ValueError(f"{_DATA_FILE}: 'coco80' must be 'coco91_paper' minus unannotated classes")


@dataclass(frozen=True)
class ClassSplit:
    """Classes of one benchmark, divided into base (trained with masks) and novel ones.

    Attributes:
        name: the split's name, e.g. "coco_voc".
        base: base class names, in a fixed order.
        novel: novel class names, in a fixed order; disjoint from ``base``.
    """

    name: str
    base: tuple[str, ...]
    novel: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", tuple(self.base))
        object.__setattr__(self, "novel", tuple(self.novel))
        for part in ("base", "novel"):
            names: tuple[str, ...] = getattr(self, part)
            if not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"split {self.name!r}: {part} must hold non-empty strings")
            if len(set(names)) != len(names):
                dupes = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"split {self.name!r}: {part} repeats {dupes}")
        both = sorted(set(self.base) & set(self.novel))
        if both:
            raise ValueError(f"split {self.name!r}: {both} are both base and novel")

    @property
    def classes(self) -> tuple[str, ...]:
        """All classes: base first, then novel (label index = position)."""
        return self.base + self.novel

    def is_base(self, name: str) -> bool:
        """True for a base class, False for a novel one; KeyError for a name outside the split."""
        if name in self.base:
            return True
        if name in self.novel:
            return False
        raise KeyError(f"{name!r} is not a class of split {self.name!r}")

    def is_novel(self, name: str) -> bool:
        """True for a novel class, False for a base one; KeyError for a name outside the split."""
        return not self.is_base(name)

    def index(self, name: str) -> int:
        """Label index of a class (its position in ``classes``)."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a class of split {self.name!r}") from None


_SPLITS: Mapping[str, ClassSplit] = MappingProxyType(
    {
        "coco_voc": ClassSplit("coco_voc", base=COCO_VOC20, novel=COCO_NONVOC60),
        "coco_nonvoc": ClassSplit("coco_nonvoc", base=COCO_NONVOC60, novel=COCO_VOC20),
        "coco_zsd_48_17": ClassSplit(
            "coco_zsd_48_17", base=COCO_ZSD_SEEN48, novel=COCO_ZSD_UNSEEN17
        ),
    }
)
SPLIT_NAMES: tuple[str, ...] = tuple(_SPLITS)


def is_split_file(spec: str) -> bool:
    """Whether a split spec names a CSV file (``--split PATH.csv``) rather than a named split."""
    return spec not in _SPLITS and (spec.lower().endswith(".csv") or Path(spec).is_file())


def get_split(name: str) -> ClassSplit:
    """The named COCO split ("coco_voc", "coco_nonvoc", "coco_zsd_48_17"), or the split of a
    CSV file: an Open Images class list (`alp_dataset.oid_classes.split_from_csv`: class
    descriptions through the shipped COCO correspondence, or an explicit display_name,coco_name
    list)."""
    if is_split_file(name):
        from alp_dataset.oid_classes import split_from_csv  # imports this module

        return split_from_csv(name).split
    try:
        return _SPLITS[name]
    except KeyError:
        raise ValueError(
            f"unknown class split {name!r}; expected one of {list(SPLIT_NAMES)} or a CSV file "
            "of Open Images classes"
        ) from None


def get_coco_split(name: str) -> ClassSplit:
    """The split in COCO's class names: a named split as `get_split` gives it; for a CSV of
    Open Images classes, base = the COCO classes its base classes come from, no novel ones."""
    if is_split_file(name):
        from alp_dataset.oid_classes import coco_split, split_from_csv

        return coco_split(split_from_csv(name))
    return get_split(name)


# ---------------------------------------------------------------------------------------------
# Open Images: the user's class list.

OPEN_IMAGES_COLUMNS: tuple[str, ...] = ("display_name", "mid", "coco_name")
"""CSV header: display_name is required; mid and coco_name may be missing or left empty."""


@dataclass(frozen=True)
class OpenImagesClasses:
    """Open Images classes read by ``open_images_split``.

    Attributes:
        split: base = classes mapped to a COCO class, novel = the rest, each in file order.
        to_coco: Open Images display name -> COCO class name, for the base classes.
        mids: Open Images display name -> machine id ("/m/0bt9lr"), for rows that give one.
    """

    split: ClassSplit
    to_coco: Mapping[str, str]
    mids: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "to_coco", MappingProxyType(dict(self.to_coco)))
        object.__setattr__(self, "mids", MappingProxyType(dict(self.mids)))

    def __reduce__(self) -> tuple[object, ...]:
        # A mappingproxy does not pickle; DataLoader workers pickle their datasets.
        return (OpenImagesClasses, (self.split, dict(self.to_coco), dict(self.mids)))


def _coco_name_error(where: str, coco_name: str) -> ValueError:
    close = difflib.get_close_matches(coco_name, COCO80, n=3)
    hint = f"; did you mean {close}?" if close else ""
    return ValueError(f"{where}, column 'coco_name': {coco_name!r} is not a COCO class{hint}")


def open_images_split(csv_path: str | Path, *, name: str = "open_images") -> OpenImagesClasses:
    """Read the user's Open Images class list (e.g. the 300 classes of the ALP paper's Sec. 4.3).

    The CSV has a header row with ``display_name`` and optionally ``mid`` and ``coco_name``. A row
    whose ``coco_name`` is set is a base class learnt from that COCO class's masks; the name must be
    one of the 80 COCO classes (``COCO80``, lower case). Rows without it are novel. Several Open
    Images classes may map to one COCO class. Blank lines are skipped; cells are stripped.

    Raises:
        ValueError: naming the file, the line and the column: a missing or unknown column, an
            empty display name, a repeated display name or mid, an unknown coco_name, or no rows.
    """
    path = Path(csv_path)
    base: list[str] = []
    novel: list[str] = []
    to_coco: dict[str, str] = {}
    mids: dict[str, str] = {}
    seen: dict[str, int] = {}
    seen_mids: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, restkey="_extra")
        header = [h.strip() for h in reader.fieldnames or []]
        unknown = [h for h in header if h not in OPEN_IMAGES_COLUMNS]
        if unknown:
            raise ValueError(
                f"{path}: unknown column(s) {unknown}; expected {list(OPEN_IMAGES_COLUMNS)}"
            )
        if "display_name" not in header:
            raise ValueError(f"{path}: missing column 'display_name' (header {header})")
        reader.fieldnames = header
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if row.get("_extra"):
                raise ValueError(f"{where}: more cells than the {len(header)} columns")
            cells = {k: (v or "").strip() for k, v in row.items() if k in OPEN_IMAGES_COLUMNS}
            if not any(cells.values()):
                continue
            display = cells["display_name"]
            if not display:
                raise ValueError(f"{where}, column 'display_name': empty")
            if display in seen:
                raise ValueError(
                    f"{where}, column 'display_name': {display!r} repeats line {seen[display]}"
                )
            seen[display] = reader.line_num
            mid = cells.get("mid", "")
            if mid:
                if mid in seen_mids:
                    raise ValueError(
                        f"{where}, column 'mid': {mid!r} repeats line {seen_mids[mid]}"
                    )
                seen_mids[mid] = reader.line_num
                mids[display] = mid
            coco_name = cells.get("coco_name", "")
            if coco_name:
                if coco_name not in COCO_CATEGORY_IDS:
                    raise _coco_name_error(where, coco_name)
                base.append(display)
                to_coco[display] = coco_name
            else:
                novel.append(display)
    if not seen:
        raise ValueError(f"{path}: no classes (only a header, or an empty file)")
    return OpenImagesClasses(
        split=ClassSplit(name, base=tuple(base), novel=tuple(novel)),
        to_coco=to_coco,
        mids=mids,
    )
