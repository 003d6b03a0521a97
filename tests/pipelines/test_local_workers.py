"""Tests for pipelines.local_workers: how a local run splits the machine, and the environment
its worker processes inherit."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.extract_alps import build_parser, build_pipeline
from pipelines.local_workers import (
    AUTO_PROCESSES_MIN_BYTES,
    THREAD_VARIABLES,
    LocalPlan,
    choose_local_workers,
    direct_flags_given,
    local_plan,
    worker_environment,
)
from pipelines.transforms import EncoderConfig


def plan(*flags: str, runner: str = "FnApiRunner", cores: int = 8, **kw: int) -> LocalPlan:
    return local_plan(runner, PipelineOptions(list(flags)), cores=cores, **kw)


def test_one_in_process_worker_reads_each_file_once_without_a_reshuffle() -> None:
    assert plan() == LocalPlan(True, 1, 1, False, None)
    # in_memory runs one worker whatever --direct_num_workers says (Beam warns about it).
    assert plan("--direct_num_workers", "4") == LocalPlan(True, 1, 1, False, None)


def test_worker_processes_get_a_lane_each_and_a_share_of_the_cores() -> None:
    processes = ("--direct_running_mode", "multi_processing")
    assert plan("--direct_num_workers", "2", *processes) == LocalPlan(True, 2, 2, False, 4)
    assert plan("--direct_num_workers", "3", *processes, cores=2) == LocalPlan(True, 3, 3, False, 1)
    assert plan("--direct_num_workers", "0", *processes, cores=6) == LocalPlan(
        True, 6, 6, False, 1
    )  # Beam's 0: one worker per core
    assert plan("--direct_num_workers", "2", *processes, threads=3).threads == 3  # the user's


def test_threads_share_one_process_and_distributed_runners_keep_the_reshuffle() -> None:
    threads = ("--direct_running_mode", "multi_threading", "--direct_num_workers", "2")
    assert plan(*threads) == LocalPlan(True, 1, 2, False, None)
    assert plan(runner="DataflowRunner") == LocalPlan(False, 1, 1, True, None)
    assert plan(runner="DataflowRunner", threads=1).threads == 1


def test_worker_environment_sets_thread_counts_for_the_block_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (*THREAD_VARIABLES, "TOKENIZERS_PARALLELISM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")  # the user's choice is kept
    with worker_environment(LocalPlan(True, 2, 2, False, 1)):
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
        assert os.environ["MKL_NUM_THREADS"] == "7"
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert "OMP_NUM_THREADS" not in os.environ and "TOKENIZERS_PARALLELISM" not in os.environ
    assert os.environ["MKL_NUM_THREADS"] == "7"
    with worker_environment(LocalPlan(True, 1, 1, False, None)):  # one process: nothing to split
        assert "OMP_NUM_THREADS" not in os.environ


def test_the_automatic_choice_takes_every_core_only_for_a_large_input() -> None:
    large = AUTO_PROCESSES_MIN_BYTES
    options = PipelineOptions([])
    assert choose_local_workers("FnApiRunner", options, large, cores=4) == 4
    assert local_plan("FnApiRunner", options, cores=4) == LocalPlan(True, 4, 4, False, 1)
    two_cores = PipelineOptions([])
    assert choose_local_workers("FnApiRunner", two_cores, large, cores=2) == 2
    assert local_plan("FnApiRunner", two_cores, cores=2) == LocalPlan(True, 2, 2, False, 1)
    for runner, size, cores in (
        ("FnApiRunner", large - 1, 8),  # small input: start-up would not pay back
        ("FnApiRunner", large, 1),  # one core: nothing to share
        ("DataflowRunner", large, 8),  # not a local runner
    ):
        untouched = PipelineOptions([])
        assert choose_local_workers(runner, untouched, size, cores=cores) == 1
        assert local_plan(runner, untouched, cores=cores).processes == 1


def test_naming_a_direct_flag_turns_the_automatic_choice_off() -> None:
    assert direct_flags_given(["--input", "x", "--direct_num_workers", "1"])
    assert direct_flags_given(["--direct_running_mode=multi_threading"])
    assert not direct_flags_given(["--input", "x", "--runner", "FnApiRunner"])


def _step_names(plan: LocalPlan) -> set[str]:
    """The labels of every step of the curation pipeline built for ``plan`` (not run), with a
    spill folder when the plan is local, as `extract_alps.run` gives it."""
    args = build_parser().parse_args(["--input", "in.jsonl", "--output", "out"])
    about = {"encoder": {"id": "test:encoder", "dim": 4}, "options": {}}
    p = beam.Pipeline(options=PipelineOptions([]))
    spill = "/tmp/spill" if plan.local else None
    build_pipeline(p, args, ["in.jsonl"], about, EncoderConfig("minilm"), plan, None, spill)
    proto = p.to_runner_api()
    return {t.unique_name for t in proto.components.transforms.values()}


def test_distributed_runners_keep_the_reshuffle_and_the_join_local_ones_do_not() -> None:
    distributed = _step_names(local_plan("DataflowRunner", PipelineOptions([])))
    local = _step_names(local_plan("FnApiRunner", PipelineOptions([]), cores=2))
    assert "ReadLocNar/SpreadLines" in distributed and "ReadLocNar/SpreadLines" not in local
    assert "BuildSamples/JoinEmbeddings" in distributed
    assert "BuildSamples/JoinEmbeddings" not in local and "EmbeddingOfPhrase" in local
    # Local writers group through the disk; no row reaches a GroupByKey of the runner's.
    for writer in ("WriteAlpTable", "WritePhraseTable", "WriteShards", "WriteDeadLetters"):
        assert f"{writer}/GroupIntoFiles/CountRows" in distributed
        assert f"{writer}/GroupIntoFiles/Spill" in local
        assert not any(name.startswith(f"{writer}/GroupIntoFiles/GroupByKey") for name in local)
    assert "BuildSamples/GroupByImage" in distributed and "DistinctImages" in local
