"""Captions and speech timing of synthetic Localized Narratives.

A caption names every object once with an article and a noun phrase "[size] [colour] class"
("a big red circle"), wrapped in the filler real LocNar captions carry: openers ("In this picture
we can see"), connectors, spatial words that are true of the drawing ("on the left"), sentences
about the background stuff and the occasional pronoun sentence ("It is on the table.").

Speech: words at a per-annotator rate, pauses at commas, full stops and sometimes before an object;
the recogniser's utterances hold 1-3 words without punctuation, are sometimes lower-cased, and a few
are untimed (start = end = 0), rarely the ones holding an object noun.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from alp_dataset.synthetic.records import Background, SyntheticObject
from alp_dataset.synthetic.scenes import SCENE_BY_NAME, fill_stuff

ANNOTATOR_POOL = 48  # annotators, each with a style of speaking and pointing
_STYLE_STREAM = 0x57E1  # keeps annotator-style seeds apart from image seeds [seed, index]

OPENERS: tuple[str, ...] = (
    "In this picture we can see {}.",
    "In this image we can see {}.",
    "In this image I can see {}.",
    "Here we can see {}.",
    "In the given image we can see {}.",
    "This picture consists of {}.",
    "In this picture there is {}.",
    "I can see {} in this image.",
    "We can see {} in this picture.",
    "This image contains {}.",
)
CONNECTORS: tuple[str, ...] = (
    "Beside it there is {}.",
    "Next to it we can see {}.",
    "We can also see {}.",
    "There is also {}.",
    "Apart from that there is {}.",
    "On the other side there is {}.",
    "I can also see {}.",
)
SPLIT_CONNECTORS: tuple[str, ...] = ("There is also {}.", "Beside them we can see {}.")
LOCATIVE_TAILS: tuple[str, ...] = (" there is {}.", " we can see {}.", " I can see {}.")
LIST_JOINERS: tuple[str, ...] = (" and ", " and ", ", and ", " and also ")
GENERIC_SENTENCES: tuple[str, ...] = ("It looks like a drawing.", "This is an animated image.")
_TRAILING_PUNCTUATION = ",.;:!?"


@dataclass(frozen=True)
class AnnotatorStyle:
    """How one annotator speaks and moves the mouse; fixed per (seed, annotator_id)."""

    annotator_id: int
    seconds_per_char: float  # speaking speed
    pointer_lag: float  # seconds the pointer trails the words (negative: it leads)
    group_p: tuple[float, float, float]  # utterances of 1, 2, 3 words
    lower_case_p: float  # utterance written lower-case
    untimed_p: float  # utterance left untimed by the recogniser
    size_word_p: float  # says "small" / "big" when it fits
    spatial_p: float  # adds where the object is ("on the left")
    extra_p: float  # adds background / pronoun sentences
    sample_dt: float  # seconds between mouse samples
    coverage: float  # part of the object's width and height scribbled over
    sloppy_p: float  # scribble spills well around the object
    circling_p: float  # scribbles by circling (else zig-zag)
    excursion_p: float  # leaves the image while talking filler


def annotator_style(seed: int, annotator_id: int) -> AnnotatorStyle:
    rng = np.random.default_rng([seed, _STYLE_STREAM, annotator_id])
    single = rng.uniform(0.5, 0.8)
    double = (1.0 - single) * rng.uniform(0.55, 0.8)
    return AnnotatorStyle(
        annotator_id=annotator_id,
        seconds_per_char=rng.uniform(0.045, 0.075),
        pointer_lag=rng.uniform(-0.3, 0.6),
        group_p=(single, double, 1.0 - single - double),
        lower_case_p=rng.uniform(0.0, 0.3),
        untimed_p=rng.uniform(0.0, 0.04),
        size_word_p=rng.uniform(0.6, 1.0),
        spatial_p=rng.uniform(0.1, 0.6),
        extra_p=rng.uniform(0.3, 0.9),
        sample_dt=rng.uniform(0.04, 0.1),
        coverage=rng.uniform(0.75, 1.0),
        sloppy_p=rng.uniform(0.0, 0.25),
        circling_p=rng.uniform(0.2, 0.8),
        excursion_p=rng.uniform(0.05, 0.5),
    )


@dataclass(frozen=True)
class PhraseSpan:
    """Where an object is named: the phrase (adjectives + noun) and the article before it."""

    object_id: int
    phrase: str
    start_char: int
    end_char: int
    article_char: int


@dataclass(frozen=True)
class Caption:
    text: str
    phrases: tuple[PhraseSpan, ...]  # in caption order


@dataclass(frozen=True)
class Speech:
    """Timing of the spoken caption."""

    word_spans: tuple[tuple[int, int], ...]  # char span of each whitespace-separated word
    word_times: tuple[tuple[float, float], ...]  # when each word was really spoken
    timed_caption: tuple[dict[str, object], ...]  # LocNar utterances
    word_timed: tuple[bool, ...]  # whether the word's utterance carries a timing
    end: float  # end of the last word


def spatial_fillers(box_xyxy_norm: tuple[float, float, float, float]) -> tuple[str, ...]:
    """Location phrases that are true of a box ("on the left", "at the top right")."""
    x0, y0, x1, y1 = box_xyxy_norm
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h = "left" if cx < 0.36 else "right" if cx > 0.64 else ""
    v = "top" if cy < 0.36 else "bottom" if cy > 0.64 else ""
    if h and v:
        return (f"in the {v} {h} corner", f"at the {v} {h}", f"on the {h} side")
    if h:
        return (f"on the {h}", f"on the {h} side", f"on the {h} side of the image")
    if v:
        return (f"at the {v}", f"at the {v} of the image")
    return ("in the middle", "in the centre", "in the middle of the image")


class _Builder:
    """Appends caption text and records where each object's phrase lands."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.phrases: list[PhraseSpan] = []

    def text(self, s: str) -> None:
        self.parts.append(s)
        self.length += len(s)

    def caption(self) -> Caption:
        return Caption("".join(self.parts), tuple(self.phrases))


