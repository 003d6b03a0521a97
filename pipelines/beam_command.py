"""The ``beam`` command: run a pipeline file's or module's ``run(argv)``.

Apache Beam ships no command line of its own; this one gives every pipeline the same front door::

    beam run pipelines/extract_alps.py --input narratives.jsonl --output out/ --runner DirectRunner
    beam run -m pipelines.extract_alps --input narratives.jsonl --output out/
    beam run pipelines/extract_alps.py --help      # the pipeline's own options

Everything after FILE (or ``-m MODULE``) goes to ``run(argv)`` untouched, ``--help`` included.
While ``run`` executes, ``sys.argv`` is ``[FILE or MODULE, *argv]``, so Beam's ``PipelineOptions()``
and argparse's program name see what a plain ``python FILE ...`` would give them.

How a FILE is loaded (``importlib.util.spec_from_file_location``):

- inside a package (its folder holds ``__init__.py``, e.g. ``pipelines/extract_alps.py``) it is
  loaded under its dotted name (``pipelines.extract_alps``), so its DoFns pickle by reference as
  when imported. The folder above the top package goes on ``sys.path`` only when that package is
  not importable already (an installed project needs nothing).
- a standalone file is loaded as a module named after it, with its folder first on ``sys.path``
  as ``python FILE`` does; when Beam is imported, its functions and classes are registered with
  Beam's cloudpickle to be pickled by value, since remote workers cannot import the file.

A FILE that does not exist here but names a pipeline shipped in the installed ``pipelines``
package (``pipelines/extract_alps.py``, or the bare ``extract_alps.py``; see `SHIPPED_PIPELINES`)
runs that installed file, with a one-line note, so the documented commands work from any folder.

Exit status: what ``run`` returns (None and non-int results such as a PipelineResult count as 0),
the code of a ``SystemExit`` it raises (argparse's ``--help`` and usage errors), and 2 for usage
errors of this command (no FILE, no ``run`` in it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["SHIPPED_PIPELINES", "load_pipeline_file", "load_pipeline_module", "main", "shipped"]

# The pipeline files of the installed `pipelines` package that `beam run` finds from any folder.
SHIPPED_PIPELINES = ("extract_alps.py", "build_coco_shards.py", "build_oid_shards.py")

USAGE = """\
usage: beam run FILE [ARGS...]
       beam run -m MODULE [ARGS...]
       beam [-h | --help]  |  beam run [-h | --help]
"""

HELP = (
    USAGE
    + """
Run an Apache Beam pipeline defined in a Python file or module.

commands:
  run         load FILE or MODULE and call its run(argv) with ARGS

Beam itself ships no command line; this one is installed with the alp package.
See `beam run --help` for how FILE and MODULE are loaded.
"""
)

RUN_HELP = """\
usage: beam run FILE [ARGS...]
       beam run -m MODULE [ARGS...]

Load FILE (a path to a .py file) or MODULE (a dotted module name, as `python -m` takes) and call
its run(argv) function with ARGS, which are passed on untouched: `beam run FILE --help` shows the
pipeline's own options. The exit status is what run() returns (None counts as 0).

options:
  -h, --help  show this message and exit (only directly after `run`)
  -m MODULE   run the module MODULE instead of a file

examples:
  beam run pipelines/extract_alps.py --input narratives.jsonl --output out/
  beam run -m pipelines.extract_alps --input narratives.jsonl --output out/ --runner DirectRunner
