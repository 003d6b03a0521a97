from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alp_curation.phrases import (
    COCO_THINGS_ENDING_IN_STUFF,
    GENERIC,
    PRONOUN,
    REJECTION_REASONS,
    STUFF,
    Phrase,
    PhraseExtraction,
    RejectedPhrase,
    default_vocabulary,
    extract_phrases,
    load_generic_words,
    load_stuff_names,
    make_vocabulary,
    stuff_forms,
)
from alp_curation.tagging import Tagger, Token

DOCS = Path(__file__).resolve().parents[2] / "docs" / "phrases.md"


def tokens_for(caption: str, tags: list[tuple[str, ...]]) -> tuple[Token, ...]:
    """Tokens of ``caption`` from (text, pos[, lemma]) triples, located left to right.

    A "-" is given the Penn tag HYPH, as spaCy does for hyphens inside words.
    """
    tokens, cursor = [], 0
    for text, pos, *lemma in tags:
        start = caption.index(text, cursor)
        cursor = start + len(text)
        tag = "HYPH" if text == "-" else ""
        tokens.append(Token(text, start, cursor, pos, tag, lemma[0] if lemma else text.lower()))
    return tuple(tokens)


def kept(extraction: PhraseExtraction) -> list[str]:
    return [p.text for p in extraction.phrases]


def rejected(extraction: PhraseExtraction) -> list[tuple[str, str]]:
    return [(r.text, r.reason) for r in extraction.rejected]


# --- the phrase rule, on hand-built tokens -------------------------------------------------------


def test_adjective_and_noun_make_one_phrase_with_spans() -> None:
    caption = "a red car"
    out = extract_phrases(tokens_for(caption, [("a", "DET"), ("red", "ADJ"), ("car", "NOUN")]))
    assert out == PhraseExtraction(
        phrases=(Phrase("red car", "car", 2, 9, ((2, 5), (6, 9))),), rejected=()
    )


def test_consecutive_nouns_and_proper_nouns_join() -> None:
    caption = "a big fluffy teddy bear"
    tags = [("a", "DET"), ("big", "ADJ"), ("fluffy", "ADJ"), ("teddy", "PROPN"), ("bear", "NOUN")]
    (phrase,) = extract_phrases(tokens_for(caption, tags)).phrases
    assert (phrase.text, phrase.head_lemma) == ("big fluffy teddy bear", "bear")
    assert caption[phrase.start_char : phrase.end_char] == "big fluffy teddy bear"
    assert len(phrase.word_spans) == 4


def test_numbers_are_not_adjectives() -> None:
    caption = "two small dogs"
    tags = [("two", "NUM"), ("small", "ADJ"), ("dogs", "NOUN", "dog")]
    (phrase,) = extract_phrases(tokens_for(caption, tags)).phrases
    assert (phrase.text, phrase.head_lemma, phrase.start_char) == ("small dogs", "dog", 4)


def test_adjective_without_noun_is_no_phrase() -> None:
    caption = "the car is red"
    tags = [("the", "DET"), ("car", "NOUN"), ("is", "AUX"), ("red", "ADJ")]
    assert kept(extract_phrases(tokens_for(caption, tags))) == ["car"]


def test_punctuation_and_participles_end_a_phrase() -> None:
    caption = "big, red car and parked bus"
    tags = [
        ("big", "ADJ"),
        (",", "PUNCT"),
        ("red", "ADJ"),
        ("car", "NOUN"),
        ("and", "CCONJ"),
        ("parked", "VERB"),
        ("bus", "NOUN"),
    ]
    assert kept(extract_phrases(tokens_for(caption, tags))) == ["red car", "bus"]


def test_possessive_splits_owner_and_owned() -> None:
    caption = "a man's shirt"
    tags = [("a", "DET"), ("man", "NOUN"), ("'s", "PART"), ("shirt", "NOUN")]
    assert kept(extract_phrases(tokens_for(caption, tags))) == ["man", "shirt"]


def test_hyphenated_noun_stays_one_word() -> None:
    caption = "a blue t-shirts"
    tags = [
        ("a", "DET"),
        ("blue", "ADJ"),
        ("t", "NOUN"),
        ("-", "PUNCT"),
        ("shirts", "NOUN", "shirt"),
    ]
    (phrase,) = extract_phrases(tokens_for(caption, tags)).phrases
    assert phrase == Phrase("blue t-shirts", "t-shirt", 2, 15, ((2, 6), (7, 15)))


