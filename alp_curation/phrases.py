"""Caption phrases: adjectives and consecutive nouns, with stuff and generic words rejected.

The ALP paper (Sec. 3.1) "extract[s] adjectives and (consecutive) nouns as phrases" from the
POS-tagged caption and "discard[s] phrases with stuff classes like sky, water". This module states
that rule precisely; docs/phrases.md walks through examples produced by this code.

The rule, on the caption's tokens in order:

1. Whitespace tokens (POS ``SPACE``) are skipped.
2. Tokens joined by a hyphen with no space on either side form one *word* ("t-shirt",
   "black-and-white", "two-story"), which takes the POS of its last part. spaCy splits
   "t-shirt" into ``t``, ``-``, ``shirt``; the joined word keeps "t-shirt" whole.
3. A word is a *noun* when its POS is ``NOUN`` or ``PROPN``, an *adjective* when it is ``ADJ``,
   and it holds a letter. Nothing else counts: numbers (``NUM``: "two dogs" gives "dogs"),
   determiners, participles tagged ``VERB`` ("parked car" gives "car"), the possessive ``'s``
   (``PART``), punctuation, and words without a letter (emoji, symbols: the tagger labels an
   emoji ``NOUN`` or ``PROPN``) all end a phrase.
4. A phrase is a maximal run of one or more consecutive nouns together with the adjectives
   directly before it: ``ADJ* (NOUN|PROPN)+``. So "man's shirt" gives two phrases, "man" and
   "shirt"; "big, red car" gives "red car"; an adjective without a noun ("the car is red")
   gives none.
5. The phrase's *head* is its last word; ``head_lemma`` is the head's lower-cased lemma (for a
   hyphenated word, its leading parts as written plus the lemma of the last: "t-shirts" ->
   "t-shirt").

Each phrase is then kept or rejected, the first matching reason winning:

- ``"stuff"``: the head (by text or lemma), or the phrase's last words, name a COCO-Stuff class
  (``data/coco_stuff_names.txt``, turned into caption words by ``stuff_forms``): "grass",
  "blue sky", "brick wall". COCO *thing* classes whose last word is a stuff word ("traffic
  light", "dining table", "potted plant") are not stuff.
- ``"pronoun"`` / ``"generic"``: the head is in ``data/generic_words.txt`` ("someone", "one";
  "image", "background", "left side"). Only the head decides: "picture frame" is kept, "dog
  image" is rejected.

Normalised phrase text is the words lower-cased and joined by single spaces ("red car",
"t-shirt"). The functions here are pure and work on ``Token`` records, without spaCy.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alp_curation.tagging import Token

DATA_DIR = Path(__file__).resolve().parent / "data"

STUFF = "stuff"
PRONOUN = "pronoun"
GENERIC = "generic"
REJECTION_REASONS = (STUFF, PRONOUN, GENERIC)

NOUN_POS = frozenset({"NOUN", "PROPN"})
ADJ_POS = frozenset({"ADJ"})
HYPHENS = frozenset({"-", "\u2010", "\u2011"})  # hyphen-minus, hyphen, non-breaking hyphen
NO_LETTER_POS = "SYM"  # the POS a word without a letter counts as (rule 3), whatever it was tagged

# COCO-Stuff suffixes that only tell classes apart in the label set; a caption says the base word.
STUFF_SUFFIXES = ("-other", "-stuff", "-merged")

# Names whose hyphen joins a compound noun rather than "class-material": the class "window-blind"
# holds window blinds ("window" itself comes from "window-other").
_STUFF_COMPOUNDS = {"window-blind": ("window blind", "blind")}

# Spoken forms a name does not derive by rule: singulars of plural names (matching also compares
# lemmas, but the names themselves are plural) and run-together words said as two.
_STUFF_EXTRA_FORMS = {
    "clouds": ("cloud",),
    "leaves": ("leaf",),
    "stairs": ("stair",),
    "waterdrops": ("waterdrop", "water drop"),
    "playingfield": ("playing field",),
}

# COCO thing classes (the 80 detection classes) whose last word is a stuff word. They are objects
# the detector is evaluated on, so a phrase naming one is not discarded as stuff.
COCO_THINGS_ENDING_IN_STUFF = ("traffic light", "dining table", "potted plant")


@dataclass(frozen=True)
class Phrase:
    """A kept phrase: its normalised text, head lemma and where it sits in the caption."""

    text: str  # lower case, words joined by single spaces: "red cars", "t-shirt"
    head_lemma: str  # lower-cased lemma of the last noun: "car"
    start_char: int  # caption[start_char:end_char] is the phrase as written
    end_char: int
    word_spans: tuple[tuple[int, int], ...]  # char span of each word; a hyphenated word is one


@dataclass(frozen=True)
class RejectedPhrase:
    """A phrase the rule found but discarded, with one of ``REJECTION_REASONS``."""

    text: str
    start_char: int
    end_char: int
    reason: str


@dataclass(frozen=True)
class PhraseExtraction:
    phrases: tuple[Phrase, ...]  # in caption order
    rejected: tuple[RejectedPhrase, ...]  # in caption order


@dataclass(frozen=True, eq=False)
class PhraseVocabulary:
    """The word lists the rejection rules read; ``default_vocabulary()`` loads the shipped ones.

    Multi-word entries are tuples of lower-case words. ``generic`` maps a head word to its
    rejection reason (``"pronoun"`` or ``"generic"``).
    """

    stuff: frozenset[tuple[str, ...]]
    things: frozenset[tuple[str, ...]]
    generic: Mapping[str, str]
    # Last word -> the words before it, so a phrase is checked with two dict look-ups instead of
    # a scan over every name.
    _stuff_index: Mapping[str, frozenset[tuple[str, ...]]] = field(init=False, repr=False)
    _things_index: Mapping[str, frozenset[tuple[str, ...]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_stuff_index", _index_by_last_word(self.stuff))
        object.__setattr__(self, "_things_index", _index_by_last_word(self.things))


def _index_by_last_word(
    names: Collection[tuple[str, ...]],
) -> dict[str, frozenset[tuple[str, ...]]]:
    index: dict[str, set[tuple[str, ...]]] = {}
    for name in names:
        index.setdefault(name[-1], set()).add(name[:-1])
    return {last: frozenset(prefixes) for last, prefixes in index.items()}


@dataclass(frozen=True)
class _Word:
    """Tokens joined by hyphens, or one token: the unit the phrase rule counts."""

    text: str
    lemma: str  # lower case
    start_char: int
    end_char: int
    pos: str  # of the last part


def stuff_forms(name: str) -> tuple[str, ...]:
    """The words a caption would use for a COCO-Stuff class name, most specific last.

    ``"sky-other"`` -> ``("sky",)``: the suffixes -other / -stuff / -merged are dropped.
    ``"wall-brick"`` -> ``("wall", "brick wall")``: "class-material" names give the class and
    "material class" ("floor-wood" -> "floor", "wood floor"). The material alone ("brick") is
    not stuff. ``"window-blind"`` is a compound noun: ``("window blind", "blind")``. Plural and
    run-together names add singular and spaced forms: ``"clouds"`` -> ``("clouds", "cloud")``,
    ``"playingfield"`` -> ``("playingfield", "playing field")``.
    """
    base = name.strip().lower()
    for suffix in STUFF_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base in _STUFF_COMPOUNDS:
        forms: tuple[str, ...] = _STUFF_COMPOUNDS[base]
    elif "-" in base:
        cls, material = base.split("-", 1)
        forms = (cls, f"{material.replace('-', ' ')} {cls}")
    else:
        forms = (base,)
    return forms + _STUFF_EXTRA_FORMS.get(base, ())


def _data_lines(filename: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of a shipped data file, including comment lines."""
    # Next to this file rather than importlib.resources: under pytest, tests/alp_curation can make
    # "alp_curation" resolve as a namespace package whose resources are the test folder.
    text = (DATA_DIR / filename).read_text(encoding="utf-8")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]


