"""Launching a pipeline: arguments apart from Beam's, the run, its end, and a verdict on its input.

Both jobs (`extract_alps`, `build_coco_shards`) start and end here, so a usage error, a run that
failed and a run whose input was (nearly) all rejected read the same in both:

- `parse_args`: the job's flags and Beam's; `--help-beam`; flags neither knows are a `UsageError`.
- `execute`: run the pipeline the job builds on the chosen runner, wait, read back its manifest.
- `progress_lines`: progress on stderr while a local run runs (`pipelines.progress`).
- `report_dead_letters`: a loud warning when every input became a dead letter (almost always the
  wrong file or folder), and a failing exit status past ``--fail-on-dead-letters``.

Exit statuses: 0 done, 1 the pipeline failed, 2 usage error (nothing was run), 3 done but more
dead letters than ``--fail-on-dead-letters`` allows (the outputs are complete and kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

from alp_curation import flags
from alp_dataset.schema import MANIFEST_NAME
from pipelines.io import join, read_bytes
from pipelines.options import (
    RunnerUnavailable,
    print_beam_help,
    register_runner_options,
    unknown_beam_args,
)
from pipelines.progress import ProgressDisplay, Stage

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TOO_MANY_DEAD_LETTERS = 3


class UsageError(ValueError):
    """The command line cannot be run: the message says why; nothing was started."""


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, prog: str
) -> tuple[argparse.Namespace, PipelineOptions]:
    """The job's arguments and Beam's pipeline options; exits after ``--help-beam``.

    The options of the chosen runner count as Beam's: its module is imported first, since some
    runners (DaskRunner) register their options only then. Old spellings of the job's own
    flags (``--out``, ``--split``) are read as today's, with a note (`alp_curation.flags`); Beam's
    options are never rewritten, since only flags the job's parser defines are renamed to.
    """
    argv = sys.argv[1:] if argv is None else argv
    argv = flags.renamed_argv(argv, flags.option_strings(parser), prog)
    args, beam_args = parser.parse_known_args(argv)
    try:
        register_runner_options(args.runner)
    except RunnerUnavailable as exc:
        raise UsageError(str(exc)) from exc
    if args.help_beam:
        print_beam_help(prog)  # exits
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise UsageError(
            f"unrecognized arguments: {' '.join(unknown)} (neither an option of this pipeline, "
            "see --help, nor a Beam pipeline option, see --help-beam)"
        )
    return args, PipelineOptions(beam_args)


@contextlib.contextmanager
def progress_lines(name: str, stages: Sequence[Stage], *, show: bool) -> Iterator[str | None]:
    """While the block runs the pipeline, progress lines of ``stages`` on stderr when ``show``
    (a local run without --quiet); yields the folder the DoFns report to, or None."""
    if not show:
        yield None
        return
    with ProgressDisplay(name, stages) as display:
        yield display.folder


def usage_error(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_USAGE


@dataclass(frozen=True)
class Finished:
    """A run that completed: its manifest, wall time and Beam result (for metrics)."""

    manifest: Mapping[str, Any]
    seconds: float
    result: PipelineResult


def execute(
    build: Callable[[beam.Pipeline], None],
    options: PipelineOptions,
    args: argparse.Namespace,
    *,
    save_main_session: bool,
) -> Finished | None:
    """Build the pipeline with ``build(p)``, run it on ``args.runner`` and wait; then read the
    manifest under ``args.output``. None (after saying so) when it did not end in DONE."""
    options.view_as(StandardOptions).runner = args.runner
    options.view_as(SetupOptions).save_main_session = save_main_session
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        print(f"error: the pipeline ended in state {state}", file=sys.stderr)
        return None
    manifest = json.loads(read_bytes(join(args.output, MANIFEST_NAME)))
    return Finished(manifest, time.perf_counter() - start, result)


def report_dead_letters(
    n_in: int,
    n_dead: int,
    *,
    unit: str,
    by_reason: Mapping[str, int],
    limit: float | None,
    hints: Callable[[], list[str]] = list,
    out: TextIO | None = None,
) -> int:
    """The exit status of a finished run with ``n_dead`` of ``n_in`` inputs (``unit``: "input
    lines", "entries") rejected, after warning on ``out`` (stderr) where there is cause.

    Every input rejected is warned about whatever ``limit`` says, with ``hints()`` (what the
    input looks like instead). Past ``limit`` (a fraction; 0 allows none) the status is 3.
    """
    out = sys.stderr if out is None else out
    reasons = ", ".join(
        f"{r} {n:,}" for r, n in sorted(by_reason.items(), key=lambda kv: -kv[1]) if n
    )
    if n_in and n_dead == n_in:
        print(
            f"warning: every one of the {n_in:,} {unit} became a dead letter ({reasons}): this is "
            "almost always the wrong input",
            file=out,
        )
        for hint in hints():
            print(f"  {hint}", file=out)
    if limit is not None and n_in and n_dead / n_in > limit:
        print(
            f"error: {n_dead:,} of {n_in:,} {unit} ({n_dead / n_in:.1%}) became dead letters, "
            f"more than --fail-on-dead-letters {limit:g} allows; the outputs are complete",
            file=out,
        )
        return EXIT_TOO_MANY_DEAD_LETTERS
    return 0
