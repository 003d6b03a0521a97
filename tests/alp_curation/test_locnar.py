from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alp_curation.locnar import (
    REASONS,
    InvalidRecord,
    LocNarRecord,
    TraceSegment,
    Utterance,
    parse_record,
    record_to_json,
)


def valid_obj() -> dict[str, Any]:
    return {
        "dataset_id": "open_images",
        "image_id": "abc",
        "annotator_id": 7,
        "caption": "In this image there is a dog.",
        "timed_caption": [
            {"utterance": "In this", "start_time": 0.0, "end_time": 0.4},
            {"utterance": "image", "start_time": 0.4, "end_time": 0.9},
            {"utterance": "dog", "start_time": 2.0, "end_time": 2.5},
        ],
        "traces": [
            [{"x": 0.5, "y": 0.25, "t": 1.0}, {"x": 0.6, "y": 0.3, "t": 1.1}],
            [{"x": -0.05, "y": 1.05, "t": 0.2}, {"x": 0, "y": 1, "t": 0.2}],
        ],
        "voice_recording": "oid/abc_7.ogg",
    }


def line_of(obj: Any) -> str:
    return json.dumps(obj)


def assert_same_record(a: LocNarRecord, b: LocNarRecord) -> None:
    assert (a.dataset_id, a.image_id, a.annotator_id) == (b.dataset_id, b.image_id, b.annotator_id)
    assert (a.caption, a.utterances, a.voice_recording) == (
        b.caption,
        b.utterances,
        b.voice_recording,
    )
    assert len(a.traces) == len(b.traces)
    for sa, sb in zip(a.traces, b.traces, strict=True):
        for name in ("x", "y", "t"):
            np.testing.assert_array_equal(getattr(sa, name), getattr(sb, name))


# --- hand-built inputs with known answers ---------------------------------------------------


def test_parse_valid_record() -> None:
    record = parse_record(line_of(valid_obj()))
    assert record.key == "open_images/abc/7"
    assert record.caption == "In this image there is a dog."
    assert record.utterances[0] == Utterance(text="In this", start=0.0, end=0.4)
    assert len(record.utterances) == 3
    assert record.voice_recording == "oid/abc_7.ogg"
    assert len(record.traces) == 2
    seg = record.traces[1]
    assert seg.x.dtype == np.float64
    np.testing.assert_array_equal(seg.x, [-0.05, 0.0])
    np.testing.assert_array_equal(seg.y, [1.05, 1.0])
    np.testing.assert_array_equal(seg.t, [0.2, 0.2])  # equal t is non-decreasing
    assert not seg.x.flags.writeable  # frozen record, frozen arrays


def test_bytes_with_newline_and_optional_fields() -> None:
    obj = valid_obj()
    del obj["traces"], obj["voice_recording"]
    record = parse_record((line_of(obj) + "\n").encode())
    assert record.traces == ()
    assert record.voice_recording is None

    obj["traces"] = []
    obj["voice_recording"] = None
    obj["timed_caption"] = []
    obj["extra"] = {"ignored": True}
    record = parse_record(line_of(obj))
    assert record.traces == () and record.utterances == () and record.voice_recording is None


def test_band_tolerance_absorbs_float_noise() -> None:
    obj = valid_obj()
    obj["traces"][0][0]["x"] = 1.1 + 5e-4
    assert parse_record(line_of(obj)).traces[0].x[0] == pytest.approx(1.1005)
    obj["traces"][0][0]["x"] = 1.1 + 2e-3
    with pytest.raises(InvalidRecord) as info:
        parse_record(line_of(obj))
    assert info.value.reason == "point_out_of_band"
    assert parse_record(line_of(obj), band=0.2).traces[0].x[0] == pytest.approx(1.102)


def test_error_message_names_record_field_and_expectation() -> None:
    obj = valid_obj()
    obj["traces"][0][1]["x"] = 1.37
    with pytest.raises(InvalidRecord) as info:
        parse_record(line_of(obj))
    exc = info.value
    assert (exc.reason, exc.field, exc.record_key) == (
        "point_out_of_band",
        "traces[0][1].x",
        "open_images/abc/7",
    )
    assert (
        str(exc) == "open_images/abc/7: traces[0][1].x = 1.37 is outside the image band [-0.1, 1.1]"
    )
    assert isinstance(exc, ValueError)


def test_invalid_record_pickles_and_renames() -> None:
    exc = InvalidRecord("wrong_type", "caption", "is integer, expected string", "d/i/1")
    again = pickle.loads(pickle.dumps(exc))
    assert (again.reason, again.field, again.record_key, str(again)) == (
        exc.reason,
        exc.field,
        exc.record_key,
        str(exc),
    )
    renamed = InvalidRecord("json_decode", "", "is not valid JSON").with_record_key("f.jsonl:3")
    assert str(renamed) == "f.jsonl:3: is not valid JSON"
    with pytest.raises(ValueError, match="unknown"):
        InvalidRecord("no_such_reason", "", "")


def _mutate(path: tuple[Any, ...], value: Any) -> str:
    obj = valid_obj()
    target = obj
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(obj)


