"""Command-line pieces every ALP pipeline shares: flag types, the runner, Beam's own options."""

from __future__ import annotations

import argparse
import importlib
from importlib import metadata

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from alp_curation.flags import class_list  # noqa: F401  (the pipelines' class-list flag type)

# Beam's local Python runner. DirectRunner would first try to download the Prism runner, which
# fails without network; DataflowRunner, FlinkRunner, ... are chosen with --runner at scale.
DEFAULT_RUNNER = "FnApiRunner"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def add_runner_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runner",
        default=DEFAULT_RUNNER,
        help="Beam runner; default: %(default)s, Beam's local Python runner (DirectRunner would "
        "first try to download the Prism runner); DataflowRunner, FlinkRunner, ... at scale",
    )


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress lines on stderr during a local run (the counts, rate and ETA of the "
        "long stages, every few seconds); Beam counters are kept either way",
    )


def add_help_beam_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--help-beam", action="store_true", help="list every Beam pipeline option and exit"
    )


def print_beam_help(prog: str) -> None:
    """Print the help of every Beam pipeline option, under this pipeline's name, and exit."""

    def show(beam_parser: argparse.ArgumentParser) -> None:
        # Called by Beam with its parser of every pipeline option.
        beam_parser.usage = f"{prog} [options, see --help] [Beam options]"
        beam_parser.print_help()
        raise SystemExit(0)

    PipelineOptions([]).get_all_options(add_extra_args_fn=show)


class RunnerUnavailable(ValueError):
    """The --runner names a runner class whose module cannot be imported here."""


def runner_path(runner: str) -> str | None:
    """The dotted path of the runner class ``runner`` names, as Beam resolves it: a known
    runner's name (any case, "Runner" optional) or a dotted path; None for a name Beam does
    not know (Beam itself then refuses it)."""
    known = {path.rsplit(".", 1)[-1].lower(): path for path in StandardOptions.ALL_KNOWN_RUNNERS}
    name = runner.lower()
    path = known.get(name, known.get(name + "runner", runner))
    return path if "." in path else None


def register_runner_options(runner: str) -> None:
    """Import the module of the runner class ``runner`` names, so that the pipeline options it
    defines (e.g. DaskRunner's ``--dask_*``, which exist only once its module is imported) are
    known to Beam's option parser. Raises RunnerUnavailable when the module cannot be imported."""
    path = runner_path(runner)
    if path is None:
        return
    module = path.rsplit(".", 1)[0]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise RunnerUnavailable(
            f"--runner {runner}: its module {module} cannot be imported ({exc}); install what "
            "that runner needs (for apache_beam.runners.dask.dask_runner.DaskRunner: the "
            "project's dask extra, pip install -e '.[dask]')"
        ) from exc


def unknown_beam_args(beam_args: list[str]) -> list[str]:
    """The flags in ``beam_args`` that no Beam pipeline option knows."""
    options = PipelineOptions(beam_args)
    known = options.get_all_options()
    every = options.get_all_options(retain_unknown_options=True)
    return sorted(f"--{name}" for name in every if name not in known)


def alp_version() -> str:
    try:
        return metadata.version("alp")
    except metadata.PackageNotFoundError:
        return "unknown"


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def add_dead_letter_limit_flag(parser: argparse.ArgumentParser, unit: str) -> None:
    parser.add_argument(
        "--fail-on-dead-letters",
        type=fraction,
        metavar="FRACTION",
        help=f"exit with status 3 when more than FRACTION of the {unit} became dead letters (0: "
        "any dead letter fails); the outputs are written in full either way. Without it the run "
        f"succeeds, with a loud warning when every one of the {unit} became a dead letter",
    )