class _Narrator:
    """Builds one caption for one annotator; all randomness comes from `rng`."""

    def __init__(
        self,
        rng: np.random.Generator,
        style: AnnotatorStyle,
        objects: tuple[SyntheticObject, ...],
        background: Background,
    ) -> None:
        self.rng, self.style, self.objects, self.background = rng, style, objects, background
        self.scene = SCENE_BY_NAME[background.scene]
        self.b = _Builder()
        counts: dict[str, int] = {}
        for obj in objects:
            counts[obj.class_name] = counts.get(obj.class_name, 0) + 1
        self.class_counts = counts

    def pick(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.random() * len(options))]

    def noun_phrase(self, obj: SyntheticObject) -> None:
        words = []
        if obj.size_word and self.rng.random() < self.style.size_word_p:
            words.append(obj.size_word)
        # The colour tells apart objects of one class; otherwise annotators sometimes skip it.
        if self.class_counts[obj.class_name] > 1 or self.rng.random() < 0.92:
            words.append(obj.colour)
        words.append(obj.class_name)
        phrase = " ".join(words)
        article_char = self.b.length
        self.b.text(("an " if phrase[0] in "aeiou" else "a ") + phrase)
        start = self.b.length - len(phrase)
        self.b.phrases.append(PhraseSpan(obj.object_id, phrase, start, self.b.length, article_char))
        if self.rng.random() < self.style.spatial_p:
            self.b.text(" " + self.pick(spatial_fillers(obj.box_xyxy_norm)))

    def object_list(self, objs: list[SyntheticObject]) -> None:
        joiner = self.pick(LIST_JOINERS)
        for k, obj in enumerate(objs):
            if k:
                self.b.text(joiner if k == len(objs) - 1 else ", ")
            self.noun_phrase(obj)

    def sentence(self, template: str, objs: list[SyntheticObject]) -> None:
        if self.b.length:
            self.b.text(" ")
        before, after = template.split("{}")
        self.b.text(before)
        self.object_list(objs)
        self.b.text(after)

    def plain(self, sentence: str) -> None:
        self.b.text((" " if self.b.length else "") + sentence)

    def stuff_sentence(self) -> str:
        template = self.pick(self.scene.sentences)
        return fill_stuff(template, self.background.colour_word, len(self.objects))

    def pronoun_sentence(self, many: bool) -> str:
        if self.rng.random() < 0.25:
            return self.pick(GENERIC_SENTENCES)
        subject = self.pick(("They are", "All of them are")) if many else "It is"
        return f"{subject} {self.scene.where}."

    def narrate(self) -> Caption:
        rng, objs = self.rng, list(self.objects)
        if rng.random() < 0.4:  # some describe left to right, others in any order
            objs.sort(key=lambda o: o.box_xyxy_px[0] + o.box_xyxy_px[2])
        else:
            objs = [objs[k] for k in rng.permutation(len(objs))]
        many = len(objs) > 1
        extra = self.style.extra_p
        structure = self.pick(("list",) * 8 + ("sentences",) * 6 + ("stuff_first", "split") * 3)
        if structure == "stuff_first":
            intro = fill_stuff(self.scene.intro, self.background.colour_word, len(objs))
            self.plain(self.pick(OPENERS).replace("{}", intro))
            self.sentence(self.scene.locative + self.pick(LOCATIVE_TAILS), objs)
            if rng.random() < extra / 4:  # the stuff was named already: no "on the floor" again
                self.plain(self.pick(GENERIC_SENTENCES))
            return self.b.caption()
        if structure == "sentences" and many:
            self.sentence(self.pick(OPENERS), objs[:1])
            pronoun_after = int(rng.random() * len(objs)) if rng.random() < extra / 2 else -1
            for k, obj in enumerate(objs[1:], start=1):
                if pronoun_after == k - 1:
                    self.plain(self.pronoun_sentence(False))
                self.sentence(self.pick(CONNECTORS), [obj])
        elif structure == "split" and len(objs) > 2:
            cut = 1 + int(rng.random() * (len(objs) - 1))
            self.sentence(self.pick(OPENERS), objs[:cut])
            self.sentence(self.pick(SPLIT_CONNECTORS), objs[cut:])
        else:
            self.sentence(self.pick(OPENERS), objs)
            if rng.random() < extra / 2:
                self.plain(self.pronoun_sentence(many))
        if rng.random() < extra:
            self.plain(self.stuff_sentence())
        return self.b.caption()


