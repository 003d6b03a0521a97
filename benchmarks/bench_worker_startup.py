"""Start-up of one curation worker process, with spaCy's plugin discovery on (before) and off.

    python benchmarks/bench_worker_startup.py --runs 5

A Beam worker process of ``pipelines/extract_alps.py`` imports the pipeline's DoFns, runs their
``setup`` (the spaCy tagger; the text encoder object, whose weights load only on the first phrase
to embed, so not at all with a warm cache) and tags its first batch. Each run here does exactly
that in a fresh Python process, ``--runs`` times per way, the two ways interleaved, and reports
the median wall time from starting the process to the end of the first batch, its phases, and
the process's peak resident memory (VmHWM). "discovery on" loads spaCy as ``spacy.load`` does
by default (every plugin registered through entry points imported, spacy-transformers and
transformers among them); "as shipped" is ``alp_curation.tagging.load_spacy``'s default for
``en_core_web_sm``. Prints one table and the ratio of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from process_stats import peak_rss_mib

from alp_curation import flags

WAYS = ("discovery on", "as shipped")
CAPTIONS = [
    "In this picture we can see a red car and two small dogs on the grass.",
    "A man in a black shirt holding a white umbrella near the wooden table.",
] * 8


def worker(way: str, encoder: str) -> dict[str, Any]:
    """What a worker process does before its first output: import, set up, tag one batch."""
    t0 = time.perf_counter()
    import functools

    from alp_curation import tagging
    from pipelines.transforms import CurateBatchFn, EmbedBucketFn, EncoderConfig

    t1 = time.perf_counter()
    if way == "discovery on":
        tagging.load_spacy = functools.partial(tagging.load_spacy, discover_plugins=True)
    curate = CurateBatchFn("en_core_web_sm", 256, 0.5)
    curate.setup()
    t2 = time.perf_counter()
    embed = EmbedBucketFn(EncoderConfig(encoder, "cpu", 1), None, 64, 1024)
    embed.setup()
    t3 = time.perf_counter()
    assert curate._tagger is not None
    curate._tagger.model.tag(CAPTIONS)
    t4 = time.perf_counter()
    return {
        "import_s": t1 - t0,
        "tagger_s": t2 - t1,
        "encoder_s": t3 - t2,
        "first_batch_s": t4 - t3,
        "peak_rss_mib": peak_rss_mib(),
        "modules": sorted(m for m in ("transformers", "spacy_transformers") if m in sys.modules),
    }


def run_worker(way: str, encoder: str) -> dict[str, Any]:
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    argv = [sys.executable, __file__, "--worker", way, "--encoder", encoder]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"worker ({way}) failed:\n{done.stderr}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="processes per way")
    parser.add_argument("--encoder", default="minilm", help="text encoder spec")
    parser.add_argument("--worker", choices=WAYS, help=argparse.SUPPRESS)
    args = flags.parse_args(parser, argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.encoder)))
        return

    results: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    run_worker(WAYS[1], args.encoder)  # warm the OS file cache for both
    for _ in range(args.runs):
        for way in WAYS:
            results[way].append(run_worker(way, args.encoder))
    columns = ("wall_s", "import_s", "tagger_s", "encoder_s", "first_batch_s", "peak_rss_mib")
    print(
        f"one worker process's start-up, median of {args.runs} fresh processes per way "
        f"(interleaved), encoder {args.encoder}, en_core_web_sm"
    )
    print(
        f"| way | {' | '.join(columns)} | imports transformers |\n|---|{'---:|' * len(columns)}---|"
    )
    medians = {}
    for way, runs in results.items():
        medians[way] = {c: statistics.median(r[c] for r in runs) for c in columns}
        cells = " | ".join(f"{medians[way][c]:.2f}" for c in columns[:-1])
        loaded = "yes" if runs[0]["modules"] else "no"
        print(f"| {way} | {cells} | {medians[way]['peak_rss_mib']:,.0f} | {loaded} |")
    before, after = medians[WAYS[0]], medians[WAYS[1]]
    print(
        f"as shipped / discovery on: wall {after['wall_s'] / before['wall_s']:.2f}, "
        f"peak RSS {after['peak_rss_mib'] / before['peak_rss_mib']:.2f}"
    )


if __name__ == "__main__":
    main()
