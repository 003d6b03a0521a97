from __future__ import annotations

import json

import pytest

from alp_curation.curate import NO_BOX, NO_PHRASES, NO_TIMING, NO_TRACES, curate_record
from alp_curation.locnar import parse_record
from alp_curation.tagging import Token

# "In this picture a red car and a dog on the grass." tagged by hand, so that these tests check
# the curation logic alone, independently of what a spaCy model version decides.
CAPTION = "In this picture a red car and a dog on the grass."
TAGS = [
    ("In", "ADP", "in"),
    ("this", "DET", "this"),
    ("picture", "NOUN", "picture"),
    ("a", "DET", "a"),
    ("red", "ADJ", "red"),
    ("car", "NOUN", "car"),
    ("and", "CCONJ", "and"),
    ("a", "DET", "a"),
    ("dog", "NOUN", "dog"),
    ("on", "ADP", "on"),
    ("the", "DET", "the"),
    ("grass", "NOUN", "grass"),
    (".", "PUNCT", "."),
]


def tokens_for(caption: str, tags: list[tuple[str, str, str]]) -> tuple[Token, ...]:
    tokens, cursor = [], 0
    for text, pos, lemma in tags:
        start = caption.index(text, cursor)
        cursor = start + len(text)
        tokens.append(Token(text, start, cursor, pos, pos, lemma))
    return tuple(tokens)


def utterances(words_times: list[tuple[str, float, float]]) -> list[dict]:
    return [{"utterance": w, "start_time": s, "end_time": e} for w, s, e in words_times]


def make_line(**overrides: object) -> str:
    record = {
        "dataset_id": "test",
        "image_id": "img1",
        "annotator_id": 3,
        "caption": CAPTION,
        "timed_caption": utterances(
            [
                ("In this", 0.0, 0.4),
                ("picture", 0.4, 0.8),
                ("a", 1.0, 1.1),
                ("red", 1.1, 1.4),
                ("car", 1.4, 1.8),
                ("and", 2.0, 2.2),
                ("a", 3.0, 3.1),
                ("dog", 3.1, 3.5),
                ("on the", 3.6, 3.9),
                ("grass.", 3.9, 4.3),
            ]
        ),
        # The pointer sits on the car (top left) until 2.5 s, then on the dog (bottom right).
        "traces": [
            [{"x": 0.10 + 0.01 * i, "y": 0.20 + 0.01 * i, "t": 0.05 + 0.1 * i} for i in range(25)],
            [{"x": 0.70 + 0.01 * i, "y": 0.60 + 0.01 * i, "t": 2.55 + 0.1 * i} for i in range(20)],
        ],
    }
    record.update(overrides)
    return json.dumps(record)


def test_curate_record_boxes_follow_the_padded_time_window() -> None:
    record = parse_record(make_line())
    result = curate_record(record, tokens_for(CAPTION, TAGS), temporal_padding=0.5)
    assert result.no_alp_reason is None
    assert [a.phrase for a in result.alps] == ["red car", "dog"]
    car, dog = result.alps
    # "red car" is spoken over (1.1, 1.8); the padded window (0.6, 2.3) holds the car points at
    # t = 0.65 .. 2.25, i.e. i = 6 .. 22.
    assert car.t_start == pytest.approx(1.1) and car.t_end == pytest.approx(1.8)
    assert car.n_points == 17
    assert car.box_xyxy_norm == pytest.approx((0.16, 0.26, 0.32, 0.42))
    # "dog" is spoken over (3.1, 3.5); the window (2.6, 4.0) holds t = 2.65 .. 3.95, i = 1 .. 14.
    assert dog.n_points == 14
    assert dog.box_xyxy_norm == pytest.approx((0.71, 0.61, 0.84, 0.74))
    assert (car.start_char, car.end_char) == (18, 25)
    assert car.head_lemma == "car"
    reasons = {d.text: d.reason for d in result.dropped}
    assert reasons == {"picture": "generic", "grass": "stuff"}


def test_no_traces_is_reported_not_dropped() -> None:
    record = parse_record(make_line(traces=[]))
    result = curate_record(record, tokens_for(CAPTION, TAGS))
    assert result.alps == ()
    assert result.no_alp_reason == NO_TRACES
    assert {d.text for d in result.dropped if d.reason == NO_TRACES} == {"red car", "dog"}


def test_no_phrases() -> None:
    caption = "In this picture."
    record = parse_record(make_line(caption=caption))
    result = curate_record(record, tokens_for(caption, [*TAGS[:3], (".", "PUNCT", ".")]))
    assert result.no_alp_reason == NO_PHRASES
    assert [d.reason for d in result.dropped] == ["generic"]


def test_untimed_phrases_give_no_timing() -> None:
    untimed = utterances([(w, 0.0, 0.0) for w in CAPTION.split()])
    record = parse_record(make_line(timed_caption=untimed))
    result = curate_record(record, tokens_for(CAPTION, TAGS))
    assert result.no_alp_reason == NO_TIMING
    assert {d.text: d.reason for d in result.dropped}["dog"] == "untimed_utterances"


def test_phrases_spoken_while_the_pointer_was_away_give_no_box() -> None:
    late = [[{"x": 0.5, "y": 0.5, "t": 30.0 + 0.1 * i} for i in range(10)]]
    record = parse_record(make_line(traces=late))
    result = curate_record(record, tokens_for(CAPTION, TAGS))
    assert result.no_alp_reason == NO_BOX
    assert {d.text: d.reason for d in result.dropped}["red car"] == "too_few_points"


def test_padding_widens_the_window() -> None:
    record = parse_record(make_line())
    tokens = tokens_for(CAPTION, TAGS)
    narrow = curate_record(record, tokens, temporal_padding=0.0).alps[0]
    wide = curate_record(record, tokens, temporal_padding=1.0).alps[0]
    assert narrow.n_points < wide.n_points