def make_caption(
    rng: np.random.Generator,
    style: AnnotatorStyle,
    objects: tuple[SyntheticObject, ...],
    background: Background,
) -> Caption:
    return _Narrator(rng, style, objects, background).narrate()


def speak(rng: np.random.Generator, style: AnnotatorStyle, caption: Caption) -> Speech:
    """Time each word, then group words into utterances as a speech recogniser reports them."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", caption.text)]
    n = len(words)
    articles = {p.article_char for p in caption.phrases}
    nouns = {p.end_char for p in caption.phrases}  # a word ending where a phrase ends is its noun
    # All draws at once (scalar draws dominate the cost otherwise): (n, 8) uniforms in [0, 1).
    u = rng.random((n, 8)).tolist()
    times: list[tuple[float, float]] = []
    t = 0.3 + 1.3 * rng.random()
    for (start, end), draws in zip(words, u, strict=True):
        hesitate, pause, stretch, gap, stop = draws[:5]
        word = caption.text[start:end]
        if start in articles and hesitate < 0.3:
            t += 0.2 + 0.7 * pause  # hesitation before naming the next thing
        n_chars = len(word.rstrip(_TRAILING_PUNCTUATION))
        duration = (0.1 + style.seconds_per_char * n_chars) * (0.85 + 0.35 * stretch)
        times.append((t, t + duration))
        t += duration + 0.02 + 0.1 * gap
        if word.endswith(","):
            t += 0.15 + 0.45 * stop
        elif word.endswith("."):
            t += 0.4 + 0.9 * stop

    p1, p2, _ = style.group_p
    utterances: list[dict[str, object]] = []
    word_timed: list[bool] = []
    i = 0
    while i < n:
        _, _, _, _, _, group, lower, untimed = u[i]
        size = 1 if group < p1 else 2 if group < p1 + p2 else 3
        j = i + 1
        # Utterances never run across the end of a sentence.
        while j < min(i + size, n) and caption.text[words[j - 1][1] - 1] != ".":
            j += 1
        text = " ".join(caption.text[s:e].rstrip(_TRAILING_PUNCTUATION) for s, e in words[i:j])
        if lower < style.lower_case_p:
            text = text.lower()
        holds_noun = any(e in nouns or e - 1 in nouns for _, e in words[i:j])
        # Object nouns are rarely left untimed, but sometimes: the phrase then has no interval.
        timed = untimed >= style.untimed_p * (0.25 if holds_noun else 1.0)
        start_time = round(times[i][0], 3) if timed else 0.0
        end_time = round(times[j - 1][1], 3) if timed else 0.0
        utterances.append({"utterance": text, "start_time": start_time, "end_time": end_time})
        word_timed.extend([timed] * (j - i))
        i = j
    return Speech(
        word_spans=tuple(words),
        word_times=tuple(times),
        timed_caption=tuple(utterances),
        word_timed=tuple(word_timed),
        end=times[-1][1] if times else 0.0,
    )


def phrase_words(speech: Speech, start_char: int, end_char: int) -> list[int]:
    """Indices of the words that overlap a char span."""
    return [k for k, (s, e) in enumerate(speech.word_spans) if s < end_char and e > start_char]