def test_hyphenated_adjective_takes_the_pos_of_its_last_part() -> None:
    caption = "black-and-white dress, well-known brand"
    tags = [
        ("black", "ADJ"),
        ("-", "PUNCT"),
        ("and", "CCONJ"),
        ("-", "PUNCT"),
        ("white", "ADJ"),
        ("dress", "NOUN"),
        (",", "PUNCT"),
        ("well", "ADV"),
        ("-", "PUNCT"),
        ("known", "VERB"),
        ("brand", "NOUN"),
    ]
    out = extract_phrases(tokens_for(caption, tags))
    assert kept(out) == ["black-and-white dress", "brand"]
    assert out.phrases[0].word_spans == ((0, 15), (16, 21))


def test_spaced_dash_does_not_join_words() -> None:
    caption = "dog - cat"
    tags = [("dog", "NOUN"), ("-", "PUNCT"), ("cat", "NOUN")]
    assert kept(extract_phrases(tokens_for(caption, tags))) == ["dog", "cat"]


def test_whitespace_tokens_are_skipped_and_text_is_normalised() -> None:
    caption = "Red  CAR"
    tags = [("Red", "ADJ"), (" ", "SPACE"), ("CAR", "NOUN", "car")]
    (phrase,) = extract_phrases(tokens_for(caption, tags)).phrases
    assert (phrase.text, phrase.start_char, phrase.end_char) == ("red car", 0, 8)


def test_missing_lemma_falls_back_to_the_text() -> None:
    tokens = (Token("Dogs", 0, 4, "NOUN", "NNS", ""),)
    assert extract_phrases(tokens).phrases[0].head_lemma == "dogs"


def test_no_tokens_no_phrases() -> None:
    assert extract_phrases(()) == PhraseExtraction((), ())


# --- rejections ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "tags"),
    [
        ("grass", [("grass", "NOUN")]),
        ("blue sky", [("blue", "ADJ"), ("sky", "NOUN")]),
        ("brick wall", [("brick", "NOUN"), ("wall", "NOUN")]),
        ("trees", [("trees", "NOUN", "tree")]),
        ("cloud", [("cloud", "NOUN")]),  # the name is "clouds"
        ("water drops", [("water", "NOUN"), ("drops", "NOUN", "drop")]),
        ("window blind", [("window", "NOUN"), ("blind", "NOUN")]),
        ("street lights", [("street", "NOUN"), ("lights", "NOUN", "light")]),
        ("white building", [("white", "ADJ"), ("building", "NOUN")]),  # "building-other"
    ],
)
def test_stuff_is_rejected(caption: str, tags: list[tuple[str, ...]]) -> None:
    out = extract_phrases(tokens_for(caption, tags))
    assert rejected(out) == [(caption, STUFF)]
    assert out.phrases == ()


@pytest.mark.parametrize(
    ("caption", "tags"),
    [
        ("traffic light", [("traffic", "NOUN"), ("light", "NOUN")]),
        ("dining tables", [("dining", "NOUN"), ("tables", "NOUN", "table")]),
        ("potted plant", [("potted", "ADJ"), ("plant", "NOUN")]),
    ],
)
def test_coco_things_ending_in_a_stuff_word_are_kept(
    caption: str, tags: list[tuple[str, ...]]
) -> None:
    assert kept(extract_phrases(tokens_for(caption, tags))) == [caption]


def test_material_alone_is_not_stuff() -> None:
    # "wall-brick" makes "wall" and "brick wall" stuff, not "brick".
    assert kept(extract_phrases(tokens_for("brick", [("brick", "NOUN")]))) == ["brick"]


