"""Tests for the runner's own options: a runner whose module registers its options on import
(Beam's DaskRunner) has them accepted by the pipelines' strict option check."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import launcher
from pipelines.extract_alps import PROG, build_parser
from pipelines.options import RunnerUnavailable, register_runner_options, runner_path

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def test_runner_names_resolve_as_beam_resolves_them() -> None:
    assert runner_path("FnApiRunner") == "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
    assert runner_path("dataflow") == "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"
    assert runner_path(DASK_RUNNER) == DASK_RUNNER
    assert runner_path("NoSuchRunner") is None  # Beam refuses it when the pipeline runs


def test_dask_runner_options_are_accepted_with_the_dask_runner() -> None:
    argv = ["--input", "x.jsonl", "--output", "out", "--runner", DASK_RUNNER,
            "--dask_client_address", "tcp://127.0.0.1:8786", "--dask_npartitions", "4"]  # fmt: skip
    args, options = launcher.parse_args(build_parser(), argv, PROG)
    assert args.runner == DASK_RUNNER
    every = options.get_all_options()
    assert every["address"] == "tcp://127.0.0.1:8786" and every["npartitions"] == 4


def test_a_flag_no_option_knows_is_still_refused() -> None:
    argv = ["--input", "x", "--output", "o", "--runner", DASK_RUNNER, "--dask_no_such_flag", "1"]
    with pytest.raises(launcher.UsageError, match="--dask_no_such_flag"):
        launcher.parse_args(build_parser(), argv, PROG)


def test_a_runner_module_that_cannot_be_imported_is_a_usage_error() -> None:
    with pytest.raises(RunnerUnavailable, match="no_such_module_for_alp"):
        register_runner_options("no_such_module_for_alp.runners.Runner")
    argv = ["--input", "x", "--output", "o", "--runner", "no_such_module_for_alp.Runner"]
    with pytest.raises(launcher.UsageError, match="cannot be imported"):
        launcher.parse_args(build_parser(), argv, PROG)
    assert PipelineOptions([]).get_all_options()  # nothing else changed
