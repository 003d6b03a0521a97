"""Caption text as the tagger and the time alignment read it, with offsets back into the caption.

Captions are typed or transcribed text, and may carry characters that show nothing but change
what a tokenizer sees: a zero-width joiner inside a word ("pi\\u200dnk") makes a word of its own
with an embedding of its own, a right-to-left override (U+202E) stays inside phrase text, and the
same word may come composed ("é") or decomposed ("e" + U+0301). `normalise_caption` gives the
text that is tagged and aligned: Unicode NFC, with zero-width characters and bidirectional
controls (`INVISIBLE`) dropped. Every character of it maps back to the characters of the caption
it came from, so phrases and words keep their offsets into the caption as written.

Dropped characters are attached to the character before them: a token that ends before a dropped
character ends after it in the caption ("pi\\u200dnk" is one token spanning all five characters).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

__all__ = ["INVISIBLE", "NormalisedCaption", "normalise_caption"]

INVISIBLE = frozenset(
    # zero-width space, non-joiner, joiner, word joiner, zero-width no-break space (BOM), soft
    # hyphen, Mongolian vowel separator
    "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"
    # bidirectional controls: Arabic letter mark, LRM, RLM, embeddings and overrides, isolates
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


@dataclass(frozen=True)
class NormalisedCaption:
    """``text`` and, for each of its characters, the caption span it came from.

    ``starts`` and ``ends`` are None when ``text`` is the caption itself (any ASCII caption).
    """

    caption: str
    text: str
    starts: tuple[int, ...] | None = None
    ends: tuple[int, ...] | None = None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The caption span of ``text[start:end]`` (a non-empty span)."""
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]


def _composes(chunk: str, char: str) -> bool:
    """Whether NFC joins ``char`` to ``chunk``: a combining mark, or a starter that composes with
    it (Hangul jamo)."""
    if char.isascii():  # never the second of a composition
        return False
    if unicodedata.combining(char):
        return True
    joined = unicodedata.normalize("NFC", chunk + char)
    return joined != unicodedata.normalize("NFC", chunk) + unicodedata.normalize("NFC", char)


def normalise_caption(caption: str) -> NormalisedCaption:
    """The caption in NFC with `INVISIBLE` characters dropped, and where each character came from.

    NFC is applied per chunk (a character and the ones composing with it), so a composed
    character maps to the whole chunk it came from.
    """
    if caption.isascii():
        return NormalisedCaption(caption, caption)
    kept = [(i, c) for i, c in enumerate(caption) if c not in INVISIBLE]
    chunks: list[list[tuple[int, str]]] = []
    for i, c in kept:
        if chunks and _composes("".join(ch for _, ch in chunks[-1]), c):
            chunks[-1].append((i, c))
        else:
            chunks.append([(i, c)])
    pieces = [unicodedata.normalize("NFC", "".join(c for _, c in chunk)) for chunk in chunks]
    filtered = "".join(c for _, c in kept)
    if "".join(pieces) != unicodedata.normalize("NFC", filtered):
        # Chunks did not reproduce NFC of the whole (not seen in practice): drop the invisible
        # characters only, which maps one to one.
        pieces = [c for _, c in kept]
        chunks = [[item] for item in kept]
    starts: list[int] = []
    own_ends: list[int] = []
    for chunk, piece in zip(chunks, pieces, strict=True):
        if len(piece) == len(chunk):
            starts += [i for i, _ in chunk]
            own_ends += [i + 1 for i, _ in chunk]
        else:
            starts += [chunk[0][0]] * len(piece)
            own_ends += [chunk[-1][0] + 1] * len(piece)
    # A character's span runs on over the dropped characters after it.
    following = [*starts[1:], len(caption)] if starts else []
    ends = [max(end, nxt) for end, nxt in zip(own_ends, following, strict=True)]
    return NormalisedCaption(caption, "".join(pieces), tuple(starts), tuple(ends))
