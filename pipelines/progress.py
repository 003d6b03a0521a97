"""Progress of a running pipeline: Beam counters on every runner, a line on stderr locally.

Workers call `advance` as work gets done (narratives tagged, phrases embedded, images written).
It bumps the Beam counter ``alp/progress.<what>``, which Dataflow's job page shows while the job
runs, and on a local run with progress on (no ``--quiet``) this process's tally too. Beam's local
runner reports no metrics before the run ends, so each process writes its tally to
``<folder>/<pid>.json`` (at most once a second, and at the end of each bundle), and the
launcher's `ProgressDisplay` thread sums the tallies of every worker process (one in-process,
one per worker with ``--direct_running_mode multi_processing``) and prints one line per stage
that moved, every few seconds, and once more at the end. One process prints, so the lines of
several workers never mix, and none of this touches what the pipeline writes.

    extract_alps: tagging: 1,024 narratives, 212/s
    extract_alps: embedding: 1,200 of 5,000 phrases (300 from the cache), 45.1/s, ETA 1m24s
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from apache_beam.metrics import Metrics

from pipelines.manifest import METRICS_NAMESPACE

# Counter names (Beam namespace "alp"); TOTAL_* are gauges: the same value from every worker.
NARRATIVES_TAGGED = "progress.narratives_tagged"
PHRASES_TO_EMBED = "progress.phrases_to_embed"  # phrases not in the cache, per bucket looked up
PHRASES_EMBEDDED = "progress.phrases_embedded"
PHRASES_FROM_CACHE = "progress.phrases_from_cache"
TOTAL_UNIQUE_PHRASES = "progress.unique_phrases"
SAMPLES_WRITTEN = "progress.samples_written"  # shard samples: images, for COCO shards
IMAGES_BUILT = "progress.images_built"
INSTANCES_BUILT = "progress.instances_built"

WRITE_INTERVAL_S = 1.0  # a worker's tally file is rewritten at most this often
DISPLAY_INTERVAL_S = 5.0  # the display prints at most one line per stage this often


# ---------------------------------------------------------------------------------------------
# In the workers


class _Tally:
    """This process's counts for one run, written to ``<folder>/<pid>.json`` for the display."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, f"{os.getpid()}.json")
        self.counts: Counter[str] = Counter()
        self.totals: dict[str, int] = {}
        self.lock = threading.Lock()
        self.written = 0.0

    def add(self, name: str, n: int) -> None:
        with self.lock:
            self.counts[name] += n
            if time.monotonic() - self.written >= WRITE_INTERVAL_S:
                self._write()

    def set_total(self, name: str, value: int) -> None:
        with self.lock:
            self.totals[name] = value
            self._write()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def _write(self) -> None:
        data = json.dumps({"counts": self.counts, "totals": self.totals})
        tmp = f"{self.path}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, self.path)  # the display never reads half a file
        self.written = time.monotonic()


_TALLIES: dict[str, _Tally] = {}
_TALLIES_LOCK = threading.Lock()


def _tally(folder: str) -> _Tally:
    with _TALLIES_LOCK:
        tally = _TALLIES.get(folder)
        if tally is None:
            tally = _TALLIES[folder] = _Tally(folder)
        return tally


def advance(folder: str | None, name: str, n: int = 1) -> None:
    """``n`` more done under ``name``: the Beam counter, and the tally of ``folder`` (a local
    run's `ProgressDisplay.folder`; None on distributed runners and with ``--quiet``)."""
    if n == 0:
        return
    Metrics.counter(METRICS_NAMESPACE, name).inc(n)
    if folder is not None:
        _tally(folder).add(name, n)


def set_total(folder: str | None, name: str, value: int) -> None:
    """The known amount of work of a stage (every worker gives the same value)."""
    Metrics.gauge(METRICS_NAMESPACE, name).set(value)
    if folder is not None:
        _tally(folder).set_total(name, value)


def flush(folder: str | None) -> None:
    """Write this process's tally now (DoFns call it at the end of each bundle)."""
    if folder is not None:
        _tally(folder).flush()