"""


class UsageError(Exception):
    """A command line this command cannot act on; reported with exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``beam`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args:
            raise UsageError("a command is required")
        command, rest = args[0], args[1:]
        if command in ("-h", "--help"):
            print(HELP, end="")
            return 0
        if command != "run":
            raise UsageError(f"unknown command {command!r}; the only command is 'run'")
        if not rest:
            raise UsageError("run: expected FILE or -m MODULE")
        if rest[0] in ("-h", "--help"):
            print(RUN_HELP, end="")
            return 0
        if rest[0] == "-m":
            if len(rest) < 2:
                raise UsageError("run: -m expects a module name (e.g. pipelines.extract_alps)")
            target, pipeline_argv = rest[1], rest[2:]
            module = load_pipeline_module(target)
        elif rest[0].startswith("-"):
            raise UsageError(f"run: unknown option {rest[0]!r}; expected FILE or -m MODULE")
        else:
            target, pipeline_argv = rest[0], rest[1:]
            module = load_pipeline_file(target)
        run = _run_function(module, target)
    except UsageError as exc:
        print(USAGE, end="", file=sys.stderr)
        print(f"beam: error: {exc}", file=sys.stderr)
        return 2
    return _call(run, target, pipeline_argv)


def shipped(path: str | os.PathLike[str]) -> Path | None:
    """The installed pipeline file ``path`` names (``pipelines/extract_alps.py`` or
    ``extract_alps.py``), or None when it names none of `SHIPPED_PIPELINES`."""
    parts = Path(path).parts
    if not parts or parts[-1] not in SHIPPED_PIPELINES or parts[:-1] not in ((), ("pipelines",)):
        return None
    spec = importlib.util.find_spec("pipelines")
    locations = spec.submodule_search_locations if spec is not None else None
    for folder in locations or []:
        candidate = Path(folder) / parts[-1]
        if candidate.is_file():
            return candidate
    return None


def load_pipeline_file(path: str | os.PathLike[str]) -> ModuleType:
    """Load a Python file as a module (see the module docstring for its name and sys.path)."""
    given = Path(path)
    if not given.exists():
        installed = shipped(path)
        if installed is None:
            names = ", ".join(f"pipelines/{name}" for name in SHIPPED_PIPELINES)
            raise UsageError(
                f"run: no such file: {os.fspath(path)} (in {os.getcwd()}); the pipelines shipped "
                f"with the alp package, which run from any folder, are {names}; or run a module "
                "with -m, e.g. beam run -m pipelines.extract_alps"
            )
        print(
            f"beam: note: no {os.fspath(path)} in {os.getcwd()}; running the installed {installed}",
            file=sys.stderr,
        )
        given = installed
    if not given.is_file():
        raise UsageError(f"run: {os.fspath(path)} is not a file; expected a Python file")
    file = given.resolve()
    dotted, package_root = _package_name(file)
    if dotted is not None and package_root is not None:
        _make_package_importable(dotted.split(".")[0], package_root)
        existing = sys.modules.get(dotted)
        if existing is not None and _same_file(getattr(existing, "__file__", None), file):
            return existing
        importlib.import_module(dotted.rpartition(".")[0])  # parent first: relative imports
        return _exec_file(dotted, file, by_value=False)
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))  # sibling imports work, as under `python FILE`
    return _exec_file(_standalone_name(file), file, by_value=True)


def load_pipeline_module(name: str) -> ModuleType:
    """Import a module by dotted name; the working directory is tried last, as `python -m` does."""
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
        raise UsageError(f"run: -m {name!r} is not a module name (e.g. pipelines.extract_alps)")
    top = name.split(".")[0]
    if importlib.util.find_spec(top) is None and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
        importlib.invalidate_caches()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only a missing MODULE is a usage error; a missing dependency inside it propagates.
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(f"run: no module named {name!r}") from exc
        raise


def _run_function(module: ModuleType, target: str) -> Callable[[list[str]], object]:
    run = getattr(module, "run", None)
    if not callable(run):
        raise UsageError(
            f"run: {target} defines no run(argv) function; a pipeline for `beam run` must "
            "define run(argv: list[str]) and build its options from argv"
        )
    return run


def _call(run: Callable[[list[str]], object], target: str, pipeline_argv: list[str]) -> int:
    saved_argv = sys.argv
    sys.argv = [target, *pipeline_argv]
    try:
        result = run(list(pipeline_argv))
    except SystemExit as exc:  # argparse's --help and usage errors end this way
        return _exit_status(exc.code)
    finally:
        sys.argv = saved_argv
    return result if isinstance(result, int) else 0


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints the message and exits 1
    return 1


def _package_name(file: Path) -> tuple[str | None, Path | None]:
    """(dotted module name, folder holding its top package) of a file inside a package."""
    parts = [file.stem]
    folder = file.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    if file.stem == "__init__":
        parts.pop()
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return None, None
    return ".".join(parts), folder


def _make_package_importable(top: str, root: Path) -> None:
    spec = importlib.util.find_spec(top)
    if spec is None:
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
        return
    locations = [Path(p).resolve() for p in (spec.submodule_search_locations or [])]
    if (root / top).resolve() not in locations:
        where = ", ".join(str(p) for p in locations) or spec.origin
        print(
            f"beam: warning: package {top!r} is imported from {where}, not from {root / top}; "
            f"imports of {top}.* in the pipeline use that copy",
            file=sys.stderr,
        )


def _standalone_name(file: Path) -> str:
    """The file's stem when that name is free (or already this file), else a private name."""
    stem = file.stem
    if stem.isidentifier():
        existing = sys.modules.get(stem)
        if existing is None:
            try:
                spec = importlib.util.find_spec(stem)
            except (ImportError, ValueError):
                spec = None
            if spec is None or _same_file(spec.origin, file):
                return stem
        elif _same_file(getattr(existing, "__file__", None), file):
            return stem
    return "beam_run_" + re.sub(r"\W", "_", stem)


def _exec_file(name: str, file: Path, *, by_value: bool) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise UsageError(f"run: cannot load {file} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import does: dataclasses and pickling look modules up.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    if by_value:
        _pickle_by_value(module)
    return module


def _pickle_by_value(module: ModuleType) -> None:
    """Have Beam's cloudpickle ship the module's code, when the module uses Beam at all."""
    if "apache_beam" not in sys.modules:
        return
    try:
        from apache_beam.internal.cloudpickle import cloudpickle
    except ImportError:  # another Beam layout: workers then need the file importable
        return
    cloudpickle.register_pickle_by_value(module)


def _same_file(a: str | os.PathLike[str] | None, b: Path) -> bool:
    return a is not None and Path(a).resolve() == b


if __name__ == "__main__":
    sys.exit(main())