@pytest.mark.parametrize(
    ("caption", "tags", "reason"),
    [
        ("someone", [("someone", "NOUN")], PRONOUN),
        ("white ones", [("white", "ADJ"), ("ones", "NOUN", "one")], PRONOUN),
        ("left side", [("left", "ADJ"), ("side", "NOUN")], GENERIC),
        ("images", [("images", "NOUN", "image")], GENERIC),
        ("dog image", [("dog", "NOUN"), ("image", "NOUN")], GENERIC),
        ("bottom right corner", [("bottom", "ADJ"), ("right", "ADJ"), ("corner", "NOUN")], GENERIC),
        ("few objects", [("few", "ADJ"), ("objects", "NOUN", "object")], GENERIC),
    ],
)
def test_generic_heads_are_rejected(caption: str, tags: list[tuple[str, ...]], reason: str) -> None:
    assert rejected(extract_phrases(tokens_for(caption, tags))) == [(caption, reason)]


def test_generic_modifier_with_a_real_head_is_kept() -> None:
    tags = [("picture", "NOUN"), ("frame", "NOUN")]
    (phrase,) = extract_phrases(tokens_for("picture frame", tags)).phrases
    assert (phrase.text, phrase.head_lemma) == ("picture frame", "frame")


def test_kept_and_rejected_are_each_in_caption_order() -> None:
    caption = "In the picture a dog sits on grass near a cat"
    tags = [
        ("In", "ADP"),
        ("the", "DET"),
        ("picture", "NOUN"),
        ("a", "DET"),
        ("dog", "NOUN"),
        ("sits", "VERB"),
        ("on", "ADP"),
        ("grass", "NOUN"),
        ("near", "ADP"),
        ("a", "DET"),
        ("cat", "NOUN"),
    ]
    out = extract_phrases(tokens_for(caption, tags))
    assert kept(out) == ["dog", "cat"]
    assert out.rejected == (
        RejectedPhrase("picture", 7, 14, GENERIC),
        RejectedPhrase("grass", 29, 34, STUFF),
    )


def test_a_custom_vocabulary_replaces_the_lists() -> None:
    vocabulary = make_vocabulary(stuff_names=["sky-other"], generic={"thing": GENERIC}, things=())
    caption = "wall, sky thing"
    tags = [("wall", "NOUN"), (",", "PUNCT"), ("sky", "NOUN"), ("thing", "NOUN")]
    out = extract_phrases(tokens_for(caption, tags), vocabulary=vocabulary)
    assert kept(out) == ["wall"]
    assert rejected(out) == [("sky thing", GENERIC)]


def test_a_vocabulary_with_an_unknown_reason_is_refused() -> None:
    with pytest.raises(ValueError, match=r"generic\['thing'\] = 'vague'"):
        make_vocabulary(stuff_names=[], generic={"thing": "vague"})


# --- the word lists ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "forms"),
    [
        ("sky-other", ("sky",)),
        ("desk-stuff", ("desk",)),
        ("grass-merged", ("grass",)),
        ("tree", ("tree",)),
        ("wall-brick", ("wall", "brick wall")),
        ("floor-wood", ("floor", "wood floor")),
        ("window-blind", ("window blind", "blind")),
        ("clouds", ("clouds", "cloud")),
        ("waterdrops", ("waterdrops", "waterdrop", "water drop")),
        ("playingfield", ("playingfield", "playing field")),
    ],
)
def test_stuff_forms(name: str, forms: tuple[str, ...]) -> None:
    assert stuff_forms(name) == forms


def test_the_shipped_stuff_names_are_coco_stuffs_91() -> None:
    names = load_stuff_names()
    assert len(names) == len(set(names)) == 91
    assert {"wall-brick", "sky-other", "tree", "building-other", "window-blind"} <= set(names)


def test_the_shipped_generic_list() -> None:
    words = load_generic_words()
    assert set(words.values()) == {PRONOUN, GENERIC}
    for word in (
        "image picture photo photograph background foreground front left right top bottom "
        "middle center side corner edge part area view scene thing something object"
    ).split():
        assert word in words, word
    assert words["someone"] == PRONOUN and words["image"] == GENERIC


def test_the_lists_are_disjoint_so_each_phrase_has_one_reason() -> None:
    vocabulary = default_vocabulary()
    one_word_stuff = {name[0] for name in vocabulary.stuff if len(name) == 1}
    assert one_word_stuff.isdisjoint(vocabulary.generic)
    assert {" ".join(t) for t in vocabulary.things} == set(COCO_THINGS_ENDING_IN_STUFF)