# ---------------------------------------------------------------------------------------------
# In the launcher


@dataclass(frozen=True)
class Stage:
    """One progress line: ``label: <done> [of <total>] <unit> (<parts>), <rate>/s, ETA ...``.

    ``done``: counters summed into the amount done; ``rate_of``: the counter the rate and ETA
    follow (default: all of ``done``; cache hits are instant, so the embedding rate is of the
    phrases embedded); ``total``: a `set_total` name, or a number known in the launcher;
    ``parts``: (counter, words) shown in parentheses.
    """

    label: str
    unit: str
    done: tuple[str, ...]
    rate_of: tuple[str, ...] = ()
    total: str | int | None = None
    parts: tuple[tuple[str, str], ...] = ()


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class _Seen:
    first_time: float
    first_rate_count: int
    shown: tuple[int, ...] = ()


class ProgressDisplay:
    """Sums the workers' tallies and prints progress lines on ``stream`` (context manager).

    ``folder`` is what the DoFns get (`advance`); it is removed on exit.
    """

    def __init__(
        self,
        prog: str,
        stages: Sequence[Stage],
        *,
        interval: float = DISPLAY_INTERVAL_S,
        stream: TextIO | None = None,
    ) -> None:
        self.prog = prog
        self.stages = tuple(stages)
        self.interval = interval
        self.stream = sys.stderr if stream is None else stream
        self.folder = tempfile.mkdtemp(prefix="alp-progress-")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alp-progress", daemon=True)
        self._seen: dict[str, _Seen] = {}

    def __enter__(self) -> ProgressDisplay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.show()  # the last counts, even of a run shorter than the interval
        finally:
            # A temporary folder: a worker process still shutting down may write into it.
            shutil.rmtree(self.folder, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.show()

    def read(self) -> tuple[Counter[str], dict[str, int]]:
        """(counts summed over worker processes, totals: the largest any worker gave)."""
        counts: Counter[str] = Counter()
        totals: dict[str, int] = {}
        for name in sorted(os.listdir(self.folder)):
            if not name.endswith(".json"):
                continue  # a worker's file being replaced
            with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                tally = json.load(f)
            counts.update(tally["counts"])
            for key, value in tally["totals"].items():
                totals[key] = max(value, totals.get(key, 0))
        return counts, totals

    def show(self, now: float | None = None) -> None:
        """Print a line for each stage whose counts moved since its last line (``now``: the
        time.monotonic() of the reading, for tests)."""
        counts, totals = self.read()
        now = time.monotonic() if now is None else now
        for stage in self.stages:
            line = self._line(stage, counts, totals, now)
            if line is not None:
                print(f"{self.prog}: {line}", file=self.stream, flush=True)

    def _line(
        self, stage: Stage, counts: Mapping[str, int], totals: Mapping[str, int], now: float
    ) -> str | None:
        done = sum(counts.get(name, 0) for name in stage.done)
        rated = sum(counts.get(name, 0) for name in stage.rate_of or stage.done)
        state = (done, *(counts.get(name, 0) for name, _ in stage.parts))
        if done == 0:
            return None
        seen = self._seen.get(stage.label)
        if seen is None:
            # Rates start from the first sighting: the stage's start is not known to the second.
            seen = self._seen[stage.label] = _Seen(now, rated)
        if state == seen.shown:
            return None
        seen.shown = state
        total = totals.get(stage.total) if isinstance(stage.total, str) else stage.total
        text = f"{stage.label}: {done:,}"
        if total is not None:
            text += f" of {total:,}"
        text += f" {stage.unit}"
        parts = [f"{counts.get(name, 0):,} {words}" for name, words in stage.parts]
        if parts:
            text += f" ({', '.join(parts)})"
        elapsed = now - seen.first_time
        if elapsed > 0 and rated > seen.first_rate_count:
            rate = (rated - seen.first_rate_count) / elapsed
            text += f", {rate:,.1f}/s"
            if total is not None and total > done:
                text += f", ETA {_duration((total - done) / rate)}"
        return text
