"""Localized Narratives records: parse and validate one JSONL line.

A LocNar line looks like::

    {"dataset_id": "mscoco_val2017", "image_id": "137576", "annotator_id": 93,
     "caption": "In this image there are cows...",
     "timed_caption": [{"utterance": "In this", "start_time": 0.0, "end_time": 0.4}, ...],
     "traces": [[{"x": 0.2086, "y": -0.0533, "t": 0.022}, ...], ...],
     "voice_recording": "coco_val/coco_val_137576_93.ogg"}

`parse_record` turns it into a frozen `LocNarRecord` or raises `InvalidRecord`, the only exception
it raises, with a machine-readable reason code (see `REASONS`), the offending field path and the
record key once the key fields have been read. Bad input becomes a dead letter upstream (DESIGN.md,
"Bad input"), so nothing is repaired or guessed here: a value is either valid or rejected.

Keys name records and images: the ids joined by "/" (`join_key`), each id's "%" and "/" escaped
as "%25" and "%2F" first, so that two different id tuples never share a key (dataset "x/a" with
image "b" is "x%2Fa/b", dataset "x" with image "a/b" is "x/a%2Fb"). Ids without "%" or "/" appear
as they are.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "REASONS",
    "InvalidRecord",
    "LocNarRecord",
    "TraceSegment",
    "Utterance",
    "join_key",
    "parse_record",
    "record_key",
    "record_to_json",
    "split_key",
]

# Every reason code `InvalidRecord.reason` can take; dead-letter counts are keyed by these.
REASONS: frozenset[str] = frozenset(
    {
        "line_too_long",  # the raw line exceeds max_line_bytes (checked before decoding)
        "not_utf8",  # bytes that are not UTF-8, or a string holding a lone surrogate
        "json_decode",  # truncated or otherwise invalid JSON
        "not_an_object",  # valid JSON whose top level is not an object
        "missing_field",
        "wrong_type",  # e.g. a string where a number is expected; bool is never a number
        "empty_field",  # dataset_id / image_id is "" (the record key would be ambiguous)
        "non_finite",  # NaN / Infinity literals, or numbers too large for a float64
        "negative_time",
        "reversed_time",  # an utterance whose end_time < start_time
        "empty_trace_segment",
        "trace_unsorted",  # t decreases inside a trace segment
        "point_out_of_band",  # x or y outside [-band, 1 + band]
    }
)


KEY_SEPARATOR = "/"
_ESCAPED = re.compile("%(25|2F)")


def _key_part(value: str) -> str:
    if "%" not in value and KEY_SEPARATOR not in value:
        return value
    return value.replace("%", "%25").replace(KEY_SEPARATOR, "%2F")


def join_key(*parts: str) -> str:
    """Ids joined into one key, each escaped (module docstring): injective over id tuples."""
    return KEY_SEPARATOR.join(_key_part(p) for p in parts)


def split_key(key: str) -> tuple[str, ...]:
    """The ids of a key: the inverse of `join_key`."""
    unescape = {"25": "%", "2F": KEY_SEPARATOR}
    return tuple(
        _ESCAPED.sub(lambda m: unescape[m.group(1)], part) for part in key.split(KEY_SEPARATOR)
    )


def record_key(dataset_id: str, image_id: str, annotator_id: int) -> str:
    """``"dataset_id/image_id/annotator_id"``, escaped: one narrative of one image."""
    return join_key(dataset_id, image_id, str(annotator_id))


class InvalidRecord(ValueError):
    """A LocNar line that cannot become a `LocNarRecord`.

    Attributes:
        reason: machine-readable code, one of `REASONS`.
        field: path of the offending field, e.g. ``"traces[0][12].x"``; "" for the line itself.
        detail: what was found and what was expected.
        record_key: ``"dataset_id/image_id/annotator_id"`` (`record_key`) when those fields were
            read; the image key ``"dataset_id/image_id"`` when only annotator_id is missing or
            not an integer; else "".
    """

    def __init__(self, reason: str, field: str, detail: str, record_key: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown InvalidRecord reason {reason!r}")
        self.reason = reason
        self.field = field
        self.detail = detail
        self.record_key = record_key
        where = f"{record_key}: " if record_key else ""
        what = f"{field} {detail}" if field else detail
        super().__init__(where + what)

    def with_record_key(self, record_key: str) -> InvalidRecord:
        """The same error naming another record, e.g. ``"part-0003.jsonl:17"`` for a line number."""
        return InvalidRecord(self.reason, self.field, self.detail, record_key)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through self.args by default, which holds only the message; dead
        # letters cross process boundaries in distributed runners, so keep every attribute.
        return (InvalidRecord, (self.reason, self.field, self.detail, self.record_key))


@dataclass(frozen=True)
class Utterance:
    """One timed chunk of the transcription; it may hold several words ("In this")."""

    text: str
    start: float  # seconds from the start of the recording
    end: float  # seconds; start == end == 0.0 means "untimed" (LocNar writes that for such words)


def _readonly_float_array(values: Any, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)  # always a copy, so freezing it touches no caller
    if arr.ndim != 1:
        raise ValueError(f"TraceSegment.{name} must be 1-D, got shape {arr.shape}")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class TraceSegment:
    """One continuous piece of mouse trace, as float64 arrays of equal length P (read-only).

    x, y are normalised to the image (origin top-left) and may lie in the ~10 % band outside
    [0, 1]; t is in seconds and non-decreasing. `parse_record` checks those ranges; building a
    segment by hand only coerces to read-only float64 and checks the shapes.
    """

    x: np.ndarray  # (P,)
    y: np.ndarray  # (P,)
    t: np.ndarray  # (P,)

    def __post_init__(self) -> None:
        for name in ("x", "y", "t"):
            object.__setattr__(self, name, _readonly_float_array(getattr(self, name), name))
        if not len(self.x) == len(self.y) == len(self.t):
            raise ValueError(
                f"TraceSegment arrays differ in length: x {len(self.x)}, y {len(self.y)}, "
                f"t {len(self.t)}"
            )

    def __len__(self) -> int:
        return len(self.t)


@dataclass(frozen=True, eq=False)
class LocNarRecord:
    """One validated Localized Narrative. Records without traces are valid (they yield no ALPs)."""

    dataset_id: str
    image_id: str
    annotator_id: int
    caption: str
    utterances: tuple[Utterance, ...]
    traces: tuple[TraceSegment, ...]
    voice_recording: str | None

    @property
    def key(self) -> str:
        return record_key(self.dataset_id, self.image_id, self.annotator_id)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer"}
    return names.get(type(value), "number" if isinstance(value, float) else "null")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _require(obj: dict[str, Any], name: str, path: str, key: str) -> Any:
    if name not in obj:
        raise InvalidRecord("missing_field", path, "is missing", key)
    return obj[name]


def _check_str(value: Any, path: str, key: str) -> str:
    if not isinstance(value, str):
        raise InvalidRecord("wrong_type", path, f"is {_json_type(value)}, expected string", key)
    # JSON escapes such as "\ud800" decode to lone surrogates that no UTF-8 writer (Parquet,
    # WebDataset json) accepts later on; reject them here, where the record is still named.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRecord(
                "not_utf8",
                path,
                f"holds a lone surrogate at character {exc.start}; expected valid Unicode",
                key,
            ) from None
    return value


def _check_number(value: Any, path: str, key: str) -> float:
    # type() rather than isinstance(): bool is a subclass of int but never a valid number here.
    if type(value) not in (int, float):
        raise InvalidRecord("wrong_type", path, f"is {_json_type(value)}, expected number", key)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidRecord("non_finite", path, f"= {_show(value)}, expected a finite number", key)
    return number


def _line_bytes(line: str | bytes) -> int:
    if isinstance(line, bytes):
        return len(line)
    return len(line.encode("utf-8", "surrogatepass"))


def _decode(line: str | bytes, max_line_bytes: int) -> Any:
    if not isinstance(line, (str, bytes)):
        raise TypeError(f"parse_record expects str or bytes, got {type(line).__name__}")
    # A str has at least one byte per character, so only encode when the answer is in doubt.
    if len(line) > max_line_bytes or (
        4 * len(line) > max_line_bytes and _line_bytes(line) > max_line_bytes
    ):
        raise InvalidRecord(
            "line_too_long", "", f"is {_line_bytes(line)} bytes, limit is {max_line_bytes}"
        )
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRecord(
                "not_utf8", "", f"byte {exc.start} is not valid UTF-8 ({exc.reason})"
            ) from None
    try:
        return json.loads(line)
    except RecursionError:
        raise InvalidRecord("json_decode", "", "is nested too deeply to parse") from None
    except ValueError as exc:  # JSONDecodeError, and int literals past Python's digit limit
        raise InvalidRecord("json_decode", "", f"is not valid JSON: {exc}") from None


def _parse_utterances(raw: Any, key: str) -> tuple[Utterance, ...]:
    if not isinstance(raw, list):
        raise InvalidRecord(
            "wrong_type", "timed_caption", f"is {_json_type(raw)}, expected array", key
        )
    utterances = []
    for i, item in enumerate(raw):
        path = f"timed_caption[{i}]"
        if not isinstance(item, dict):
            raise InvalidRecord("wrong_type", path, f"is {_json_type(item)}, expected object", key)
        text = _check_str(
            _require(item, "utterance", f"{path}.utterance", key), f"{path}.utterance", key
        )
        start = _check_number(
            _require(item, "start_time", f"{path}.start_time", key), f"{path}.start_time", key
        )
        end = _check_number(
            _require(item, "end_time", f"{path}.end_time", key), f"{path}.end_time", key
        )
        if start < 0:
            raise InvalidRecord(
                "negative_time", f"{path}.start_time", f"= {start!r}, expected >= 0", key
            )
        if end < start:
            raise InvalidRecord(
                "reversed_time",
                f"{path}.end_time",
                f"= {end!r} is before start_time = {start!r}",
                key,
            )
        utterances.append(Utterance(text=text, start=start, end=end))
    return tuple(utterances)


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _bad_point(seg: list[Any], path: str, key: str) -> InvalidRecord:
    """Slow path, run only after the vectorised pull failed: name the first malformed point."""
    for j, point in enumerate(seg):
        if not isinstance(point, dict):
            return InvalidRecord(
                "wrong_type", f"{path}[{j}]", f"is {_json_type(point)}, expected object", key
            )
        for name in ("x", "y", "t"):
            if name not in point:
                return InvalidRecord("missing_field", f"{path}[{j}].{name}", "is missing", key)
            try:
                _check_number(point[name], f"{path}[{j}].{name}", key)
            except InvalidRecord as exc:
                return exc
    raise AssertionError(f"{path}: no malformed point found")  # pragma: no cover


def _parse_segment(
    seg: Any, path: str, key: str, band: float, band_tolerance: float
) -> TraceSegment:
    if not isinstance(seg, list):
        raise InvalidRecord("wrong_type", path, f"is {_json_type(seg)}, expected array", key)
    if not seg:
        raise InvalidRecord(
            "empty_trace_segment", path, "is an empty array, expected >= 1 point", key
        )
    try:
        columns = {name: [p[name] for p in seg] for name in ("x", "y", "t")}
    except (KeyError, TypeError):
        raise _bad_point(seg, path, key) from None
    arrays = {}
    for name, values in columns.items():
        # One C-speed pass over the types; bool, str and null fall through to the slow path.
        if not {type(v) for v in values} <= {int, float}:
            raise _bad_point(seg, path, key)
        try:
            arrays[name] = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer literal too large for float64
            raise _bad_point(seg, path, key) from None
    for name, arr in arrays.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            j = _first(bad)
            raise InvalidRecord(
                "non_finite",
                f"{path}[{j}].{name}",
                f"= {float(arr[j])!r}, expected a finite number",
                key,
            )
    lo, hi = -band, 1.0 + band
    for name in ("x", "y"):
        arr = arrays[name]
        out = (arr < lo - band_tolerance) | (arr > hi + band_tolerance)
        if out.any():
            j = _first(out)
            raise InvalidRecord(
                "point_out_of_band",
                f"{path}[{j}].{name}",
                f"= {float(arr[j])!r} is outside the image band [{lo:g}, {hi:g}]",
                key,
            )
    t = arrays["t"]
    if (t < 0).any():
        j = _first(t < 0)
        raise InvalidRecord(
            "negative_time", f"{path}[{j}].t", f"= {float(t[j])!r}, expected >= 0", key
        )
    decreasing = np.diff(t) < 0  # (P - 1,)
    if decreasing.any():
        j = _first(decreasing) + 1
        raise InvalidRecord(
            "trace_unsorted",
            f"{path}[{j}].t",
            f"= {float(t[j])!r} is before the previous point's t = {float(t[j - 1])!r}",
            key,
        )
    return TraceSegment(x=arrays["x"], y=arrays["y"], t=t)


def _parse_traces(
    raw: Any, key: str, band: float, band_tolerance: float
) -> tuple[TraceSegment, ...]:
    if not isinstance(raw, list):
        raise InvalidRecord("wrong_type", "traces", f"is {_json_type(raw)}, expected array", key)
    return tuple(
        _parse_segment(seg, f"traces[{i}]", key, band, band_tolerance) for i, seg in enumerate(raw)
    )


def parse_record(
    line: str | bytes,
    *,
    band: float = 0.1,
    band_tolerance: float = 1e-3,
    max_line_bytes: int = 64 * 2**20,
) -> LocNarRecord:
    """Parse and validate one LocNar JSONL line.

    Args:
        line: the line as text or UTF-8 bytes (a trailing newline is fine).
        band: trace points may lie up to this far outside [0, 1] (LocNar allows ~10 %).
        band_tolerance: slack on top of `band` for float noise in the stored coordinates.
        max_line_bytes: longer lines are rejected before decoding ("line_too_long").

    Returns:
        The record, traces as float64 arrays. Missing or empty "traces" gives no segments;
        a missing or null "voice_recording" gives None. Unknown fields are ignored.

    Raises:
        InvalidRecord: for every kind of bad input, never anything else. In particular
            annotator_id must be a JSON integer (not a numeric string, not a bool), numbers may
            be integers or floats but never bool or NaN/Infinity (which `json.loads` would accept),
            and "timed_caption" is required (it may be empty). Duplicate JSON keys are not
            detected: the last value wins, as in `json.loads`.
    """
    obj = _decode(line, max_line_bytes)
    if not isinstance(obj, dict):
        raise InvalidRecord("not_an_object", "", f"is a JSON {_json_type(obj)}, expected an object")

    ids = {}
    for name in ("dataset_id", "image_id"):
        ids[name] = _check_str(_require(obj, name, name, ""), name, "")
        if not ids[name]:
            raise InvalidRecord("empty_field", name, "is an empty string", "")
    image = join_key(ids["dataset_id"], ids["image_id"])  # names the record until annotator_id
    annotator_id = _require(obj, "annotator_id", "annotator_id", image)
    if type(annotator_id) is not int:
        raise InvalidRecord(
            "wrong_type",
            "annotator_id",
            f"is {_json_type(annotator_id)} {_show(annotator_id)}, expected integer",
            image,
        )
    key = record_key(ids["dataset_id"], ids["image_id"], annotator_id)

    caption = _check_str(_require(obj, "caption", "caption", key), "caption", key)
    utterances = _parse_utterances(_require(obj, "timed_caption", "timed_caption", key), key)
    traces = _parse_traces(obj.get("traces", []), key, band, band_tolerance)
    voice = obj.get("voice_recording")
    if voice is not None:
        voice = _check_str(voice, "voice_recording", key)
    return LocNarRecord(
        dataset_id=ids["dataset_id"],
        image_id=ids["image_id"],
        annotator_id=annotator_id,
        caption=caption,
        utterances=utterances,
        traces=traces,
        voice_recording=voice,
    )


def record_to_json(record: LocNarRecord) -> dict[str, Any]:
    """The LocNar JSON object of `record`: `parse_record(json.dumps(record_to_json(r)))` gives r."""
    obj: dict[str, Any] = {
        "dataset_id": record.dataset_id,
        "image_id": record.image_id,
        "annotator_id": record.annotator_id,
        "caption": record.caption,
        "timed_caption": [
            {"utterance": u.text, "start_time": u.start, "end_time": u.end}
            for u in record.utterances
        ],
        "traces": [
            [
                {"x": x, "y": y, "t": t}
                for x, y, t in zip(seg.x.tolist(), seg.y.tolist(), seg.t.tolist(), strict=True)
            ]
            for seg in record.traces
        ],
    }
    if record.voice_recording is not None:
        obj["voice_recording"] = record.voice_recording
    return obj
