from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alp_curation.locnar import Utterance
from alp_curation.timing import (
    Interval,
    NoTiming,
    WordTiming,
    align_caption,
    normalize_word,
    phrase_interval,
    split_words,
)


def span_of(caption: str, text: str) -> tuple[int, int]:
    """Char span of the first occurrence of `text` in `caption`."""
    start = caption.index(text)
    return start, start + len(text)


def test_normalize_and_split() -> None:
    assert normalize_word("Dog,") == "dog"
    assert normalize_word("ÉCOLE") == "école"
    assert split_words("A Dog, sitting.") == [(0, 1, "a"), (2, 5, "dog"), (7, 14, "sitting")]
    assert split_words("dog's t-shirt") == [
        (0, 3, "dog"),
        (4, 5, "s"),
        (6, 7, "t"),
        (8, 13, "shirt"),
    ]


def test_multi_word_utterances() -> None:
    caption = "In this image I can see a dog."
    utterances = [
        Utterance("In this", 0.0, 0.4),
        Utterance("image", 0.4, 0.8),
        Utterance("I can see", 1.0, 1.6),
        Utterance("a dog", 2.0, 2.5),
    ]
    timing = align_caption(caption, utterances)
    assert timing.spans[:2] == ((0, 2), (3, 7))
    assert timing.intervals == (
        (0.0, 0.4),
        (0.0, 0.4),
        (0.4, 0.8),
        (1.0, 1.6),
        (1.0, 1.6),
        (1.0, 1.6),
        (2.0, 2.5),
        (2.0, 2.5),
    )
    assert phrase_interval(timing, *span_of(caption, "image")) == Interval(0.4, 0.8)
    # A phrase spanning two utterances takes their union.
    start = caption.index("see")
    assert phrase_interval(timing, start, len(caption)) == Interval(1.0, 2.5)


def test_case_and_punctuation_differences() -> None:
    caption = "A brown Dog, sitting on the GRASS."
    utterances = [
        Utterance("a", 0.1, 0.2),
        Utterance("brown", 0.2, 0.5),
        Utterance("dog", 0.5, 0.9),
        Utterance("Sitting", 1.0, 1.3),
        Utterance("on the grass!", 1.3, 2.0),
    ]
    timing = align_caption(caption, utterances)
    assert all(interval is not None for interval in timing.intervals)
    # spaCy's token "Dog" (without the comma) overlaps the caption word.
    assert phrase_interval(timing, *span_of(caption, "brown Dog")) == Interval(0.2, 0.9)
    assert phrase_interval(timing, *span_of(caption, "Dog,")) == Interval(0.5, 0.9)
    assert phrase_interval(timing, *span_of(caption, "GRASS")) == Interval(1.3, 2.0)


def test_untimed_and_instant_utterances() -> None:
    caption = "a red car and a bus"
    utterances = [
        Utterance("a", 1.0, 1.0),  # an instant later in the recording: timed
        Utterance("red car", 0.0, 0.0),  # LocNar's "no timing"
        Utterance("and", 2.0, 2.1),
        Utterance("a bus", 2.1, 2.6),
    ]
    timing = align_caption(caption, utterances)
    assert timing.intervals == ((1.0, 1.0), None, None, (2.0, 2.1), (2.1, 2.6), (2.1, 2.6))
    assert timing.matched == (True,) * 6
    assert phrase_interval(timing, *span_of(caption, "red car")) == NoTiming("untimed_utterances")
    assert phrase_interval(timing, *span_of(caption, "a")) == Interval(1.0, 1.0)
    # Untimed words are skipped when other phrase words have timing.
    assert phrase_interval(timing, *span_of(caption, "a red car")) == Interval(1.0, 1.0)


def test_caption_word_missing_from_utterances() -> None:
    caption = "a fluffy dog near a tree"
    utterances = [
        Utterance("a", 0.0, 0.2),
        Utterance("dog near", 0.5, 1.0),
        Utterance("a tree", 1.0, 1.5),
    ]
    timing = align_caption(caption, utterances)
    assert timing.intervals[1] is None and not timing.matched[1]
    assert phrase_interval(timing, *span_of(caption, "fluffy")) == NoTiming("words_unmatched")
    assert phrase_interval(timing, *span_of(caption, "fluffy dog")) == Interval(0.5, 1.0)
    assert phrase_interval(timing, *span_of(caption, "tree")) == Interval(1.0, 1.5)


def test_repeated_words_keep_their_own_timing() -> None:
    caption = "a man with a hat and a dog on a leash"
    words = caption.split()
    utterances = [Utterance(w, float(i), i + 0.5) for i, w in enumerate(words)]
    timing = align_caption(caption, utterances)
    assert timing.intervals == tuple((float(i), i + 0.5) for i in range(len(words)))

    # Drop the second "a" from the utterances: the other "a"s must not shift onto its slot.
    kept = [u for i, u in enumerate(utterances) if i != 3]
    timing = align_caption(caption, kept)
    assert timing.intervals[3] is None
    for i in (0, 6, 9):
        assert timing.intervals[i] == (float(i), i + 0.5)
    assert phrase_interval(timing, *timing.spans[3]) == NoTiming("words_unmatched")
    assert phrase_interval(timing, *span_of(caption, "a leash")) == Interval(9.0, 10.5)


def test_no_utterances_and_empty_caption() -> None:
    timing = align_caption("a dog", [])
    assert timing.intervals == (None, None) and not timing.has_utterances
    assert phrase_interval(timing, 0, 5) == NoTiming("no_utterances")
    assert align_caption("", [Utterance("dog", 1.0, 2.0)]).spans == ()


def test_phrase_outside_words_and_bad_span() -> None:
    timing = align_caption("dog , cat", [Utterance("dog cat", 1.0, 2.0)])
    assert phrase_interval(timing, 4, 5) == NoTiming("words_unmatched")  # only the comma
    with pytest.raises(ValueError, match="empty phrase span"):
        phrase_interval(timing, 3, 3)


def test_hand_built_word_timing() -> None:
    timing = WordTiming(spans=((0, 3), (4, 7)), intervals=((1.0, 2.0), None))
    assert phrase_interval(timing, 0, 7) == Interval(1.0, 2.0)
    assert phrase_interval(timing, 4, 7) == NoTiming("words_unmatched")
    with pytest.raises(ValueError):
        WordTiming(spans=((0, 3),), intervals=())


_words = st.lists(
    st.sampled_from(["a", "the", "dog", "red", "car", "and"]), min_size=1, max_size=25
)


@settings(max_examples=50, deadline=None)
@given(_words, st.integers(1, 3))
def test_identical_words_align_exactly(words: list[str], chunk: int) -> None:
    caption = " ".join(w.capitalize() if i % 3 == 0 else w for i, w in enumerate(words)) + "."
    utterances = [
        Utterance(" ".join(words[i : i + chunk]), float(i + 1), i + 1.5)
        for i in range(0, len(words), chunk)
    ]
    timing = align_caption(caption, utterances)
    expected = tuple((float(i - i % chunk + 1), i - i % chunk + 1.5) for i in range(len(words)))
    assert timing.intervals == expected
