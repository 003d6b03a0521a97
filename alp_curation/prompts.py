"""Prompt-ensemble text embeddings for phrases (ALP paper, Sec. 3.2; ViLD's 63 templates).

Each phrase is written into every template ("a photo of a {}."), the prompts are encoded, each
prompt embedding is L2-normalised, the T embeddings of a phrase are averaged and the mean is
re-normalised, as open_clip's ``build_zero_shot_classifier`` does for class names.

The templates ship as package data (``alp_curation/data/vild_prompt_templates.txt``, one template a
line); ``{}`` takes the phrase and ``{article}`` takes "a" or "an".
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tqdm import tqdm

    from alp_curation.encoders import TextEncoder

__all__ = ["article_for", "ensemble_embeddings", "fill_templates", "load_templates"]

TEMPLATES_RESOURCE = "vild_prompt_templates.txt"
N_VILD_TEMPLATES = 63

# The rule "an before a, e, i, o, u" follows the spelling, not the sound. The first words below are
# the common exceptions: a silent h takes "an", a u / eu / o read as "y" / "w" takes "a". The list
# is deliberately short; letters read out as names ("an fbi agent", "an x-ray") and numerals are
# not handled.
_AN_EXCEPTIONS = frozenset(
    {"hour", "hours", "hourly", "hourglass", "honest", "honor", "honour", "heir", "heirloom"}
)
_A_EXCEPTIONS = frozenset(
    {
        "one",
        "once",
        "uniform",
        "uniforms",
        "unicorn",
        "unicorns",
        "unicycle",
        "unicycles",
        "union",
        "unit",
        "units",
        "universal",
        "university",
        "unique",
        "usb",
        "used",
        "useful",
        "user",
        "usual",
        "utensil",
        "utensils",
        "utility",
        "ukulele",
        "ukuleles",
        "urinal",
        "urinals",
        "european",
        "eucalyptus",
        "ewe",
        "ewes",
    }
)


@functools.cache
def load_templates() -> tuple[str, ...]:
    """The 63 ViLD prompt templates, in file order."""
    text = (
        importlib.resources.files("alp_curation")
        .joinpath("data", TEMPLATES_RESOURCE)
        .read_text(encoding="utf-8")
    )
    templates = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(templates) != N_VILD_TEMPLATES:
        raise RuntimeError(
            f"alp_curation/data/{TEMPLATES_RESOURCE}: expected {N_VILD_TEMPLATES} templates, "
            f"found {len(templates)}"
        )
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise RuntimeError(f"alp_curation/data/{TEMPLATES_RESOURCE}: templates without {{}}: {bad}")
    return templates


def article_for(phrase: str) -> str:
    """Return "an" before a vowel sound, else "a" (the spelling rule plus the exception lists)."""
    words = phrase.split()
    if not words:
        raise ValueError("article_for: phrase is empty; expected at least one word")
    first = words[0].lower()
    if first in _AN_EXCEPTIONS:
        return "an"
    if first in _A_EXCEPTIONS:
        return "a"
    return "an" if first[0] in "aeiou" else "a"


def fill_templates(phrase: str, templates: Sequence[str] | None = None) -> list[str]:
    """Write ``phrase`` into each template; ``{article}`` becomes "a" or "an" (see article_for).

    >>> fill_templates("apple", ["a photo of {article} {}.", "the {}."])
    ['a photo of an apple.', 'the apple.']
    """
    if templates is None:
        templates = load_templates()
    if not phrase.strip():
        raise ValueError("fill_templates: phrase is empty; expected at least one word")
    article = article_for(phrase)
    # The phrase is an argument of format(), never part of the format string, so braces in a
    # phrase are copied as they are.
    return [template.format(phrase, article=article) for template in templates]


def ensemble_embeddings(
    encoder: TextEncoder,
    phrases: Sequence[str],
    *,
    batch_size: int = 1024,
    templates: Sequence[str] | None = None,
    progress: bool = False,
    on_embedded: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Prompt-ensemble embedding of each phrase: float32 (N, encoder.dim), unit rows.

    ``batch_size`` bounds the prompts sent to ``encoder.encode`` at once; a batch holds whole
    phrases (``batch_size // T`` of them, at least one), so memory stays at one batch of prompt
    embeddings plus the (N, D) result. Phrases are not deduplicated here: the caller does that.
    A prompt embedding of norm 0 stays 0 after normalisation (eps 1e-12, as torch's F.normalize).
    ``progress`` shows a tqdm bar; ``on_embedded(n)`` is called after each batch of ``n`` phrases
    (the pipelines' progress counters).
    """
    if batch_size < 1:
        raise ValueError(f"ensemble_embeddings: batch_size must be >= 1, got {batch_size}")
    if templates is None:
        templates = load_templates()
    n_templates = len(templates)
    if n_templates == 0:
        raise ValueError("ensemble_embeddings: templates is empty")
    out = np.zeros((len(phrases), encoder.dim), dtype=np.float32)
    if len(phrases) == 0:
        return out
    phrases_per_batch = max(1, batch_size // n_templates)
    bar = _progress_bar(len(phrases), encoder.id) if progress else None
    try:
        for start in range(0, len(phrases), phrases_per_batch):
            chunk = phrases[start : start + phrases_per_batch]
            prompts = [text for phrase in chunk for text in fill_templates(phrase, templates)]
            emb = np.asarray(encoder.encode(prompts), dtype=np.float32)
            if emb.shape != (len(prompts), encoder.dim):
                raise ValueError(
                    f"ensemble_embeddings: encoder {encoder.id} returned shape {emb.shape} for "
                    f"{len(prompts)} prompts; expected ({len(prompts)}, {encoder.dim})"
                )
            # Naming convention: N = phrases in this chunk, T = templates, D = embedding dim.
            per_template = emb.reshape(len(chunk), n_templates, encoder.dim)  # (N, T, D)
            per_template = _l2_normalise(per_template)  # (N, T, D), unit along D
            out[start : start + len(chunk)] = _l2_normalise(per_template.mean(axis=1))  # (N, D)
            if bar is not None:
                bar.update(len(chunk))
            if on_embedded is not None:
                on_embedded(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return out


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)


def _progress_bar(total: int, encoder_id: str) -> tqdm:
    from tqdm.auto import tqdm as auto_tqdm  # imported here: only callers who ask pay for it

    return auto_tqdm(total=total, unit="phrase", desc=f"embedding ({encoder_id})")
