"""Counts of the curation run: names of the statistics, the manifest built from them, the summary.

Every DoFn that decides an outcome reports it twice under one name: as a Beam metrics counter
(progress, visible in any runner's UI) and as a ``(name, n)`` element of a "stats" output, which
the pipeline sums into the manifest. So the counters and the manifest never disagree.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricResults, MetricsFilter

from alp_curation.curate import NO_ALP_REASONS
from alp_curation.locnar import REASONS
from alp_dataset.schema import PIPELINE_REASONS, SCHEMA_VERSION, manifest_problems

METRICS_NAMESPACE = "alp"
STATS = "stats"  # tag of the statistics output of the DoFns

INPUT_LINES = "input_lines"
BLANK_LINES = "blank_lines"
RECORDS = "records"
RECORDS_WITH_ALPS = "records_with_alps"
NO_ALP = "records_without_alps."  # + reason
DEAD_LETTER = "dead_letters."  # + reason
ALPS = "alps"
PHRASE_DROPPED = "phrases_dropped."  # + reason
UNIQUE_PHRASES = "unique_phrases"
EMBEDDINGS_COMPUTED = "embeddings_computed"
EMBEDDINGS_REUSED = "embeddings_reused"
SAMPLES = "samples"
IMAGES_FOUND = "image_files_found"
IMAGES_MISSING = "image_files_missing"

DEAD_LETTER_REASONS = (*sorted(REASONS), *PIPELINE_REASONS)

# Time spent inside each stage's own work (not in the stages its outputs feed), summed over all
# workers, as Beam counters in microseconds. Timings are never written to the manifest: it must
# stay byte-identical between runs.
STAGE_TIME = "stage_microseconds."  # + stage
STAGES = ("parse", "tag", "extract", "embed", "write")


@contextlib.contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the time the block takes to the stage's counter."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed_us = int((time.perf_counter() - start) * 1e6)
        Metrics.counter(METRICS_NAMESPACE, STAGE_TIME + stage).inc(elapsed_us)


def add_seconds(stage: str, seconds: float) -> None:
    """Add ``seconds`` to the stage's counter (for time summed over many short steps)."""
    Metrics.counter(METRICS_NAMESPACE, STAGE_TIME + stage).inc(int(seconds * 1e6))


def stage_seconds(metrics: MetricResults) -> dict[str, float]:
    """Seconds per stage from a finished pipeline's metrics (committed ones where available)."""
    found: dict[str, float] = {}
    query = metrics.query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for result in query["counters"]:
        name = result.key.metric.name
        if name.startswith(STAGE_TIME):
            value = result.committed if result.committed is not None else result.attempted
            stage = name[len(STAGE_TIME) :]
            found[stage] = found.get(stage, 0.0) + value / 1e6
    return {stage: found.get(stage, 0.0) for stage in (*STAGES, *sorted(set(found) - set(STAGES)))}


def stat(name: str, n: int = 1) -> pvalue.TaggedOutput:
    """Count ``n`` under ``name``: bump the Beam counter, and return the element for the stats."""
    Metrics.counter(METRICS_NAMESPACE, name).inc(n)
    return pvalue.TaggedOutput(STATS, (name, n))


def _by_prefix(stats: Mapping[str, int], prefix: str, known: Iterable[str] = ()) -> dict[str, int]:
    found = {k[len(prefix) :]: v for k, v in stats.items() if k.startswith(prefix)}
    return {r: found.get(r, 0) for r in sorted({*known, *found})}


def _block(by_reason: dict[str, int]) -> dict[str, Any]:
    return {"total": sum(by_reason.values()), "by_reason": by_reason}


