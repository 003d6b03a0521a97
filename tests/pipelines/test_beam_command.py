"""Tests for pipelines.beam_command, the ``beam`` console script.

Most pipelines here are tiny files written to tmp_path that define ``run(argv)`` and record what
they were given; they need no Beam. One test runs a real Beam pipeline (BundleBasedDirectRunner,
chosen explicitly so that nothing is downloaded).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.beam_command import main

REPO = Path(__file__).resolve().parents[2]

RECORDING_PIPELINE = """\
import argparse
import json
import sys


def run(argv):
    parser = argparse.ArgumentParser(description="Tiny pipeline: records its arguments.")
    parser.add_argument("--out", required=True, help="where the record goes")
    parser.add_argument("--exit-code", type=int, default=None)
    args, rest = parser.parse_known_args(argv)
    record = {"argv": argv, "sys_argv": sys.argv, "module": __name__, "rest": rest}
    with open(args.out, "w") as f:
        json.dump(record, f)
    return args.exit_code
"""


@pytest.fixture(autouse=True)
def restore_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what loading the test pipelines adds to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if file.startswith(str(tmp_path)):
            del sys.modules[name]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def read_record(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())


def test_run_file_passes_the_remaining_arguments(tmp_path: Path) -> None:
    pipeline = write(tmp_path / "tiny_pipeline.py", RECORDING_PIPELINE)
    out = tmp_path / "record.json"
    argv = ["--out", str(out), "--runner", "DirectRunner", "--flag=1", "positional"]
    assert main(["run", str(pipeline), *argv]) == 0  # run() returned None
    record = read_record(out)
    assert record["argv"] == argv
    assert record["sys_argv"] == [str(pipeline), *argv]  # as `python FILE ...` would see
    assert record["module"] == "tiny_pipeline"
    assert record["rest"] == ["--runner", "DirectRunner", "--flag=1", "positional"]


def test_exit_status_is_runs(tmp_path: Path) -> None:
    pipeline = write(tmp_path / "tiny_pipeline.py", RECORDING_PIPELINE)
    out = str(tmp_path / "record.json")
    assert main(["run", str(pipeline), "--out", out, "--exit-code", "3"]) == 3
    failing = write(
        tmp_path / "failing.py",
        """\
        import sys

        def run(argv):
            sys.exit("the input is empty")
        """,
    )
    assert main(["run", str(failing)]) == 1


def test_help_after_file_goes_to_the_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = write(tmp_path / "tiny_pipeline.py", RECORDING_PIPELINE)
    assert main(["run", str(pipeline), "--help"]) == 0
    shown = capsys.readouterr().out
    assert "Tiny pipeline: records its arguments." in shown
    assert "usage: tiny_pipeline.py" in shown
    assert "beam run" not in shown
    assert main(["run", str(pipeline)]) == 2  # the pipeline's own usage error (--out missing)
    assert "--out" in capsys.readouterr().err


def test_run_module_with_dash_m(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "tinypkg_m" / "__init__.py", "")
    write(tmp_path / "tinypkg_m" / "job.py", RECORDING_PIPELINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "record.json"
    assert main(["run", "-m", "tinypkg_m.job", "--out", str(out), "--help-me"]) == 0
    record = read_record(out)
    assert record["module"] == "tinypkg_m.job"
    assert record["argv"] == ["--out", str(out), "--help-me"]
    assert record["sys_argv"][0] == "tinypkg_m.job"


def test_dash_m_finds_modules_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "tinypkg_cwd" / "__init__.py", "")
    write(tmp_path / "tinypkg_cwd" / "job.py", RECORDING_PIPELINE)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-m", "tinypkg_cwd.job", "--out", "record.json"]) == 0
    assert read_record(tmp_path / "record.json")["module"] == "tinypkg_cwd.job"


def test_file_inside_a_package_is_loaded_under_its_dotted_name(tmp_path: Path) -> None:
    write(tmp_path / "tinypkg_f" / "__init__.py", "")
    write(tmp_path / "tinypkg_f" / "greetings.py", "GREETING = 'hello from a sibling'\n")
    job = write(
        tmp_path / "tinypkg_f" / "job.py",
        """\
        import json

        from tinypkg_f.greetings import GREETING
        from . import greetings

        def run(argv):
            with open(argv[0], "w") as f:
                json.dump({"module": __name__, "greeting": greetings.GREETING}, f)
            return 0 if GREETING == greetings.GREETING else 1
        """,
    )
    assert str(tmp_path) not in sys.path
    out = tmp_path / "record.json"
    assert main(["run", str(job), str(out)]) == 0
    assert read_record(out) == {"module": "tinypkg_f.job", "greeting": "hello from a sibling"}
    assert sys.path[0] == str(tmp_path)  # the package was not importable, so its root was added


def test_project_pipeline_file_needs_no_sys_path_change(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # This package is installed (editable), so `pipelines` imports as is; the file has no run().
    path_before = list(sys.path)
    assert main(["run", str(REPO / "pipelines" / "beam_command.py")]) == 2
    assert sys.path == path_before
    err = capsys.readouterr().err
    assert "defines no run(argv) function" in err
    assert "warning" not in err


def test_missing_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nowhere.py"), "--out", "x"]) == 2
    assert f"no such file: {tmp_path / 'nowhere.py'}" in capsys.readouterr().err
    assert main(["run", str(tmp_path)]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_a_shipped_pipeline_runs_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No pipelines/ under the working directory: the installed pipelines/extract_alps.py runs.
    monkeypatch.chdir(tmp_path)
    assert main(["run", "pipelines/extract_alps.py", "--help"]) == 0
    shown = capsys.readouterr()
    assert "--text-encoder" in shown.out
    installed = (REPO / "pipelines" / "extract_alps.py").resolve()
    assert f"running the installed {installed}" in shown.err
    assert main(["run", "build_coco_shards.py", "--help"]) == 0
    assert "--class-split" in capsys.readouterr().out


def test_an_unknown_pipeline_file_lists_the_shipped_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "pipelines/extract_alp.py", "--help"]) == 2
    err = capsys.readouterr().err
    assert "no such file: pipelines/extract_alp.py" in err
    for name in ("extract_alps.py", "build_coco_shards.py", "build_oid_shards.py"):
        assert f"pipelines/{name}" in err


def test_file_without_run_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = write(tmp_path / "no_run.py", "RUN = 'not a function'\n")
    assert main(["run", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert f"{pipeline} defines no run(argv) function" in err
    assert err.startswith("usage: beam run FILE")


def test_unknown_module_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-m", "no_such_pipeline_module.job"]) == 2
    assert "no module named 'no_such_pipeline_module.job'" in capsys.readouterr().err
    assert main(["run", "-m"]) == 2
    assert main(["run", "-m", "not/a/module.py"]) == 2


def test_missing_dependency_inside_a_module_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path / "needs_missing_dep.py", "import no_such_dependency_xyz\n\ndef run(argv): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        main(["run", "-m", "needs_missing_dep"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "a command is required"),
        (["walk"], "unknown command 'walk'"),
        (["run"], "expected FILE or -m MODULE"),
        (["run", "--verbose", "file.py"], "unknown option '--verbose'"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert "beam run FILE [ARGS...]" in shown and "beam run -m MODULE" in shown
    assert main(["run", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "run(argv)" in shown and "passed on untouched" in shown
    assert main(["run", "-h"]) == 0


@pytest.mark.slow
def test_runs_a_real_beam_pipeline_whose_code_pickles_by_value(tmp_path: Path) -> None:
    pipeline = write(
        tmp_path / "tiny_beam_pipeline.py",
        """\
        import apache_beam as beam
        from apache_beam.internal import pickler
        from apache_beam.options.pipeline_options import PipelineOptions


        class Triple(beam.DoFn):
            def process(self, x):
                yield 3 * x


        def run(argv):
            out, pickled = argv[0], argv[1]
            with open(pickled, "wb") as f:
                f.write(pickler.dumps(Triple()))
            options = PipelineOptions(argv[2:])
            with beam.Pipeline(options=options) as p:
                (
                    p
                    | beam.Create([1, 2, 3])
                    | beam.ParDo(Triple())
                    | beam.io.WriteToText(out, shard_name_template="")
                )
        """,
    )
    out, pickled = tmp_path / "tripled.txt", tmp_path / "triple.pkl"
    argv = ["run", str(pipeline), str(out), str(pickled), "--runner", "BundleBasedDirectRunner"]
    assert main(argv) == 0
    assert sorted(out.read_text().split()) == ["3", "6", "9"]
    # A process that cannot import the file (as a remote worker) still unpickles the DoFn.
    load = (
        "import sys; from apache_beam.internal import pickler; "
        "fn = pickler.loads(open(sys.argv[1], 'rb').read()); print(list(fn.process(5)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", load, str(pickled)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[15]"


def test_installed_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("beam")
    if not script.is_file():
        pytest.skip(f"no `beam` console script beside {sys.executable}: pip install -e . adds it")
    pipeline = write(tmp_path / "tiny_pipeline.py", RECORDING_PIPELINE)
    out = tmp_path / "record.json"
    done = subprocess.run(
        [str(script), "run", str(pipeline), "--out", str(out), "--exit-code", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 5, done.stderr
    assert read_record(out)["argv"] == ["--out", str(out), "--exit-code", "5"]
    shown = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == 0 and "beam run FILE" in shown.stdout