_DELETE = object()

# One case per reason code: (line, reason, field, record_key).
_VALID = line_of(valid_obj())
REASON_CASES = [
    ("x" * 2000, "line_too_long", "", ""),
    (b'{"caption": "caf\xe9"}', "not_utf8", "", ""),
    (_VALID[:-7], "json_decode", "", ""),
    ("[1, 2]", "not_an_object", "", ""),
    (_mutate(("caption",), _DELETE), "missing_field", "caption", "open_images/abc/7"),
    (_mutate(("annotator_id",), "7"), "wrong_type", "annotator_id", "open_images/abc"),
    (_mutate(("image_id",), ""), "empty_field", "image_id", ""),
    (
        _mutate(("timed_caption", 1, "end_time"), float("nan")),
        "non_finite",
        "timed_caption[1].end_time",
        "open_images/abc/7",
    ),
    (
        _mutate(("timed_caption", 2, "start_time"), -0.5),
        "negative_time",
        "timed_caption[2].start_time",
        "open_images/abc/7",
    ),
    (
        _mutate(("timed_caption", 2, "end_time"), 1.5),
        "reversed_time",
        "timed_caption[2].end_time",
        "open_images/abc/7",
    ),
    (_mutate(("traces", 1), []), "empty_trace_segment", "traces[1]", "open_images/abc/7"),
    (_mutate(("traces", 0, 1, "t"), 0.9), "trace_unsorted", "traces[0][1].t", "open_images/abc/7"),
    (
        _mutate(("traces", 1, 0, "y"), -0.2),
        "point_out_of_band",
        "traces[1][0].y",
        "open_images/abc/7",
    ),
]


def test_reason_cases_cover_every_reason() -> None:
    assert {case[1] for case in REASON_CASES} == REASONS


