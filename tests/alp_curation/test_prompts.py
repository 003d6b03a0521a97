"""Tests for alp_curation.prompts: ViLD templates, the article rule, the ensemble arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alp_curation.prompts import article_for, ensemble_embeddings, fill_templates, load_templates

TOY_TEMPLATES = ["a photo of {article} {}.", "the {}."]


class TemplateIndexEncoder:
    """A tiny deterministic stand-in for a real text encoder (CLIP, MiniLM).

    For prompts made from TOY_TEMPLATES it returns (3, 4) for "a photo of ..." and (0, 2) for
    "the ...", each times the prompt's length, so every step of normalise -> mean -> renormalise
    can be worked out by hand. Records the batches it was given.
    """

    id = "test:template-index"
    dim = 2

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        vectors = [(0.0, 2.0) if t.startswith("the ") else (3.0, 4.0) for t in texts]
        # Scaled by the text length: the per-template normalisation must undo it.
        return np.array(
            [[len(t) * x, len(t) * y] for t, (x, y) in zip(texts, vectors, strict=True)],
            dtype=np.float32,
        )


def test_load_templates_gives_the_63_vild_templates() -> None:
    templates = load_templates()
    assert len(templates) == 63
    assert templates[0] == "There is {article} {} in the scene."
    assert templates[-1].count("{}") == 1
    assert all("{}" in t for t in templates)
    assert sum("{article}" in t for t in templates) == 15


@pytest.mark.parametrize(
    ("phrase", "article"),
    [
        ("apple", "an"),
        ("car", "a"),
        ("orange cat", "an"),
        ("umbrella", "an"),
        ("Elephant", "an"),
        ("red car", "a"),
        # Known exceptions of the spelling rule (silent h; u / eu / o read as "y" / "w").
        ("hour hand", "an"),
        ("honest man", "an"),
        ("uniform", "a"),
        ("unicorn toy", "a"),
        ("one way sign", "a"),
        ("european flag", "a"),
        # Not exceptions: the rule still follows the first letter.
        ("house", "a"),
        ("umpire", "an"),
    ],
)
def test_article_rule(phrase: str, article: str) -> None:
    assert article_for(phrase) == article


def test_fill_templates_applies_the_article_and_the_phrase() -> None:
    prompts = fill_templates("apple")
    assert len(prompts) == 63
    assert prompts[0] == "There is an apple in the scene."
    assert prompts[1] == "There is the apple in the scene."
    assert sum(" an apple" in p for p in prompts) == 15  # "{article} {}" templates
    assert not any("{" in p or "}" in p for p in prompts)
    assert fill_templates("car", TOY_TEMPLATES) == ["a photo of a car.", "the car."]
    # Braces in a phrase are copied, never read as format fields.
    assert fill_templates("{x}", ["the {}."]) == ["the {x}."]


def test_fill_templates_rejects_an_empty_phrase() -> None:
    with pytest.raises(ValueError, match="phrase is empty"):
        fill_templates("  ")


def test_ensemble_arithmetic_by_hand() -> None:
    encoder = TemplateIndexEncoder()
    emb = ensemble_embeddings(encoder, ["dog", "apple pie"], templates=TOY_TEMPLATES)
    # Per template: (0.6, 0.8) and (0, 1); mean (0.3, 0.9); norm sqrt(0.9) -> (1, 3) / sqrt(10),
    # whatever the prompt lengths. Without the per-template normalisation "dog" would give
    # mean(17 * (3, 4), 8 * (0, 2)) = (25.5, 42), direction (0.52, 0.85): not (0.32, 0.95).
    expected = np.array([1.0, 3.0]) / math.sqrt(10.0)
    assert emb.dtype == np.float32
    assert emb.shape == (2, 2)
    np.testing.assert_allclose(emb, [expected, expected], rtol=0, atol=1e-7)
    # Phrases are written into the templates phrase by phrase, template by template.
    assert encoder.batches == [
        ["a photo of a dog.", "the dog.", "a photo of an apple pie.", "the apple pie."]
    ]


def test_ensemble_batches_hold_whole_phrases() -> None:
    encoder = TemplateIndexEncoder()
    phrases = ["dog", "cat", "owl", "eel", "ant"]
    emb = ensemble_embeddings(encoder, phrases, templates=TOY_TEMPLATES, batch_size=5)
    assert [len(b) for b in encoder.batches] == [4, 4, 2]  # 5 // 2 = 2 phrases per batch
    # batch_size smaller than T still sends one whole phrase per batch.
    small = TemplateIndexEncoder()
    emb_small = ensemble_embeddings(small, phrases, templates=TOY_TEMPLATES, batch_size=1)
    assert [len(b) for b in small.batches] == [2] * 5
    np.testing.assert_array_equal(emb, emb_small)


def test_ensemble_of_no_phrases_is_empty_and_encodes_nothing() -> None:
    encoder = TemplateIndexEncoder()
    emb = ensemble_embeddings(encoder, [], templates=TOY_TEMPLATES)
    assert emb.shape == (0, 2) and emb.dtype == np.float32
    assert encoder.batches == []


def test_ensemble_checks_the_encoder_output_shape() -> None:
    class ShortEncoder(TemplateIndexEncoder):
        def encode(self, texts: list[str]) -> np.ndarray:
            return super().encode(texts)[:-1]

    with pytest.raises(ValueError, match=r"test:template-index returned shape \(1, 2\)"):
        ensemble_embeddings(ShortEncoder(), ["dog"], templates=TOY_TEMPLATES)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ensemble_embeddings(TemplateIndexEncoder(), ["dog"], batch_size=0)


def test_ensemble_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    encoder = TemplateIndexEncoder()
    ensemble_embeddings(encoder, ["dog", "cat"], templates=TOY_TEMPLATES, progress=True)
    assert "2/2" in capsys.readouterr().err


class RandomTableEncoder:
    """Stand-in encoder: each prompt maps to a row of a fixed random table (looked up by text)."""

    id = "test:random-table"
    dim = 4

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scales=st.lists(st.floats(0.01, 100.0), min_size=4, max_size=4),
)
def test_ensemble_rows_are_unit_and_ignore_prompt_scale(seed: int, scales: list[float]) -> None:
    templates = ["a {}", "the {}", "one {}", "my {}"]
    phrases = ["dog", "red car"]
    rng = np.random.default_rng(seed)
    prompts = [p for phrase in phrases for p in fill_templates(phrase, templates)]
    table = {p: rng.normal(size=4) + 0.1 for p in prompts}
    emb = ensemble_embeddings(RandomTableEncoder(table), phrases, templates=templates)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    # Rescaling any prompt's embedding changes nothing: each is normalised before the mean.
    scaled = {p: v * scales[i % 4] for i, (p, v) in enumerate(table.items())}
    emb_scaled = ensemble_embeddings(RandomTableEncoder(scaled), phrases, templates=templates)
    np.testing.assert_allclose(emb_scaled, emb, atol=1e-5)
