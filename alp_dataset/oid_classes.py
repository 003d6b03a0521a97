"""Open Images classes as a base / novel split: the shipped COCO <-> Open Images correspondence.

The ALP paper's main experiment (Sec. 4) learns the Open Images classes that COCO covers (60 of
the 300 segmentable ones, "upon manual inspection") from COCO's masks, and the rest from ALPs.
`data/coco_oid_classes.csv` holds that inspection as data: exact name matches and a reviewed list
of synonyms (COCO "cell phone" / Open Images "Mobile phone"), plus pairs of equal names that mean
different things ("mouse"), never matched. Applied to a user's class descriptions file it gives
the split; ``format_matches`` says what it matched.

A split is named by a CSV path wherever a split is named (``--class-split PATH.csv``), in either
form:

- an Open Images class descriptions file (``/m/01bjv,Bus``, no header): base classes are those
  the correspondence matches, novel the rest, in file order;
- an explicit list with a header ``display_name[,mid][,coco_name]`` (`class_splits.
  open_images_split`): a row with a coco_name is a base class. This is the override: write the
  correspondence's result out with ``python -m alp_dataset.oid_classes --classes CSV --output
  split.csv``, edit it, and name the edited file instead.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from alp_curation import flags
from alp_dataset.class_splits import (
    COCO_CATEGORY_IDS,
    OPEN_IMAGES_COLUMNS,
    ClassSplit,
    OpenImagesClasses,
    open_images_split,
)
from alp_dataset.open_images import OidClass, OpenImagesFormatError, read_class_descriptions

__all__ = [
    "CORRESPONDENCE_COLUMNS",
    "RELATIONS",
    "ClassMatch",
    "CorrespondencePair",
    "coco_split",
    "format_matches",
    "load_correspondence",
    "match_classes",
    "oid_split",
    "split_from_csv",
]

CORRESPONDENCE_FILE = "coco_oid_classes.csv"
CORRESPONDENCE_COLUMNS = ("coco_name", "oid_display_name", "relation", "note")
RELATIONS = ("exact", "synonym", "different")


@dataclass(frozen=True)
class CorrespondencePair:
    """One row of the correspondence file."""

    coco_name: str
    oid_display_name: str
    relation: str  # one of RELATIONS
    note: str
    line: int


@dataclass(frozen=True)
class ClassMatch:
    """What the correspondence made of one Open Images class."""

    label_name: str
    display_name: str
    coco_name: str | None  # None: a novel class
    relation: str | None  # "exact" / "synonym", None when unmatched


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def load_correspondence(path: str | Path | None = None) -> tuple[CorrespondencePair, ...]:
    """The pairs of the shipped correspondence file (or of ``path``, a file of the same columns;
    lines starting with # are comments).

    Raises ValueError naming the file, line and column: a wrong header, an unknown relation, a
    coco_name outside COCO's 80 classes, an "exact" pair whose names differ beyond letter case,
    an Open Images name given to two COCO classes or both matched and "different".
    """
    if path is None:
        text = (files("alp_dataset") / "data" / CORRESPONDENCE_FILE).read_text(encoding="utf-8")
        source = f"alp_dataset/data/{CORRESPONDENCE_FILE}"
    else:
        text, source = Path(path).read_text(encoding="utf-8"), str(path)
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if not line.startswith("#")]
    rows = list(csv.reader(io.StringIO("\n".join(line for _, line in lines))))
    if not rows or [c.strip() for c in rows[0]] != list(CORRESPONDENCE_COLUMNS):
        raise ValueError(f"{source}: expected the header {','.join(CORRESPONDENCE_COLUMNS)}")
    pairs: list[CorrespondencePair] = []
    seen: dict[str, CorrespondencePair] = {}
    for (number, _), cells in zip(lines[1:], rows[1:], strict=True):
        if not any(c.strip() for c in cells):
            continue
        where = f"{source}, line {number}"
        if len(cells) != len(CORRESPONDENCE_COLUMNS):
            raise ValueError(f"{where}: expected {len(CORRESPONDENCE_COLUMNS)} cells")
        coco, oid, relation, note = (c.strip() for c in cells)
        if coco not in COCO_CATEGORY_IDS:
            raise ValueError(f"{where}, column coco_name: {coco!r} is not a COCO class")
        if relation not in RELATIONS:
            raise ValueError(f"{where}, column relation: {relation!r}, expected one of {RELATIONS}")
        if not oid:
            raise ValueError(f"{where}, column oid_display_name: empty")
        if relation == "exact" and _key(coco) != _key(oid):
            raise ValueError(f"{where}: {coco!r} and {oid!r} are not equal names (use synonym)")
        pair = CorrespondencePair(coco, oid, relation, note, number)
        earlier = seen.get(_key(oid))
        if earlier is not None:
            raise ValueError(
                f"{where}, column oid_display_name: {oid!r} is already paired on line "
                f"{earlier.line} ({earlier.coco_name}, {earlier.relation})"
            )
        seen[_key(oid)] = pair
        pairs.append(pair)
    return tuple(pairs)


def match_classes(
    classes: Iterable[OidClass], pairs: Sequence[CorrespondencePair] | None = None
) -> tuple[ClassMatch, ...]:
    """Each class with the COCO class the correspondence gives it (by DisplayName, case and
    spaces ignored), in the given order."""
    pairs = load_correspondence() if pairs is None else pairs
    by_name = {_key(p.oid_display_name): p for p in pairs if p.relation != "different"}
    out = []
    for c in classes:
        pair = by_name.get(_key(c.display_name))
        out.append(
            ClassMatch(
                c.label_name,
                c.display_name,
                pair.coco_name if pair else None,
                pair.relation if pair else None,
            )
        )
    return tuple(out)


def oid_split(matches: Sequence[ClassMatch], *, name: str = "open_images") -> OpenImagesClasses:
    """The split of matched classes: base = matched, novel = the rest, each in the given order."""
    base = tuple(m.display_name for m in matches if m.coco_name)
    novel = tuple(m.display_name for m in matches if not m.coco_name)
    return OpenImagesClasses(
        split=ClassSplit(name, base=base, novel=novel),
        to_coco={m.display_name: m.coco_name for m in matches if m.coco_name},
        mids={m.display_name: m.label_name for m in matches},
    )


def _has_header(path: Path) -> bool:
    with path.open(encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                first = [c.strip() for c in next(csv.reader([line]))]
                return "display_name" in first and set(first) <= set(OPEN_IMAGES_COLUMNS)
    return False


def split_from_csv(path: str | Path, *, name: str | None = None) -> OpenImagesClasses:
    """The split a CSV names: an explicit list (header ``display_name,...``) as written, or an
    Open Images class descriptions file through the shipped correspondence (module doc).

    Raises ValueError (OpenImagesFormatError for a bad class descriptions file) naming the
    file, the line and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"split {str(path)!r}: no such file")
    name = name or path.stem
    if _has_header(path):
        return open_images_split(path, name=name)
    classes = read_class_descriptions(path.read_text(encoding="utf-8-sig"), str(path))
    return oid_split(match_classes(classes), name=name)