# --- properties ----------------------------------------------------------------------------------

_POS = ["NOUN", "PROPN", "ADJ", "NUM", "DET", "VERB", "PUNCT", "PART"]
_WORDS = ["dog", "red", "sky", "image", "two", "the", "t", "'s", ",", "car", "-"]


@st.composite
def _captions(draw: st.DrawFn) -> tuple[str, tuple[Token, ...]]:
    """Random words and POS; a "-" is always PUNCT and may touch its neighbours."""
    words = draw(st.lists(st.sampled_from(_WORDS), max_size=12))
    tags = [(w, "PUNCT" if w == "-" else draw(st.sampled_from(_POS))) for w in words]
    caption = ""
    for i, word in enumerate(words):
        touch = i > 0 and "-" in (word, words[i - 1]) and draw(st.booleans())
        caption += ("" if i == 0 or touch else " ") + word
    return caption, tokens_for(caption, tags)


@given(_captions())
def test_phrases_are_ordered_disjoint_and_end_in_a_noun(
    example: tuple[str, tuple[Token, ...]],
) -> None:
    caption, tokens = example
    out = extract_phrases(tokens)
    spans = sorted(
        [(p.start_char, p.end_char) for p in out.phrases]
        + [(r.start_char, r.end_char) for r in out.rejected]
    )
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
    assert all(r.reason in REJECTION_REASONS for r in out.rejected)
    ends = {t.end_char: t.pos for t in tokens}
    texts = [p.text for p in out.phrases] + [r.text for r in out.rejected]
    for start, end in spans:
        assert ends[end] in ("NOUN", "PROPN")
        assert " ".join(caption[start:end].split()).lower() in texts


# --- end to end, with spaCy ----------------------------------------------------------------------


def test_locnar_caption_end_to_end(tagger: Tagger) -> None:
    caption = (
        "In this picture we can see a red car and two small dogs on the grass. In the "
        "background there is a blue sky and a white building."
    )
    out = extract_phrases(tagger.tag([caption])[0])
    assert kept(out) == ["red car", "small dogs"]
    # COCO-Stuff lists "building-other", so a building is stuff like the sky.
    assert rejected(out) == [
        ("picture", GENERIC),
        ("grass", STUFF),
        ("background", GENERIC),
        ("blue sky", STUFF),
        ("white building", STUFF),
    ]
    for phrase in out.phrases:
        assert caption[phrase.start_char : phrase.end_char].lower() == phrase.text


def test_hyphens_possessives_and_things_end_to_end(tagger: Tagger) -> None:
    caption = (
        "A man's t-shirt, a woman in a black-and-white dress holding a teddy bear. "
        "At the top of the image there is a traffic light."
    )
    out = extract_phrases(tagger.tag([caption])[0])
    assert kept(out) == [
        "man",
        "t-shirt",
        "woman",
        "black-and-white dress",
        "teddy bear",
        "traffic light",
    ]
    assert rejected(out) == [("top", GENERIC), ("image", GENERIC)]


_EXAMPLE = re.compile(r"```text\n(.*?)```", re.DOTALL)


def _doc_examples() -> list[dict[str, str]]:
    """Fields of each ```text block in docs/phrases.md that has a "caption:" line."""
    examples = []
    for block in _EXAMPLE.findall(DOCS.read_text(encoding="utf-8")):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            m = re.match(r"(\w+):\s*(.*)", line)
            if m:
                key = m.group(1)
                fields[key] = m.group(2).strip()
            elif key is not None and line.strip():  # continuation line
                fields[key] += " " + line.strip()
        if "caption" in fields:
            examples.append(fields)
    return examples


def test_docs_examples_are_what_the_code_produces(tagger: Tagger) -> None:
    examples = _doc_examples()
    assert len(examples) >= 4
    for fields in examples:
        out = extract_phrases(tagger.tag([fields["caption"]])[0])
        got_kept = " | ".join(f'"{p.text}" (head {p.head_lemma})' for p in out.phrases)
        got_rejected = " | ".join(f'"{r.text}" {r.reason}' for r in out.rejected)
        assert fields["kept"] == (got_kept or "-"), fields["caption"]
        assert fields["rejected"] == (got_rejected or "-"), fields["caption"]
