"""Tests for pipelines/progress.py: the display on hand-made tallies, and the Beam counters and
tallies of the tagging and embedding stages on a tiny input."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from alp_curation.locnar import parse_record
from pipelines import manifest as m
from pipelines import progress
from pipelines.elements import SourcedRecord
from pipelines.progress import ProgressDisplay, Stage
from pipelines.transforms import CurateRecords, EmbedPhrases, EncoderConfig

EMBEDDING = Stage(
    "embedding",
    "phrases",
    (progress.PHRASES_EMBEDDED, progress.PHRASES_FROM_CACHE),
    rate_of=(progress.PHRASES_EMBEDDED,),
    total=progress.TOTAL_UNIQUE_PHRASES,
    parts=((progress.PHRASES_FROM_CACHE, "from the cache"),),
)
TAGGING = Stage("tagging", "narratives", (progress.NARRATIVES_TAGGED,))


def write_tally(folder: str, pid: int, counts: dict[str, int], totals: dict[str, int]) -> None:
    """A worker process's tally file, as `pipelines.progress` writes it."""
    Path(folder, f"{pid}.json").write_text(json.dumps({"counts": counts, "totals": totals}))


def test_the_display_sums_the_workers_and_gives_rate_and_eta() -> None:
    stream = io.StringIO()
    with ProgressDisplay("job", [TAGGING, EMBEDDING], interval=3600, stream=stream) as display:
        emb, hits = progress.PHRASES_EMBEDDED, progress.PHRASES_FROM_CACHE
        total = {progress.TOTAL_UNIQUE_PHRASES: 1000}
        write_tally(display.folder, 1, {progress.NARRATIVES_TAGGED: 30, emb: 100}, total)
        write_tally(display.folder, 2, {emb: 50, hits: 50}, total)
        display.show(now=100.0)
        first = stream.getvalue().splitlines()
        assert first == [
            "job: tagging: 30 narratives",
            "job: embedding: 200 of 1,000 phrases (50 from the cache)",
        ]
        # 10 s later: 100 more embedded -> 10/s; 700 left -> ETA 1m10s. Tagging did not move.
        write_tally(display.folder, 2, {emb: 150, hits: 50}, total)
        display.show(now=110.0)
        assert stream.getvalue().splitlines()[2:] == [
            "job: embedding: 300 of 1,000 phrases (50 from the cache), 10.0/s, ETA 1m10s"
        ]
        display.show(now=120.0)  # nothing moved: no line
        assert len(stream.getvalue().splitlines()) == 3
    assert len(stream.getvalue().splitlines()) == 3  # the last counts were shown already
    assert not os.path.exists(display.folder)


def test_the_display_prints_the_last_counts_when_the_run_ends() -> None:
    stream = io.StringIO()
    with ProgressDisplay("job", [TAGGING], interval=3600, stream=stream) as display:
        progress.advance(display.folder, progress.NARRATIVES_TAGGED, 3)
        progress.advance(display.folder, progress.NARRATIVES_TAGGED, 4)
        progress.flush(display.folder)
    assert stream.getvalue() == "job: tagging: 7 narratives\n"


def counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(m.METRICS_NAMESPACE))
    found = {c.key.metric.name: c.committed for c in query["counters"]}
    return {k: v for k, v in found.items() if k.startswith("progress.")}


def gauges(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(m.METRICS_NAMESPACE))
    return {g.key.metric.name: g.committed.value for g in query["gauges"]}


@pytest.mark.slow
def test_tagging_and_embedding_report_beam_counters_and_tallies(
    locnar_inputs: object, tmp_path: Path
) -> None:
    lines = locnar_inputs.good.read_bytes().splitlines()[:4]  # type: ignore[attr-defined]
    records = [SourcedRecord("a.jsonl", i, parse_record(x)) for i, x in enumerate(lines, 1)]
    cache = str(tmp_path / "cache")

    def run(folder: str) -> beam.runners.runner.PipelineResult:
        p = BeamTestPipeline(runner="FnApiRunner", options=PipelineOptions([]))
        curated = p | beam.Create(records) | CurateRecords("en_core_web_sm", 4, 0.5, folder)
        _ = curated.alps | EmbedPhrases(EncoderConfig("minilm"), cache, 4, 1024, folder)
        result = p.run()
        result.wait_until_finish()
        return result

    folder = str(tmp_path / "tally")
    os.mkdir(folder)
    first = counters(run(folder))
    n_unique = first[progress.PHRASES_TO_EMBED]
    assert n_unique > 0
    assert first == {
        progress.NARRATIVES_TAGGED: 4,
        progress.PHRASES_TO_EMBED: n_unique,
        progress.PHRASES_EMBEDDED: n_unique,
    }
    (tally,) = Path(folder).glob("*.json")  # this process's, for the launcher's display
    written = json.loads(tally.read_text())
    assert written["counts"] == first
    assert written["totals"] == {progress.TOTAL_UNIQUE_PHRASES: n_unique}
    # Again with the cache filled: every phrase comes from it, none is embedded.
    again = run(str(tmp_path / "tally"))
    assert counters(again) == {progress.NARRATIVES_TAGGED: 4, progress.PHRASES_FROM_CACHE: n_unique}
    assert gauges(again) == {progress.TOTAL_UNIQUE_PHRASES: n_unique}