def load_stuff_names() -> tuple[str, ...]:
    """The 91 COCO-Stuff class names as the dataset spells them ("wall-brick", "sky-other")."""
    return tuple(line for _, line in _data_lines("coco_stuff_names.txt") if line[:1] not in "#")


def load_generic_words() -> dict[str, str]:
    """Head word -> rejection reason, read from ``data/generic_words.txt``."""
    words: dict[str, str] = {}
    reason: str | None = None
    for n, line in _data_lines("generic_words.txt"):
        if line.startswith("# [") and line.endswith("]"):
            reason = line[3:-1]
            if reason not in (PRONOUN, GENERIC):
                raise ValueError(
                    f"generic_words.txt:{n}: section {reason!r}, expected one of "
                    f"{PRONOUN!r}, {GENERIC!r}"
                )
        elif line and not line.startswith("#"):
            if reason is None or " " in line or line != line.lower() or line in words:
                raise ValueError(
                    f"generic_words.txt:{n}: {line!r}, expected one lower-case word, listed "
                    "once, below a '# [pronoun]' or '# [generic]' section line"
                )
            words[line] = reason
    return words


def make_vocabulary(
    *,
    stuff_names: Collection[str],
    generic: Mapping[str, str],
    things: Collection[str] = COCO_THINGS_ENDING_IN_STUFF,
) -> PhraseVocabulary:
    """Build a vocabulary from COCO-Stuff-style names, a generic-word map and thing names."""
    for word, reason in generic.items():
        if reason not in (PRONOUN, GENERIC):
            raise ValueError(
                f"generic[{word!r}] = {reason!r}, expected one of {PRONOUN!r}, {GENERIC!r}"
            )
    return PhraseVocabulary(
        stuff=frozenset(tuple(form.split()) for name in stuff_names for form in stuff_forms(name)),
        things=frozenset(tuple(name.lower().split()) for name in things),
        generic={word.lower(): reason for word, reason in generic.items()},
    )