def build_manifest(
    stats: Mapping[str, int],
    files: Iterable[tuple[str, str, int]],
    *,
    options: Mapping[str, Any],
    inputs: Iterable[tuple[str, int]],
    tagger: Mapping[str, str],
    encoder: Mapping[str, Any],
    alp_version: str,
) -> dict[str, Any]:
    """The manifest of a run (keys documented in alp_dataset.schema.MANIFEST_KEYS).

    ``files``: (kind, path relative to the output directory, rows) of every file written.
    Raises RuntimeError when the counts do not add up: that is a bug, and a manifest marks a
    run as complete, so none is written.
    """
    s = dict(stats)
    no_alp = _by_prefix(s, NO_ALP, NO_ALP_REASONS)
    listed: dict[str, list[dict[str, Any]]] = {
        "alps": [],
        "phrases": [],
        "shards": [],
        "dead_letters": [],
    }
    for kind, path, rows in sorted(files):
        listed[kind].append({"path": path, "rows": rows})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "alp_version": alp_version,
        "options": dict(options),
        "inputs": [{"path": p, "size_bytes": n} for p, n in inputs],
        "tagger": dict(tagger),
        "encoder": dict(encoder),
        "counts": {
            "input_lines": s.get(INPUT_LINES, 0),
            "blank_lines_skipped": s.get(BLANK_LINES, 0),
            "dead_letters": _block(_by_prefix(s, DEAD_LETTER, DEAD_LETTER_REASONS)),
            "records": {
                "total": s.get(RECORDS, 0),
                "with_alps": s.get(RECORDS_WITH_ALPS, 0),
                "without_alps": _block(no_alp),
            },
            "alps": s.get(ALPS, 0),
            "phrases_dropped": _block(_by_prefix(s, PHRASE_DROPPED)),
            "unique_phrases": s.get(UNIQUE_PHRASES, 0),
            "embeddings": {
                "computed": s.get(EMBEDDINGS_COMPUTED, 0),
                "reused": s.get(EMBEDDINGS_REUSED, 0),
            },
            "shards": {
                "samples": s.get(SAMPLES, 0),
                "image_files_found": s.get(IMAGES_FOUND, 0),
                "image_files_missing": s.get(IMAGES_MISSING, 0),
            },
        },
        "files": listed,
    }
    problems = manifest_problems(manifest)
    if problems:
        raise RuntimeError("manifest counts do not add up: " + "; ".join(problems))
    return manifest


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """Deterministic JSON: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def _reasons(by_reason: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1]) if v)


def format_summary(
    manifest: Mapping[str, Any],
    *,
    out_dir: str,
    seconds: float,
    stages: Mapping[str, float] | None = None,
) -> str:
    """The table printed at the end of a local run (``stages``: seconds per stage, all workers)."""
    c = manifest["counts"]
    records = c["records"]
    emb = c["embeddings"]
    shards = c["shards"]
    files = manifest["files"]
    rows: list[tuple[str, str, str]] = [
        ("input lines", f"{c['input_lines']:,}", f"{len(manifest['inputs'])} file(s)"),
        (
            "dead letters",
            f"{c['dead_letters']['total']:,}",
            _reasons(c["dead_letters"]["by_reason"]),
        ),
        ("records", f"{records['total']:,}", ""),
        ("  with ALPs", f"{records['with_alps']:,}", ""),
        (
            "  without ALP",
            f"{records['without_alps']['total']:,}",
            _reasons(records["without_alps"]["by_reason"]),
        ),
        ("ALPs", f"{c['alps']:,}", f"{len(files['alps'])} Parquet file(s)"),
        (
            "phrases not kept",
            f"{c['phrases_dropped']['total']:,}",
            _reasons(c["phrases_dropped"]["by_reason"]),
        ),
        ("unique phrases", f"{c['unique_phrases']:,}", f"{len(files['phrases'])} Parquet file(s)"),
        ("  embedded", f"{emb['computed']:,}", manifest["encoder"]["id"]),
        ("  reused from cache", f"{emb['reused']:,}", ""),
        ("shard samples", f"{shards['samples']:,}", f"{len(files['shards'])} shard(s)"),
    ]
    if manifest["options"].get("images"):
        rows.append(
            (
                "  image files",
                f"{shards['image_files_found']:,}",
                f"missing {shards['image_files_missing']:,}",
            )
        )
    rows.append(("wall time", f"{seconds:.1f} s", ""))
    if stages:
        rows.append(("time in stages", f"{sum(stages.values()):.1f} s", "summed over workers"))
        rows += [(f"  {stage}", f"{t:.1f} s", "") for stage, t in stages.items()]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    body = [f"{n:<{width}}  {v:>{value_width}}  {note}".rstrip() for n, v, note in rows]
    title = (
        f"ALP extraction -> {out_dir}  (tagger {manifest['tagger']['resolved']}, "
        f"schema {manifest['schema_version']})"
    )
    return "\n".join([title, "-" * max(len(line) for line in body), *body])
