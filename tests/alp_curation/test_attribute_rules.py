"""The compiled attribute_ruler match: the matches of spaCy's Matcher, and the same tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy
from spacy.tokens import Doc

from alp_curation import attribute_rules
from alp_curation.attribute_rules import compile_rules, speed_up_attribute_ruler
from alp_curation.tagging import Tagger, load_spacy

SAMPLE_NARRATIVES = (
    Path(__file__).resolve().parents[2] / "samples" / "synthetic" / "narratives.jsonl"
)
HARD = [
    "I ain't gonna say y'all got nothin' here.\n\n  Two  spaces, a tab\tand 's.",
    "Ain't it? Gotta wanna 'cause nuthin' ain't nothin'.",
    "U.S.A. vs. Dr. O'Neil's cat's toys—ok?! 'Tis the dogs' bowls.",
    "   ",
    "",
    "In this image we can see a woman holding a umbrella, there are trees and the sky.",
]


def _captions() -> list[str]:
    lines = SAMPLE_NARRATIVES.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["caption"] for line in lines] + HARD


def test_the_compiled_match_is_the_matchers_on_every_caption() -> None:
    nlp = load_spacy("en_core_web_sm", compiled_rules=False)
    ruler = nlp.get_pipe("attribute_ruler")
    compiled = compile_rules(ruler)
    assert compiled is not None
    with nlp.select_pipes(disable=["attribute_ruler", "lemmatizer"]):
        docs = list(nlp.pipe(_captions()))
    assert sum(len(d) for d in docs) > 1000
    for doc in docs:
        assert compiled(doc) == ruler.match(doc), doc.text


def test_every_token_is_the_same_with_the_compiled_match() -> None:
    captions = _captions()
    fast, slow = Tagger("en_core_web_sm"), Tagger("en_core_web_sm")
    slow._nlp = load_spacy("en_core_web_sm", compiled_rules=False)
    assert isinstance(fast.nlp.get_pipe("attribute_ruler").match, attribute_rules.CompiledRules)
    assert not isinstance(slow.nlp.get_pipe("attribute_ruler").match, attribute_rules.CompiledRules)
    assert fast.tag(captions) == slow.tag(captions)
    # The morphology, which Token does not carry, too.
    for a, b in zip(fast.nlp.pipe(captions), slow.nlp.pipe(captions), strict=True):
        assert [str(t.morph) for t in a] == [str(t.morph) for t in b]


def _ruler_doc() -> tuple[spacy.Language, Doc]:
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    ruler.add([[{"TAG": "NN"}]], {"POS": "NOUN"})
    ruler.add([[{"TAG": {"IN": ["VBZ", "VBP"]}, "LOWER": "is"}]], {"POS": "AUX"})
    ruler.add([[{"LOWER": {"REGEX": "^dog"}}]], {"LEMMA": "dog"})
    ruler.add([[{"LOWER": "big"}, {"TAG": {"NOT_IN": ["NN"]}}]], {"POS": "ADJ"}, index=1)
    ruler.add([[{"IS_SPACE": True}]], {"POS": "SPACE"})
    ruler.add([[{"TAG": "NN"}], [{"LOWER": "dogs"}]], {"POS": "PROPN"})  # later rules win
    words = ["The", "dogs", "is", "big", "big", "dog", " ", "cat"]
    tags = ["DT", "NNS", "VBZ", "JJ", "JJ", "NN", "_SP", "NN"]
    return nlp, Doc(nlp.vocab, words=words, tags=tags)


def test_hand_made_rules_with_every_operator_match_as_the_matcher_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nlp, doc = _ruler_doc()
    ruler = nlp.get_pipe("attribute_ruler")
    compiled = compile_rules(ruler)
    assert compiled is not None
    expected = ruler.match(doc)
    assert compiled(doc) == expected
    assert {(r, s, e) for r, _, s, e in expected} >= {(0, 5, 6), (1, 2, 3), (3, 3, 5), (4, 6, 7)}
    monkeypatch.setattr(attribute_rules, "MAX_CACHED", 1)  # a cache that keeps clearing
    assert compile_rules(ruler)(doc) == expected  # type: ignore[misc]
    assert speed_up_attribute_ruler(nlp)
    assert [t.pos_ for t in nlp(doc)] == ["", "PROPN", "AUX", "", "ADJ", "PROPN", "SPACE", "PROPN"]


def test_a_rule_outside_the_compiled_language_keeps_the_matcher() -> None:
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    ruler.add([[{"LOWER": "a", "OP": "+"}]], {"POS": "DET"})
    assert compile_rules(ruler) is None
    assert not speed_up_attribute_ruler(nlp)
    assert not speed_up_attribute_ruler(spacy.blank("en"))  # no attribute_ruler at all
