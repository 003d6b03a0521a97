"""Tests for alp_curation/caption_text.py and what it changes downstream: invisible characters
and decomposed letters in captions, tagged with the real en_core_web_sm and curated."""

from __future__ import annotations

import json
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from alp_curation.caption_text import INVISIBLE, normalise_caption
from alp_curation.curate import curate_record
from alp_curation.locnar import parse_record
from alp_curation.phrases import extract_phrases, phrase_id
from alp_curation.tagging import Tagger
from alp_curation.timing import split_words

ZWJ, ZWSP, RLO, PDF = "\u200d", "\u200b", "\u202e", "\u202c"
FAMILY = "\U0001f468" + ZWJ + "\U0001f469" + ZWJ + "\U0001f467"


def test_an_ascii_caption_is_its_own_normal_form() -> None:
    n = normalise_caption("A red car.")
    assert (n.text, n.starts, n.span(2, 5)) == ("A red car.", None, (2, 5))


def test_invisible_characters_are_dropped_and_spans_reach_back_over_them() -> None:
    caption = f"a pi{ZWJ}nk {RLO}car{PDF}."
    n = normalise_caption(caption)
    assert n.text == "a pink car."
    assert caption[slice(*n.span(2, 6))] == f"pi{ZWJ}nk"
    assert caption[slice(*n.span(7, 10))] == f"car{PDF}"  # RLO sits before the word: outside
    assert caption[slice(*n.span(10, 11))] == "."


def test_decomposed_letters_compose_and_map_to_every_character_they_came_from() -> None:
    caption = "cafe\u0301 \u1100\u1161\u11a8!"  # e + acute accent; Hangul jamo L, V, T
    n = normalise_caption(caption)
    assert n.text == "caf\u00e9 \uac01!"
    assert caption[slice(*n.span(0, 4))] == "cafe\u0301"
    assert caption[slice(*n.span(5, 6))] == "\u1100\u1161\u11a8"


@given(st.text(alphabet=st.sampled_from([*"ab e.-", "\u0301", "\u1100", "\u1161", *INVISIBLE])))
def test_the_normal_form_and_its_spans_for_any_caption(caption: str) -> None:
    n = normalise_caption(caption)
    visible = "".join(c for c in caption if c not in INVISIBLE)
    assert n.text in (unicodedata.normalize("NFC", visible), visible)
    assert not INVISIBLE & set(n.text)
    if n.starts is None or n.ends is None:
        assert n.text == caption
        return
    assert len(n.starts) == len(n.ends) == len(n.text)
    assert all(0 <= s < e <= len(caption) for s, e in zip(n.starts, n.ends, strict=True))
    assert list(n.starts) == sorted(n.starts) and list(n.ends) == sorted(n.ends)
    for i, char in enumerate(n.text):  # each character comes from the caption span it names
        piece = "".join(c for c in caption[n.starts[i] : n.ends[i]] if c not in INVISIBLE)
        assert char in unicodedata.normalize("NFC", piece)


def phrases_of(tagger: Tagger, caption: str) -> list[tuple[str, str]]:
    (tokens,) = tagger.tag([caption])
    return [(p.text, caption[p.start_char : p.end_char]) for p in extract_phrases(tokens).phrases]


def test_a_joiner_inside_a_word_does_not_make_a_phrase_of_its_own(tagger: Tagger) -> None:
    plain = phrases_of(tagger, "There is a pink car.")
    joined = phrases_of(tagger, f"There is a pi{ZWJ}nk car.")
    assert plain == [("pink car", "pink car")]
    assert joined == [("pink car", f"pi{ZWJ}nk car")]  # same text and id, offsets as written
    assert phrase_id(joined[0][0]) == phrase_id(plain[0][0])


def test_bidi_controls_stay_out_of_phrase_text(tagger: Tagger) -> None:
    assert phrases_of(tagger, f"A {RLO}blue{PDF} dog sits here.") == [
        ("blue dog", f"blue{PDF} dog")
    ]


def test_a_joined_emoji_makes_no_phrase(tagger: Tagger) -> None:
    for caption in (f"A family {FAMILY} on the beach.", f"A {FAMILY} on the beach."):
        assert [text for text, _ in phrases_of(tagger, caption)] in (
            ["family", "beach"],
            ["beach"],
        )


def test_a_composed_and_a_decomposed_word_are_one_phrase(tagger: Tagger) -> None:
    composed = phrases_of(tagger, "A caf\u00e9 sign.")
    decomposed = phrases_of(tagger, "A cafe\u0301 sign.")
    assert [t for t, _ in composed] == [t for t, _ in decomposed] == ["caf\u00e9 sign"]


def test_time_alignment_reads_a_word_with_a_joiner_whole(tagger: Tagger) -> None:
    caption = f"A pi{ZWJ}nk car."
    assert [w for _, _, w in split_words(caption)] == ["a", "pink", "car"]
    line = {
        "dataset_id": "d",
        "image_id": "i",
        "annotator_id": 1,
        "caption": caption,
        "timed_caption": [
            {"utterance": "A", "start_time": 0.0, "end_time": 0.2},
            {"utterance": "pink", "start_time": 0.2, "end_time": 0.6},
            {"utterance": "car.", "start_time": 0.6, "end_time": 1.0},
        ],
        "traces": [[{"x": 0.1 * k, "y": 0.1 * k, "t": 0.1 * k} for k in range(10)]],
    }
    record = parse_record(json.dumps(line))
    (alp,) = curate_record(record, tagger.tag([caption])[0]).alps
    assert (alp.phrase, alp.t_start, alp.t_end) == ("pink car", 0.2, 1.0)
    assert caption[alp.start_char : alp.end_char] == f"pi{ZWJ}nk car"
