"""End-to-end cost of the curation pipeline on synthetic narratives, 1 and 2 worker processes.

    python benchmarks/bench_pipeline.py --n-narratives 10000

Writes a synthetic world's narratives, then runs ``pipelines/extract_alps.py`` (offline MiniLM
encoder) as a user would, in a subprocess: with one worker, with two worker processes
(``--direct_num_workers 2 --direct_running_mode multi_processing``), and once more with a warm
embedding cache. Prints one table: wall time, narratives/s, ALPs/s, peak memory of the whole
process tree, seconds per stage, unique phrases vs ALPs, and phrases embedded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def run_pipeline(argv: list[str]) -> tuple[float, int, dict]:
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
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-narratives", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument(
        "--work-dir", type=Path, help="keep inputs and outputs here (default: temp)"
    )
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="alp-bench-"))
    world = write_world(work / "world", args.n_narratives, seed=args.seed, images=False)
    cache = work / "cache"
    common = ["--input", str(world.narratives), "--text-encoder", args.text_encoder, "--overwrite"]
    runs = [
        ("1 worker", ["--direct_num_workers", "1"], False),
        (
            "2 workers",
            ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
            False,
        ),
        ("1 worker, cold cache", ["--direct_num_workers", "1"], True),
        ("1 worker, warm cache", ["--direct_num_workers", "1"], True),
    ]
    rows = []
    for name, extra, use_cache in runs:
        out = work / ("out-" + name.replace(" ", "").replace(",", "-"))
        argv = [*common, "--output", str(out), *extra]
        if use_cache:
            argv += ["--embedding-cache", str(cache)]
        wall, peak, timings = run_pipeline(argv)
        counts = json.loads((out / "manifest.json").read_text())["counts"]
        rows.append((name, wall, peak, timings["stage_seconds"], counts))
        print(f"done: {name} in {wall:.1f} s", file=sys.stderr)

    counts = rows[0][4]
    n, alps = counts["records"]["total"], counts["alps"]
    print(
        f"extract_alps on {counts['input_lines']:,} synthetic narratives "
        f"({alps:,} ALPs, {counts['unique_phrases']:,} unique phrases: "
        f"{alps / max(counts['unique_phrases'], 1):.1f} ALPs per phrase embedding), "
        f"encoder {args.text_encoder}"
    )
    header = f"{'run':<22} {'wall s':>7} {'narr/s':>7} {'ALPs/s':>7} {'peak MiB':>9} "
    header += " ".join(f"{s:>7}" for s in STAGES) + f" {'embedded':>9} {'reused':>7}"
    print(header)
    for name, wall, peak, stages, c in rows:
        print(
            f"{name:<22} {wall:>7.1f} {n / wall:>7.1f} {alps / wall:>7.1f} {peak / 2**20:>9,.0f} "
            + " ".join(f"{stages.get(s, 0.0):>7.1f}" for s in STAGES)
            + f" {c['embeddings']['computed']:>9,} {c['embeddings']['reused']:>7,}"
        )
    print("stage columns: seconds inside each stage, summed over worker processes")


if __name__ == "__main__":
    main()
