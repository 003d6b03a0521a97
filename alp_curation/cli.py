"""``python -m alp_curation``: curate LocNar JSONL into ALPs on one machine and summarise them.

The Beam pipeline (``pipelines/extract_alps.py``) is the way to curate at scale; this command runs
the same ``alp_curation`` functions in one process, which is what a first look at a file, the demo
and the benchmarks need. Files are read as the pipeline reads them (`alp_curation.streams`:
compressed by extension and checked to the end of the stream, a leading byte-order mark dropped).
Bad lines never stop the run: they are counted by reason and, with ``--dead-letters``, written out
with the raw line; a file that cannot be read to its end counts one "read_error" after its good
lines.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from alp_curation import flags
from alp_curation.curate import DEFAULT_TEMPORAL_PADDING, CurationResult, curate_records
from alp_curation.locnar import InvalidRecord, LocNarRecord, parse_record, record_key
from alp_curation.quality import Mention, MentionMatch, match_mentions, summarise
from alp_curation.streams import StreamDamaged, iter_lines, open_checked
from alp_curation.tagging import Tagger

READ_ERROR = "read_error"  # a file unreadable from some line on, as in the pipeline's dead letters
MAX_LINE_BYTES = 64 * 2**20  # parse_record's default limit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m alp_curation",
        description="Curate Localized Narratives (JSONL, optionally .gz) into approximately "
        "localized phrases (ALPs) and print a summary table.",
    )
    parser.add_argument(
        "inputs", nargs="+", type=Path, help="LocNar JSONL files (.jsonl, or .gz, .bz2, .xz, .zst)"
    )
    parser.add_argument(
        "--ground-truth",
        type=Path,
        help="JSONL of ground-truth mentions (as written by `python -m alp_dataset.synthetic`): "
        "adds the mean IoU between ALP boxes and the boxes of the objects their phrases name",
    )
    parser.add_argument("--output", type=Path, help="write the ALPs here, one JSON object per line")
    parser.add_argument(
        "--dead-letters",
        type=Path,
        help="write lines that failed validation here (reason, field, message, raw line)",
    )
    parser.add_argument(
        "--spacy-model",
        default="en_core_web_sm",
        help="spaCy model for POS tagging (en_core_web_sm, en_core_web_trf, or a path); "
        "default: %(default)s",
    )
    parser.add_argument(
        "--temporal-padding",
        type=float,
        default=DEFAULT_TEMPORAL_PADDING,
        help="seconds added before and after a phrase's utterances when selecting trace points "
        "(t_p of the ALP paper); default: %(default)s",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="captions per spaCy batch; default: %(default)s"
    )
    parser.add_argument(
        "--top",
        type=int,
        default=10,
        help="how many frequent phrases to list; default: %(default)s",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


@dataclass
class Tally:
    lines: int = 0
    records: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    no_alp: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    records_with_alps: int = 0
    alps: int = 0
    phrases: Counter[str] = field(default_factory=Counter)


def input_lines(paths: Sequence[Path]) -> Iterator[tuple[str, bytes | OSError | StreamDamaged]]:
    """("file:line", raw bytes) for every non-blank line of every file, newline stripped; a file
    that cannot be read to its end gives, after its good lines, ("file:line", the error)."""
    for path in paths:
        number = 0
        try:
            with open_checked(open(path, "rb"), str(path)) as f:
                for line in iter_lines(f, str(path), max_line_bytes=MAX_LINE_BYTES):
                    number = line.number
                    if line.truncated or line.data.strip():
                        yield f"{path}:{number}", line.data.rstrip(b"\r")
        except (OSError, StreamDamaged) as exc:
            yield f"{path}:{number + 1}", exc


def parse_lines(
    lines: Iterator[tuple[str, bytes | OSError | StreamDamaged]],
    tally: Tally,
    dead_letters: IO[str] | None,
) -> Iterator[LocNarRecord]:
    for where, line in lines:
        tally.lines += 1
        if not isinstance(line, bytes):
            tally.dead_letters[READ_ERROR] += 1
            if dead_letters is not None:
                entry = {"source": where, "reason": READ_ERROR, "field": "", "message": str(line)}
                dead_letters.write(json.dumps(entry, sort_keys=True) + "\n")
            continue
        try:
            record = parse_record(line, max_line_bytes=MAX_LINE_BYTES)
        except InvalidRecord as exc:
            tally.dead_letters[exc.reason] += 1
            if dead_letters is not None:
                dead_letters.write(_dead_letter_json(where, exc, line) + "\n")
            continue
        tally.records += 1
        yield record


def _dead_letter_json(where: str, exc: InvalidRecord, line: bytes) -> str:
    try:
        raw: dict[str, str] = {"raw": line.decode("utf-8")}
    except UnicodeDecodeError:
        raw = {"raw_base64": base64.b64encode(line).decode("ascii")}
    entry = {"source": where, "reason": exc.reason, "field": exc.field, "message": str(exc), **raw}
    return json.dumps(entry, sort_keys=True)


def load_mentions(path: Path) -> dict[str, list[Mention]]:
    """Ground-truth mentions keyed by record key ("dataset_id/image_id/annotator_id")."""
    mentions: dict[str, list[Mention]] = {}
    with open(path, encoding="utf-8-sig") as f:  # "-sig": a leading byte-order mark is no text
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            entry = json.loads(line)
            try:
                key = record_key(entry["dataset_id"], entry["image_id"], entry["annotator_id"])
                mentions[key] = [
                    Mention(
                        start_char=m["start_char"],
                        end_char=m["end_char"],
                        box_xyxy_norm=tuple(m["box_xyxy_norm"]),
                        label=m.get("class_name", ""),
                    )
                    for m in entry["mentions"]
                ]
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: ground-truth entry lacks field {exc}") from exc
    return mentions


def tally_result(tally: Tally, result: CurationResult) -> None:
    tally.dropped.update(d.reason for d in result.dropped)
    if result.alps:
        tally.records_with_alps += 1
        tally.alps += len(result.alps)
        tally.phrases.update(a.phrase for a in result.alps)
    else:
        tally.no_alp[str(result.no_alp_reason)] += 1


def format_summary(
    tally: Tally,
    *,
    tagger_name: str,
    temporal_padding: float,
    seconds: float,
    matches: Sequence[MentionMatch] | None,
    top: int,
) -> str:
    def counts(counter: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))

    rows: list[tuple[str, str, str]] = [
        ("lines read", f"{tally.lines:,}", ""),
        ("dead letters", f"{sum(tally.dead_letters.values()):,}", counts(tally.dead_letters)),
        ("records parsed", f"{tally.records:,}", ""),
        ("records with ALPs", f"{tally.records_with_alps:,}", ""),
        ("records without ALP", f"{sum(tally.no_alp.values()):,}", counts(tally.no_alp)),
        ("ALPs", f"{tally.alps:,}", ""),
        ("unique phrases", f"{len(tally.phrases):,}", ""),
        ("phrases not kept", f"{sum(tally.dropped.values()):,}", counts(tally.dropped)),
        ("wall time", f"{seconds:.2f} s", ""),
        ("narratives / s", f"{tally.records / seconds:,.1f}" if seconds else "-", ""),
        ("ALPs / s", f"{tally.alps / seconds:,.1f}" if seconds else "-", ""),
    ]
    if matches is not None:
        q = summarise(matches)
        rows += [
            ("named objects", f"{q.n_mentions:,}", "ground-truth mentions"),
            ("  with an ALP", f"{q.answered_fraction:.1%}", f"{q.n_answered:,}"),
            ("  mean IoU", f"{q.mean_iou:.3f}", "ALP box vs object box"),
            ("  IoU >= 0.5", f"{q.iou_at_50:.1%}", "of objects with an ALP"),
        ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [
        f"ALP curation  (tagger {tagger_name}, temporal padding {temporal_padding:g} s)",
        "-" * (width + value_width + 4),
    ]
    lines += [
        f"{name:<{width}}  {value:>{value_width}}  {note}".rstrip() for name, value, note in rows
    ]
    if tally.phrases:
        lines += ["", f"top {top} phrases"]
        lines += [f"  {count:>6,}  {phrase}" for phrase, count in tally.phrases.most_common(top)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = flags.parse_args(build_parser(), argv)
    for path in args.inputs:
        if not path.is_file():
            print(f"error: input file {path} does not exist", file=sys.stderr)
            return 2
    mentions = load_mentions(args.ground_truth) if args.ground_truth else None
    tagger = Tagger(args.spacy_model, batch_size=args.batch_size)
    tally = Tally()
    matches: list[MentionMatch] = []
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.output, "w", encoding="utf-8")) if args.output else None
        dead = None
        if args.dead_letters:
            dead = stack.enter_context(open(args.dead_letters, "w", encoding="utf-8"))
        records = parse_lines(input_lines(args.inputs), tally, dead)
        progress = tqdm(records, desc="curating", unit=" narratives", disable=args.quiet)
        for result in curate_records(
            progress, tagger, temporal_padding=args.temporal_padding, batch_size=args.batch_size
        ):
            tally_result(tally, result)
            if out is not None:
                for alp in result.alps:
                    out.write(json.dumps(asdict(alp), sort_keys=True) + "\n")
            if mentions is not None:
                matches += match_mentions(result.alps, mentions.get(result.record_key, []))
    seconds = time.perf_counter() - start
    print(
        format_summary(
            tally,
            tagger_name=tagger.name,
            temporal_padding=args.temporal_padding,
            seconds=seconds,
            matches=matches if mentions is not None else None,
            top=args.top,
        )
    )
    return 0