@pytest.mark.parametrize(("line", "reason", "field", "record_key"), REASON_CASES)
def test_each_reason_code(line: str | bytes, reason: str, field: str, record_key: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_record(line, max_line_bytes=1000)
    assert (info.value.reason, info.value.field, info.value.record_key) == (
        reason,
        field,
        record_key,
    )


@pytest.mark.parametrize(
    ("path", "value", "reason", "field"),
    [
        (("annotator_id",), True, "wrong_type", "annotator_id"),
        (("annotator_id",), 7.0, "wrong_type", "annotator_id"),
        (("dataset_id",), 3, "wrong_type", "dataset_id"),
        (("dataset_id",), _DELETE, "missing_field", "dataset_id"),
        (("caption",), "\ud800 dog", "not_utf8", "caption"),
        (("timed_caption",), {"a": 1}, "wrong_type", "timed_caption"),
        (("timed_caption",), _DELETE, "missing_field", "timed_caption"),
        (("timed_caption", 0), "In this", "wrong_type", "timed_caption[0]"),
        (("timed_caption", 0, "utterance"), None, "wrong_type", "timed_caption[0].utterance"),
        (("timed_caption", 0, "start_time"), "0.0", "wrong_type", "timed_caption[0].start_time"),
        (("timed_caption", 0, "start_time"), False, "wrong_type", "timed_caption[0].start_time"),
        (("timed_caption", 0, "end_time"), _DELETE, "missing_field", "timed_caption[0].end_time"),
        (("timed_caption", 0, "end_time"), float("inf"), "non_finite", "timed_caption[0].end_time"),
        (("traces",), None, "wrong_type", "traces"),
        (("traces", 0), {"x": 1}, "wrong_type", "traces[0]"),
        (("traces", 0, 1), [0.5, 0.3, 1.2], "wrong_type", "traces[0][1]"),
        (("traces", 0, 1, "y"), _DELETE, "missing_field", "traces[0][1].y"),
        (("traces", 0, 1, "x"), True, "wrong_type", "traces[0][1].x"),
        (("traces", 0, 1, "t"), "1.1", "wrong_type", "traces[0][1].t"),
        (("traces", 0, 1, "t"), None, "wrong_type", "traces[0][1].t"),
        (("traces", 0, 1, "x"), float("-inf"), "non_finite", "traces[0][1].x"),
        (("traces", 0, 1, "x"), 10**400, "non_finite", "traces[0][1].x"),
        (("traces", 0, 1, "t"), 1e999, "non_finite", "traces[0][1].t"),
        (("traces", 1, 0, "t"), -0.1, "negative_time", "traces[1][0].t"),
        (("voice_recording",), 5, "wrong_type", "voice_recording"),
    ],
)
def test_field_errors(path: tuple[Any, ...], value: Any, reason: str, field: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_record(_mutate(path, value))
    assert (info.value.reason, info.value.field) == (reason, field)


def test_line_length_limit_counts_utf8_bytes() -> None:
    obj = valid_obj()
    obj["caption"] = "é" * 100  # 2 bytes each in UTF-8
    line = line_of(obj).replace("\\u00e9", "é")
    limit = len(line) + 50  # enough characters, too few bytes
    with pytest.raises(InvalidRecord) as info:
        parse_record(line, max_line_bytes=limit)
    assert info.value.reason == "line_too_long"
    with pytest.raises(InvalidRecord) as info:
        parse_record(line.encode(), max_line_bytes=limit)
    assert info.value.reason == "line_too_long"
    assert parse_record(line, max_line_bytes=len(line.encode())).caption == "é" * 100


def test_deeply_nested_and_huge_int_lines() -> None:
    for line in ("[" * 100_000, '{"annotator_id": ' + "1" * 5000 + "}"):
        with pytest.raises(InvalidRecord) as info:
            parse_record(line)
        assert info.value.reason == "json_decode"


def test_record_to_json_inverse() -> None:
    obj = valid_obj()
    record = parse_record(line_of(obj))
    back = record_to_json(record)
    obj["traces"][1][1].update(x=0.0, y=1.0)  # ints come back as floats
    assert back == obj
    assert_same_record(parse_record(json.dumps(back)), record)


def test_trace_segment_coerces_and_checks_lengths() -> None:
    seg = TraceSegment(x=[0, 1], y=[0.5, 0.5], t=[1, 2])
    assert seg.t.dtype == np.float64 and not seg.t.flags.writeable and len(seg) == 2
    with pytest.raises(ValueError, match="length"):
        TraceSegment(x=[0.0], y=[0.0, 1.0], t=[0.0])


# --- property tests ---------------------------------------------------------------------------

_times = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
_coords = st.floats(min_value=-0.1, max_value=1.1, allow_nan=False)


@st.composite
def valid_objs(draw: st.DrawFn) -> dict[str, Any]:
    utterances = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(_times)
        end = start + draw(st.floats(min_value=0.0, max_value=10.0))
        utterances.append(
            {"utterance": draw(st.text(max_size=12)), "start_time": start, "end_time": end}
        )
    traces = []
    for _ in range(draw(st.integers(0, 3))):
        ts = sorted(draw(st.lists(_times, min_size=1, max_size=8)))
        traces.append([{"x": draw(_coords), "y": draw(_coords), "t": t} for t in ts])
    obj = {
        "dataset_id": draw(st.text(min_size=1, max_size=10)),
        "image_id": draw(st.text(min_size=1, max_size=10)),
        "annotator_id": draw(st.integers(-(2**40), 2**40)),
        "caption": draw(st.text(max_size=40)),
        "timed_caption": utterances,
        "traces": traces,
    }
    if draw(st.booleans()):
        obj["voice_recording"] = draw(st.text(max_size=10))
    return obj


@settings(max_examples=60, deadline=None)
@given(valid_objs(), st.booleans())
def test_round_trip(obj: dict[str, Any], as_bytes: bool) -> None:
    line = json.dumps(obj, ensure_ascii=as_bytes)
    record = parse_record(line.encode() if as_bytes else line)
    assert record_to_json(record) == obj
    assert_same_record(parse_record(json.dumps(record_to_json(record))), record)


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_arbitrary_input_raises_only_invalid_record(line: str | bytes) -> None:
    try:
        parse_record(line)
    except InvalidRecord as exc:
        assert exc.reason in REASONS


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats()  # NaN and +-inf included: json.dumps writes them as NaN / Infinity literals
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_objs(), st.data())
def test_mutated_records_raise_only_invalid_record(
    obj: dict[str, Any], data: st.DataObject
) -> None:
    obj = copy.deepcopy(obj)
    kind = data.draw(st.sampled_from(["replace", "delete", "truncate", "bytes"]))
    paths = _paths(obj)
    if kind in ("replace", "delete"):
        path = data.draw(st.sampled_from(paths))
        parent = obj
        for step in path[:-1]:
            parent = parent[step]
        if kind == "replace":
            parent[path[-1]] = data.draw(_json_values)
        else:
            del parent[path[-1]]
    line = json.dumps(obj).encode()
    if kind == "truncate":
        line = line[: data.draw(st.integers(0, len(line)))]
    elif kind == "bytes":
        at = data.draw(st.integers(0, len(line)))
        line = line[:at] + data.draw(st.binary(min_size=1, max_size=3)) + line[at:]
    try:
        parse_record(line)
    except InvalidRecord as exc:
        assert exc.reason in REASONS
        assert str(exc)


@pytest.mark.parametrize("value", [_DELETE, "7", 7.0, True, None, [7]])
def test_a_bad_annotator_id_still_names_the_image(value: Any) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_record(_mutate(("annotator_id",), value))
    assert info.value.field == "annotator_id"
    assert info.value.record_key == "open_images/abc"  # the image key: both ids were read
    assert str(info.value).startswith("open_images/abc: annotator_id ")


def test_record_keys_escape_ids_that_hold_the_separator() -> None:
    obj = valid_obj()
    obj.update(dataset_id="x/a", image_id="b")
    assert parse_record(line_of(obj)).key == "x%2Fa/b/7"
    obj.update(dataset_id="x", image_id="a/b", caption=5)
    with pytest.raises(InvalidRecord) as info:
        parse_record(line_of(obj))
    assert info.value.record_key == "x/a%2Fb/7"
