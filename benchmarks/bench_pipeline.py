"""End-to-end cost of the curation pipeline: wall time and peak memory against input size.

    python benchmarks/bench_pipeline.py --sizes 2000,8000,20000 --workers 1,2
    python benchmarks/bench_pipeline.py --sizes 20000 --workers 1,2 --before /tmp/alp-main

Writes a synthetic world's narratives (the largest size; each smaller size is a prefix of it),
fills an embedding cache with one untimed run on all of it (offline MiniLM encoder), then runs
``pipelines/extract_alps.py`` as a user would, in a subprocess, with that warm cache, for every
size and worker count: 1 worker is Beam's in-process default, N > 1 is ``--direct_num_workers N
--direct_running_mode multi_processing``. With ``--before DIR`` (a checkout of another revision,
e.g. ``git worktree add /tmp/alp-main main``) every run is made twice, with that code and with
this, interleaved, and the table gives their ratios. Prints one table: wall time, narratives/s,
peak memory of the whole process tree (launcher and workers), seconds per stage (summed over
workers), phrases embedded and reused (0 embedded: the cache was warm).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from alp_curation import flags
from alp_dataset.synthetic import write_world

STAGES = ("parse", "tag", "extract", "embed", "write")


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * page  # field 24 of stat, counted after the ")" at 2
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def run_pipeline(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, int, dict]:
    """Run the pipeline; return wall seconds, peak tree RSS, timings JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.json"
        cmd = [
            sys.executable,
            "-m",
            "pipelines.extract_alps",
            *argv,
            "--timings-json",
            str(timings),
        ]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
        )
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss_bytes(proc.pid))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output, _ = proc.communicate()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        if proc.returncode != 0:
            sys.exit(f"pipeline failed ({proc.returncode}):\n{output}")
        return wall, peak, json.loads(timings.read_text())


def run_code(checkout: Path | None, argv: list[str]) -> tuple[float, int, dict, dict]:
    """Run extract_alps from ``checkout`` (None: this one); wall, peak RSS, timings, counts."""
    env = None
    if checkout is not None:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
    wall, peak, timings = run_pipeline(argv, env=env, cwd=checkout)
    out = Path(argv[argv.index("--output") + 1])
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    return wall, peak, timings, counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--sizes", default="2000,8000,20000", help="narratives per run")
    parser.add_argument(
        "--num-workers",
        default="1,2",
        help="local pipeline worker processes to time, comma-separated (1: in-process)",
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--text-encoder", default="minilm", help="text encoder spec")
    parser.add_argument(
        "--before", type=Path, help="a checkout of the code to compare against (run first)"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep inputs and outputs here (default: a temporary folder)"
    )
    parser.add_argument(
        "--skip-warm-up",
        action="store_true",
        help="the cache under --work-dir is already warm (an earlier run of this script)",
    )
    args = flags.parse_args(parser)
    sizes = sorted(int(n) for n in args.sizes.split(","))
    worker_counts = [int(n) for n in args.num_workers.split(",")]

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="alp-bench-"))
    world = write_world(work / "world", sizes[-1], seed=args.seed, images=False)
    lines = world.narratives.read_bytes().splitlines(keepends=True)
    inputs = {}
    for n in sizes:
        inputs[n] = work / f"narratives-{n}.jsonl"
        inputs[n].write_bytes(b"".join(lines[:n]))
    cache = work / "cache"

    def argv(n: int, workers: int, out: Path) -> list[str]:
        extra = ["--direct_num_workers", str(workers)]
        if workers > 1:
            extra += ["--direct_running_mode", "multi_processing"]
        return ["--input", str(inputs[n]), "--text-encoder", args.text_encoder, "--overwrite",
                "--embedding-cache", str(cache), "--output", str(out), *extra]  # fmt: skip

    if not args.skip_warm_up:
        run_code(None, argv(sizes[-1], 1, work / "out-warm-up"))  # fills the cache
    versions = [("before", args.before), ("after", None)] if args.before else [("", None)]
    rows = []
    for n in sizes:
        for workers in worker_counts:
            for name, checkout in versions:
                out = work / f"out-{n}-{workers}-{name or 'run'}"
                wall, peak, timings, counts = run_code(checkout, argv(n, workers, out))
                rows.append((n, workers, name, wall, peak, timings["stage_seconds"], counts))
                print(f"done: {n} narratives, {workers} workers {name} in {wall:.1f} s",
                      file=sys.stderr)  # fmt: skip
    identical = _same_outputs(work, sizes, worker_counts, [v for v, _ in versions])

    print(
        f"extract_alps on synthetic narratives, warm embedding cache, encoder {args.text_encoder}, "
        f"{os.cpu_count()} cores"
    )
    header = "| narratives | workers | code | wall s | narr/s | peak MiB | "
    header += " | ".join(STAGES) + " | embedded | reused |"
    print(header)
    print("|" + "---:|" * 2 + "---|" + "---:|" * (5 + len(STAGES)))
    for n, workers, name, wall, peak, stages, c in rows:
        print(
            f"| {n:,} | {workers} | {name or '-'} | {wall:.1f} | {n / wall:.1f} | "
            f"{peak / 2**20:,.0f} | "
            + " | ".join(f"{stages.get(s, 0.0):.1f}" for s in STAGES)
            + f" | {c['embeddings']['computed']:,} | {c['embeddings']['reused']:,} |"
        )
    by_key = {(n, w, v): (wall, peak) for n, w, v, wall, peak, _, _ in rows}
    for name, _ in versions:
        base = sizes[0]
        for workers in worker_counts:
            growth = by_key[sizes[-1], workers, name][1] / by_key[base, workers, name][1]
            print(
                f"{name or 'this code'}, {workers} worker(s): peak RSS at {sizes[-1]:,} / at "
                f"{base:,} narratives = {growth:.2f}"
            )
        if 1 in worker_counts:
            for workers in (w for w in worker_counts if w > 1):
                for n in sizes:
                    speed = by_key[n, 1, name][0] / by_key[n, workers, name][0]
                    print(f"{name or 'this code'}, {n:,} narratives: {workers} workers are "
                          f"{speed:.2f}x 1 worker")  # fmt: skip
    if args.before:
        for n in sizes:
            for workers in worker_counts:
                (wb, pb), (wa, pa) = by_key[n, workers, "before"], by_key[n, workers, "after"]
                print(f"{n:,} narratives, {workers} worker(s): after / before wall "
                      f"{wa / wb:.2f}, peak RSS {pa / pb:.2f}")  # fmt: skip
    print(f"outputs byte-identical across every run of a size: {identical}")
    print("stage columns: seconds inside each stage, summed over worker processes")


def _same_outputs(work: Path, sizes: list[int], workers: list[int], versions: list[str]) -> bool:
    """Whether every run of a size wrote the same bytes (alps/, phrases/, shards/, manifest)."""
    for n in sizes:
        digests = set()
        for w in workers:
            for v in versions:
                out = work / f"out-{n}-{w}-{v or 'run'}"
                digest = hashlib.sha256()
                for path in sorted(p for p in out.rglob("*") if p.is_file()):
                    digest.update(str(path.relative_to(out)).encode() + b"\0" + path.read_bytes())
                digests.add(digest.hexdigest())
        if len(digests) != 1:
            return False
    return True


if __name__ == "__main__":
    main()
