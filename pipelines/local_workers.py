"""How a run on this machine uses its cores: worker processes, their threads, how input is read.

Beam's local runner (FnApiRunner) runs a pipeline in the launcher's process (``in_memory``, the
default) or in ``--direct_num_workers`` worker threads or processes (``--direct_running_mode``).
Three things decide whether more workers pay off, and are settled here:

- **Reading and writing.** The local runner keeps every PCollection that crosses a shuffle in
  its own memory. Spreading the lines of the input over workers through a Reshuffle would hold
  the whole input there, so a local run reads each file as one lane per worker instead
  (`pipelines.transforms.ReadLocNar`), and its writers group rows into files through the local
  disk (`pipelines.spill`): memory stays flat in the input size, and the lanes, not a shuffle,
  spread the lines. Distributed runners keep the Reshuffle and the GroupByKey (their shuffle is
  external).
- **Threads.** Each worker process gets ``cores // workers`` threads for torch, OpenMP, BLAS
  and Arrow (set in the environment the worker processes inherit, unless the user set them), and
  no tokenizer thread pool, so N processes never run N x cores threads on the cores.
- **Start-up.** Each worker process pays its own imports and model loading (spaCy's plugin
  discovery is off for the shipped models: `alp_curation.tagging`).

When the command line names neither ``--direct_num_workers`` nor ``--direct_running_mode``,
`choose_local_workers` picks for the machine: one worker process per core when there are at
least ``AUTO_PROCESSES_MIN_CORES`` cores and the input is large enough to pay back the processes'
start-up (``AUTO_PROCESSES_MIN_BYTES``), else Beam's in-process worker. On the 2-core benchmark
machine, warm cache (docs/benchmarks.md), two processes against one were 0.68x at 2,000
narratives (15 MiB of input), 0.95x at 4,000 (30 MiB), 1.35x at 8,000 (60 MiB) and 1.66x at
20,000 (150 MiB): the threshold sits between the last size that lost and the first that won.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

__all__ = [
    "AUTO_PROCESSES_MIN_BYTES",
    "AUTO_PROCESSES_MIN_CORES",
    "DIRECT_FLAGS",
    "LOCAL_RUNNERS",
    "THREAD_VARIABLES",
    "LocalPlan",
    "choose_local_workers",
    "direct_flags_given",
    "local_plan",
    "worker_environment",
]

# Runners that execute on this machine, where worker processes share its cores.
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "PrismRunner")
# Beam's flags for the local runner's workers; naming either turns the automatic choice off.
DIRECT_FLAGS = ("--direct_num_workers", "--direct_running_mode")
# Inputs below this many bytes run in the launcher's process: worker processes cost a few
# seconds each to start (docs/benchmarks.md), more than they save on a small input.
AUTO_PROCESSES_MIN_BYTES = 48 * 2**20
# A single core has nothing to share out.
AUTO_PROCESSES_MIN_CORES = 2
# Thread-pool sizes a worker process reads from its environment when its libraries start.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",  # torch's OpenMP pool, and Arrow's CPU pool
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "POLARS_MAX_THREADS",
)


@dataclass(frozen=True)
class LocalPlan:
    """How a run uses this machine.

    Attributes:
        local: the runner runs here (one of LOCAL_RUNNERS).
        processes: worker processes (1 when the runner works in the launcher's process or in
            threads of it).
        lanes: lanes each input file is read in (`ReadLocNar`).
        spread_lines: whether lines go through a Reshuffle after reading.
        threads: torch / OpenMP / BLAS threads per worker process; None = the libraries' own
            default (every core).
    """

    local: bool
    processes: int
    lanes: int
    spread_lines: bool
    threads: int | None


def local_plan(
    runner: str, options: PipelineOptions, *, cores: int | None = None, threads: int | None = None
) -> LocalPlan:
    """The plan for ``runner`` with ``options``' direct-runner settings on ``cores`` cores
    (default: this machine's); ``threads`` (a user's --encoder-threads) overrides the split."""
    cores = cores or os.cpu_count() or 1
    if runner not in LOCAL_RUNNERS:
        return LocalPlan(False, 1, 1, True, threads)
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers
    workers = cores if workers == 0 else max(1, workers or 1)  # Beam: 0 means one per core
    mode = direct.direct_running_mode
    if mode == "multi_processing":
        per_process = threads if threads is not None else max(1, cores // workers)
        return LocalPlan(True, workers, workers, False, per_process)
    if mode == "multi_threading":
        return LocalPlan(True, 1, workers, False, threads)
    return LocalPlan(True, 1, 1, False, threads)  # in_memory: one worker whatever the count


def direct_flags_given(argv: Sequence[str]) -> bool:
    """Whether a command line names --direct_num_workers or --direct_running_mode."""
    return any(arg.split("=", 1)[0] in DIRECT_FLAGS for arg in argv)


def choose_local_workers(
    runner: str, options: PipelineOptions, input_bytes: int, *, cores: int | None = None
) -> int:
    """Set ``options``' direct-runner workers for this machine (module docstring) and return
    the number of worker processes chosen (1: in the launcher's process). Only for a local
    runner whose workers the command line left unset."""
    cores = cores or os.cpu_count() or 1
    small = input_bytes < AUTO_PROCESSES_MIN_BYTES
    if runner not in LOCAL_RUNNERS or cores < AUTO_PROCESSES_MIN_CORES or small:
        return 1
    direct = options.view_as(DirectOptions)
    direct.direct_num_workers = cores
    direct.direct_running_mode = "multi_processing"
    return cores


@contextlib.contextmanager
def worker_environment(plan: LocalPlan) -> Iterator[None]:
    """While the block runs (the pipeline starts its worker processes), give them the plan's
    thread counts through the environment they inherit; variables the user set are kept. The
    launcher's environment is restored afterwards."""
    if plan.processes <= 1 or plan.threads is None:
        yield
        return
    wanted = {name: str(plan.threads) for name in THREAD_VARIABLES}
    wanted["TOKENIZERS_PARALLELISM"] = "false"
    added = [name for name in wanted if name not in os.environ]
    for name in added:
        os.environ[name] = wanted[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