def coco_split(classes: OpenImagesClasses) -> ClassSplit:
    """The COCO side of an Open Images split: base = the COCO classes the base classes come
    from (sorted), no novel classes (COCO shards hold no Open Images novel class)."""
    return ClassSplit(
        f"{classes.split.name}.coco", base=tuple(sorted(set(classes.to_coco.values()))), novel=()
    )


def format_matches(classes: OpenImagesClasses, *, source: str = "") -> str:
    """A note of what the split holds: how many base classes, each with its COCO class."""
    split = classes.split
    pairs = ", ".join(f"{oid} <- {classes.to_coco[oid]}" for oid in split.base)
    where = f" of {source}" if source else ""
    return f"classes{where}: {len(split.base)} base (from COCO), {len(split.novel)} novel" + (
        f"\n  base: {pairs}" if pairs else ""
    )


def write_split_csv(classes: OpenImagesClasses, out: Path) -> None:
    """The split as an explicit list (header display_name,mid,coco_name): the file to edit."""
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(OPEN_IMAGES_COLUMNS)
        for display in classes.split.classes:
            writer.writerow(
                [display, classes.mids.get(display, ""), classes.to_coco.get(display, "")]
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alp_dataset.oid_classes",
        description="Apply the shipped COCO <-> Open Images correspondence to a class "
        "descriptions CSV: print the base classes it matched, and optionally write the split as "
        "an editable CSV (display_name,mid,coco_name) to name with --class-split instead.",
        formatter_class=flags.HelpFormatter,
    )
    parser.add_argument(
        "--classes",
        required=True,
        metavar="CSV",
        help="Open Images class descriptions (LabelName,DisplayName, no header), or an explicit "
        "split CSV",
    )
    parser.add_argument("--output", metavar="CSV", help="write the split as an editable list here")
    args = flags.parse_args(parser, argv)
    try:
        classes = split_from_csv(args.classes)
    except (ValueError, OpenImagesFormatError) as exc:
        parser.error(str(exc))
    print(format_matches(classes, source=args.classes))
    if args.output:
        write_split_csv(classes, Path(args.output))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