@functools.lru_cache(maxsize=1)
def default_vocabulary() -> PhraseVocabulary:
    """COCO-Stuff's 91 stuff classes and the shipped generic-word list."""
    return make_vocabulary(stuff_names=load_stuff_names(), generic=load_generic_words())


def _join_hyphenated(tokens: Sequence[Token]) -> list[_Word]:
    """Merge ``a - b - c`` runs written without spaces into one word; drop whitespace tokens."""
    toks = [t for t in tokens if t.pos != "SPACE" and not t.text.isspace()]
    words: list[_Word] = []
    i = 0
    while i < len(toks):
        j = i  # toks[i..j] is the current word
        while (
            j + 2 < len(toks)
            and toks[j].pos != "PUNCT"
            and toks[j + 1].text in HYPHENS
            and toks[j].end_char == toks[j + 1].start_char
            and toks[j + 1].end_char == toks[j + 2].start_char
            and toks[j + 2].text not in HYPHENS
            and toks[j + 2].pos != "PUNCT"
        ):
            j += 2
        parts = toks[i : j + 1]
        last = parts[-1]
        lemma = (last.lemma or last.text).lower()
        text = "".join(t.text for t in parts)
        words.append(
            _Word(
                text=text,
                lemma="".join(t.text for t in parts[:-1]).lower() + lemma,
                start_char=parts[0].start_char,
                end_char=last.end_char,
                pos=last.pos if any(c.isalpha() for c in text) else NO_LETTER_POS,
            )
        )
        i = j + 1
    return words


def _phrase_spans(words: Sequence[_Word]) -> list[tuple[int, int]]:
    """[start, end) word indices of each ``ADJ* (NOUN|PROPN)+`` maximal run."""
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        if words[i].pos not in NOUN_POS:
            i += 1
            continue
        end = i
        while end < len(words) and words[end].pos in NOUN_POS:
            end += 1
        start = i
        # The previous phrase ended with a noun, so these adjectives belong to no other phrase.
        while start > 0 and words[start - 1].pos in ADJ_POS:
            start -= 1
        spans.append((start, end))
        i = end
    return spans


def _ends_with(words: Sequence[_Word], index: Mapping[str, frozenset[tuple[str, ...]]]) -> bool:
    """Do the phrase's last words equal one of the indexed names? The last word may match by
    its text or its lemma, the words before it by text."""
    head = words[-1]
    for last in {head.text.lower(), head.lemma}:
        for prefix in index.get(last, ()):
            k = len(prefix)
            if k < len(words) and all(
                w.text.lower() == p for w, p in zip(words[-1 - k : -1], prefix, strict=True)
            ):
                return True
    return False


def _rejection(words: Sequence[_Word], vocabulary: PhraseVocabulary) -> str | None:
    if _ends_with(words, vocabulary._stuff_index) and not _ends_with(
        words, vocabulary._things_index
    ):
        return STUFF
    head = words[-1]
    for form in (head.text.lower(), head.lemma):
        if form in vocabulary.generic:
            return vocabulary.generic[form]
    return None


def extract_phrases(
    tokens: Sequence[Token], *, vocabulary: PhraseVocabulary | None = None
) -> PhraseExtraction:
    """Phrases of one caption's tokens (see the module docstring), kept and rejected.

    ``tokens`` are in caption order, as ``Tagger.tag`` returns them. ``vocabulary`` defaults to
    ``default_vocabulary()``.
    """
    vocab = default_vocabulary() if vocabulary is None else vocabulary
    words = _join_hyphenated(tokens)
    kept: list[Phrase] = []
    rejected: list[RejectedPhrase] = []
    for start, end in _phrase_spans(words):
        run = words[start:end]
        text = " ".join(w.text.lower() for w in run)
        reason = _rejection(run, vocab)
        if reason is None:
            kept.append(
                Phrase(
                    text=text,
                    head_lemma=run[-1].lemma,
                    start_char=run[0].start_char,
                    end_char=run[-1].end_char,
                    word_spans=tuple((w.start_char, w.end_char) for w in run),
                )
            )
        else:
            rejected.append(RejectedPhrase(text, run[0].start_char, run[-1].end_char, reason))
    return PhraseExtraction(phrases=tuple(kept), rejected=tuple(rejected))


def phrase_id(text: str) -> int:
    """Stable id of a normalised phrase: the first 8 bytes of its BLAKE2b hash as a signed int64.

    A hash, not a counter, so the same phrase has the same id in every run and every shard of the
    data, and the embedding cache can bucket phrases by ``phrase_id % n_buckets``.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
