"""Word timing: align caption words to LocNar utterances, and time a phrase.

Sec. 3.1 of the ALP paper takes, for a phrase, "the union of utterance time-intervals of its words"
(T1, T2). LocNar stores the timing as utterances, not per caption word, and the two do not line up
one to one: an utterance may hold several words ("In this"), differ from the caption in case and
punctuation ("Dog," vs "dog"), skip words, or carry no timing at all (start = end = 0). So the
caption and the utterances are both split into normalised words and the two word sequences are
aligned with `difflib.SequenceMatcher`; a caption word gets the interval of the utterance its
matched word came from. Only identical normalised words are matched: a caption word the
utterances spell differently gets no timing rather than a guessed one.
"""

from __future__ import annotations

import bisect
import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from alp_curation.caption_text import normalise_caption
from alp_curation.locnar import Utterance

__all__ = [
    "NO_TIMING_REASONS",
    "Interval",
    "NoTiming",
    "WordTiming",
    "align_caption",
    "normalize_word",
    "phrase_interval",
    "split_words",
]

# Runs of letters/digits are the words on both sides; punctuation (and the apostrophe in "dog's",
# the hyphen in "t-shirt") splits words the same way in the caption and in the utterances.
_WORD_RE = re.compile(r"\w+")

NO_TIMING_REASONS: tuple[str, ...] = ("no_utterances", "words_unmatched", "untimed_utterances")


@dataclass(frozen=True)
class WordTiming:
    """The alignment of one caption's words to its utterances, computed once per record.

    `spans[i]` is the char span [start, end) of caption word i in the caption; `intervals[i]` its
    (start, end) in seconds or None when it has no timing. `matched[i]` says whether word i was
    aligned to an utterance word at all (timed or untimed); when empty it is taken to equal
    `intervals[i] is not None`. `has_utterances` is False when the record has no utterances.
    """

    spans: tuple[tuple[int, int], ...]
    intervals: tuple[tuple[float, float] | None, ...]
    matched: tuple[bool, ...] = ()
    has_utterances: bool = True

    def __post_init__(self) -> None:
        if len(self.spans) != len(self.intervals):
            raise ValueError(f"{len(self.spans)} spans but {len(self.intervals)} intervals")
        if self.matched and len(self.matched) != len(self.spans):
            raise ValueError(f"{len(self.spans)} spans but {len(self.matched)} matched flags")


@dataclass(frozen=True)
class Interval:
    """A time interval in seconds; start == end is an instant."""

    start: float
    end: float


@dataclass(frozen=True)
class NoTiming:
    """Why a phrase has no interval; `reason` is one of `NO_TIMING_REASONS`."""

    reason: str


def normalize_word(word: str) -> str:
    """Matching form of a word: NFKC, case-folded, letters and digits only ("Dog," -> "dog")."""
    return "".join(_WORD_RE.findall(unicodedata.normalize("NFKC", word).casefold()))


def split_words(text: str) -> list[tuple[int, int, str]]:
    """(start, end, normalised word) for each word of `text`; spans index `text` itself.

    Words are found in the text as the tagger reads it (`normalise_caption`), so a zero-width
    character inside a word ("pi\u200dnk") does not split it.
    """
    normalised = normalise_caption(text)
    words = []
    for m in _WORD_RE.finditer(normalised.text):
        start, end = normalised.span(m.start(), m.end())
        norm = normalize_word(m.group())
        if norm:  # e.g. a lone combining mark normalises to nothing
            words.append((start, end, norm))
    return words


def _is_untimed(utterance: Utterance) -> bool:
    # LocNar's marker for "no timing"; an instant later in the recording (start = end > 0) is timed.
    return utterance.start == 0.0 and utterance.end == 0.0


def align_caption(caption: str, utterances: Sequence[Utterance]) -> WordTiming:
    """Align the words of `caption` to `utterances` and give each caption word its timing."""
    caption_words = split_words(caption)
    spans = tuple((start, end) for start, end, _ in caption_words)
    if not utterances:
        return WordTiming(
            spans=spans,
            intervals=(None,) * len(spans),
            matched=(False,) * len(spans),
            has_utterances=False,
        )

    utterance_words: list[str] = []
    owner: list[int] = []  # utterance index of each utterance word
    for u_index, utterance in enumerate(utterances):
        for _, _, norm in split_words(utterance.text):
            utterance_words.append(norm)
            owner.append(u_index)

    # autojunk=False: the default heuristic treats words occurring in > 1 % of a 200+ word sequence
    # ("a", "the") as junk and refuses to anchor matches on them. SequenceMatcher anchors on the
    # longest common run first and recurses on both sides, so a repeated short word is matched
    # inside its own stretch of the caption rather than to the first equal word anywhere.
    matcher = difflib.SequenceMatcher(
        None, [w for _, _, w in caption_words], utterance_words, autojunk=False
    )
    intervals: list[tuple[float, float] | None] = [None] * len(spans)
    matched = [False] * len(spans)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            utterance = utterances[owner[block.b + k]]
            matched[block.a + k] = True
            if not _is_untimed(utterance):
                intervals[block.a + k] = (utterance.start, utterance.end)
    return WordTiming(spans=spans, intervals=tuple(intervals), matched=tuple(matched))


def phrase_interval(timing: WordTiming, start_char: int, end_char: int) -> Interval | NoTiming:
    """Union (min start, max end) of the timing of the caption words overlapping the phrase.

    A word belongs to the phrase when its span overlaps [start_char, end_char). Words without
    timing are skipped; when none of the phrase's words has timing the reason is "no_utterances"
    (the record has none), "untimed_utterances" (words matched only untimed utterances) or
    "words_unmatched" (no phrase word matched any utterance word).
    """
    if end_char <= start_char:
        raise ValueError(f"empty phrase span [{start_char}, {end_char})")
    # Spans are sorted and disjoint, so their ends are sorted too: skip to the first word that
    # ends after the phrase starts.
    first = bisect.bisect_right(timing.spans, start_char, key=lambda span: span[1])
    starts: list[float] = []
    ends: list[float] = []
    any_matched = False
    for i in range(first, len(timing.spans)):
        if timing.spans[i][0] >= end_char:
            break
        interval = timing.intervals[i]
        if interval is not None:
            starts.append(interval[0])
            ends.append(interval[1])
        elif timing.matched and timing.matched[i]:
            any_matched = True
    if starts:
        return Interval(start=min(starts), end=max(ends))
    if not timing.has_utterances:
        return NoTiming("no_utterances")
    return NoTiming("untimed_utterances" if any_matched else "words_unmatched")
