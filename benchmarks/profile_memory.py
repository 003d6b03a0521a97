"""Where a local curation run's memory goes at its peak: a tracemalloc profile of extract_alps.

    python benchmarks/profile_memory.py --top 12 -- \\
        --input narratives.jsonl --output /tmp/out --overwrite --text-encoder minilm \\
        --embedding-cache cache --direct_num_workers 1

Runs ``pipelines/extract_alps.py`` in this process (Beam's in-process runner: the launcher, the
runner and the single worker share it, so every buffer a stage keeps is seen here) with
``tracemalloc`` tracing ``--frames`` frames per allocation from the moment the pipeline starts
(after the launcher has loaded spaCy and the encoder). A thread samples the traced size every
``--interval`` seconds and takes a snapshot each time it has grown by 5 % since the last one, so
the last snapshot is taken within a few percent of the peak. Prints one table: the allocation
sites holding most at that snapshot, each named by its innermost frames inside Beam or this
project, with the size and block count, and the traced peak and the process's peak RSS. Tracing
slows the run about 2x; the sizes, not the time, are the result. With ``--checkout DIR`` (a
checkout of another revision) the run uses that code.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import tracemalloc
from pathlib import Path

from process_stats import peak_rss_mib

from alp_curation import flags

GROWTH = 1.05  # a new snapshot when the traced size has grown this much since the last
OURS = ("apache_beam", "pipelines", "alp_curation", "alp_dataset")


def _where(trace: tracemalloc.Traceback, depth: int) -> str:
    """The innermost ``depth`` frames in Beam or this project, innermost first."""
    frames = []
    for frame in trace:  # most recent call first (tracemalloc's default order)
        parts = Path(frame.filename).parts
        if any(p in OURS for p in parts[-4:]):
            tail = "/".join(parts[-2:])
            frames.append(f"{tail}:{frame.lineno}")
        if len(frames) == depth:
            break
    return " < ".join(frames) or "(outside Beam and this project)"


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    cut = raw.index("--") if "--" in raw else len(raw)
    ours, pipeline_argv = raw[:cut], raw[cut + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--top", type=int, default=12, help="allocation sites shown")
    parser.add_argument("--depth", type=int, default=3, help="frames shown per site")
    parser.add_argument("--interval", type=float, default=0.5, help="sampling period, s")
    parser.add_argument("--frames", type=int, default=12, help="frames kept per trace")
    parser.add_argument("--checkout", type=Path, help="run the code of this checkout")
    args = flags.parse_args(parser, ours)
    if not pipeline_argv:
        parser.error("give the pipeline's arguments after --")
    if args.checkout is not None:
        sys.path.insert(0, str(args.checkout.resolve()))
        os.environ["PYTHONPATH"] = str(args.checkout.resolve())

    from pipelines import launcher
    from pipelines.extract_alps import run

    best: dict[str, object] = {"size": 0, "snapshot": None}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(args.interval):
            current, _ = tracemalloc.get_traced_memory()
            if current > GROWTH * int(best["size"]):  # type: ignore[call-overload]
                best["snapshot"] = tracemalloc.take_snapshot()
                best["size"] = current

    sampler = threading.Thread(target=sample, name="memory-sampler", daemon=True)
    execute = launcher.execute

    def traced_execute(*call_args: object, **call_kwargs: object) -> object:
        # Tracing starts once the launcher has loaded the models: what grows is the run's.
        tracemalloc.start(args.frames)
        sampler.start()
        return execute(*call_args, **call_kwargs)  # type: ignore[arg-type]

    launcher.execute = traced_execute  # type: ignore[assignment]
    status = run(pipeline_argv)
    done.set()
    if sampler.is_alive():
        sampler.join()
    _, traced_peak = tracemalloc.get_traced_memory()
    snapshot = best["snapshot"]
    if not isinstance(snapshot, tracemalloc.Snapshot):
        print("the run ended before a snapshot was taken; lower --interval", file=sys.stderr)
        return 1
    stats = snapshot.statistics("traceback")
    total = sum(s.size for s in stats)
    print(
        f"tracemalloc at the last snapshot: {total / 2**20:,.0f} MiB traced "
        f"(traced peak {traced_peak / 2**20:,.0f} MiB; process peak RSS "
        f"{peak_rss_mib():,.0f} MiB); pipeline exit status {status}"
    )
    print("| MiB | blocks | share | where (innermost first) |\n|---:|---:|---:|---|")
    for stat in stats[: args.top]:
        print(
            f"| {stat.size / 2**20:,.1f} | {stat.count:,} | {stat.size / total:.0%} | "
            f"{_where(stat.traceback, args.depth)} |"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
