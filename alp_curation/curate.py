"""One narrative in, its ALPs out: the per-record curation of the ALP paper (Sec. 3.1).

For each phrase of the caption (adjectives + consecutive nouns, stuff and generic words dropped),
take the union (T1, T2) of the utterance intervals of its words, select the trace points recorded in
(T1 - t_p, T2 + t_p) and bound them with a box. Every phrase that does not become an ALP is reported
with a reason, and a record without any ALP says why, so that nothing disappears unaccounted for.

The function is pure: the caption's tokens come from the caller (``Tagger.tag`` batches captions
through spaCy far faster than one at a time), so the same code serves a loop, a Beam ``DoFn`` and
the tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from alp_curation.locnar import LocNarRecord
from alp_curation.phrases import extract_phrases
from alp_curation.tagging import Tagger, Token
from alp_curation.timing import Interval, align_caption, phrase_interval
from alp_curation.traces import merge_segments, trace_box

DEFAULT_TEMPORAL_PADDING = 0.5  # t_p of Sec. 3.1, in seconds

# Why a record yields no ALP at all. Checked in this order; the first that applies is reported.
NO_TRACES = "no_traces"  # the record carries no mouse trace
NO_PHRASES = "no_phrases"  # the caption has no phrase left after the stuff / generic filters
NO_TIMING = "no_timing"  # no kept phrase could be placed in time
NO_BOX = "no_box"  # phrases were timed, but no time window held enough trace points for a box
NO_ALP_REASONS = (NO_TRACES, NO_PHRASES, NO_TIMING, NO_BOX)


@dataclass(frozen=True)
class Alp:
    """An approximately localized phrase: a caption phrase and the box its trace points span."""

    dataset_id: str
    image_id: str
    annotator_id: int
    phrase: str  # normalised text, e.g. "red car"
    head_lemma: str  # e.g. "car"
    start_char: int  # span of the phrase in the caption
    end_char: int
    t_start: float  # union of the utterance intervals of the phrase's words (before padding)
    t_end: float
    box_xyxy_norm: tuple[float, float, float, float]  # clipped to [0, 1], origin top-left
    n_points: int  # trace points inside the padded window


@dataclass(frozen=True)
class DroppedPhrase:
    """A candidate phrase that did not become an ALP, and why."""

    text: str
    start_char: int
    end_char: int
    reason: str  # from phrases ("stuff", "generic", "pronoun"), timing or traces


@dataclass(frozen=True)
class CurationResult:
    record_key: str
    alps: tuple[Alp, ...]
    dropped: tuple[DroppedPhrase, ...]
    no_alp_reason: str | None  # one of NO_ALP_REASONS when ``alps`` is empty, else None


def curate_record(
    record: LocNarRecord,
    tokens: Sequence[Token],
    *,
    temporal_padding: float = DEFAULT_TEMPORAL_PADDING,
) -> CurationResult:
    """Turn one parsed narrative and the tokens of its caption into ALPs."""
    extraction = extract_phrases(tokens)
    dropped = [
        DroppedPhrase(r.text, r.start_char, r.end_char, r.reason) for r in extraction.rejected
    ]
    alps: list[Alp] = []
    n_timed = 0
    if record.traces and extraction.phrases:
        timing = align_caption(record.caption, record.utterances)
        points = merge_segments(record.traces)
        for phrase in extraction.phrases:
            interval = phrase_interval(timing, phrase.start_char, phrase.end_char)
            if not isinstance(interval, Interval):
                dropped.append(
                    DroppedPhrase(phrase.text, phrase.start_char, phrase.end_char, interval.reason)
                )
                continue
            n_timed += 1
            box = trace_box(points, interval.start, interval.end, temporal_padding=temporal_padding)
            if box.box_xyxy_norm is None:
                dropped.append(
                    DroppedPhrase(phrase.text, phrase.start_char, phrase.end_char, str(box.reason))
                )
                continue
            alps.append(
                Alp(
                    dataset_id=record.dataset_id,
                    image_id=record.image_id,
                    annotator_id=record.annotator_id,
                    phrase=phrase.text,
                    head_lemma=phrase.head_lemma,
                    start_char=phrase.start_char,
                    end_char=phrase.end_char,
                    t_start=interval.start,
                    t_end=interval.end,
                    box_xyxy_norm=box.box_xyxy_norm,
                    n_points=box.n_points,
                )
            )
    elif extraction.phrases:
        dropped.extend(
            DroppedPhrase(p.text, p.start_char, p.end_char, NO_TRACES) for p in extraction.phrases
        )
    dropped.sort(key=lambda d: (d.start_char, d.end_char))
    return CurationResult(
        record_key=record.key,
        alps=tuple(alps),
        dropped=tuple(dropped),
        no_alp_reason=None if alps else _no_alp_reason(record, extraction.phrases, n_timed),
    )


def _no_alp_reason(record: LocNarRecord, phrases: Sequence[object], n_timed: int) -> str:
    if not record.traces:
        return NO_TRACES
    if not phrases:
        return NO_PHRASES
    if n_timed == 0:
        return NO_TIMING
    return NO_BOX


def curate_records(
    records: Iterable[LocNarRecord],
    tagger: Tagger,
    *,
    temporal_padding: float = DEFAULT_TEMPORAL_PADDING,
    batch_size: int = 256,
) -> Iterator[CurationResult]:
    """Curate a stream of records, tagging their captions in batches of ``batch_size``."""
    batch: list[LocNarRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) == batch_size:
            yield from _curate_batch(batch, tagger, temporal_padding)
            batch = []
    if batch:
        yield from _curate_batch(batch, tagger, temporal_padding)


def _curate_batch(
    batch: Sequence[LocNarRecord], tagger: Tagger, temporal_padding: float
) -> Iterator[CurationResult]:
    token_lists = tagger.tag([r.caption for r in batch])
    for record, tokens in zip(batch, token_lists, strict=True):
        yield curate_record(record, tokens, temporal_padding=temporal_padding)
