import argparse
import io

import pytest

from alp_curation import flags


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tool", formatter_class=flags.HelpFormatter)
    p.add_argument("--output", help="where results go")
    p.add_argument("--image-size", type=int, default=512, help="side in px")
    p.add_argument("--images", help="a folder (not the count of bench_polars)")
    flags.add_class_list(p, "--classes", help="class names")
    return p


def test_old_spellings_are_rewritten_with_one_note_each():
    stream = io.StringIO()
    argv = ["--out", "a", "--size=64", "--out", "b", "--images", "dir"]
    known = flags.option_strings(parser())
    assert flags.renamed_argv(argv, known, "tool", stream) == [
        "--output", "a", "--image-size=64", "--output", "b", "--images", "dir"
    ]  # fmt: skip
    notes = stream.getvalue().splitlines()
    assert notes == [
        "tool: note: --out is now spelled --output (docs/cli.md)",
        "tool: note: --size is now spelled --image-size (docs/cli.md)",
    ]


def test_a_flag_the_parser_defines_itself_is_never_rewritten():
    # --images is this parser's own flag: RENAMED's "--images" -> "--n-images" does not apply.
    p = argparse.ArgumentParser(prog="t")
    p.add_argument("--size")
    p.add_argument("--image-size")
    known = flags.option_strings(p)
    assert flags.renamed_argv(["--size", "1"], known, "t", io.StringIO()) == ["--size", "1"]


def test_nothing_after_a_bare_double_dash_is_touched():
    known = flags.option_strings(parser())
    out = flags.renamed_argv(["--", "--out", "x"], known, "t", io.StringIO())
    assert out == ["--", "--out", "x"]


def test_parse_args_reads_old_spellings_and_help_hides_them(capsys):
    args = flags.parse_args(parser(), ["--out", "o", "--size", "7", "--classes", "dog,red car"])
    assert (args.output, args.image_size, args.classes) == ("o", 7, ("dog", "red car"))
    assert "now spelled --output" in capsys.readouterr().err
    text = parser().format_help()
    assert "--out " not in text and "--size" not in text
    assert "(default: 512)" in text


def test_class_lists_take_commas_and_the_older_space_separated_words():
    assert flags.parse_args(parser(), ["--classes", "a,b", "c"]).classes == ("a", "b", "c")


@pytest.mark.parametrize("value", ["a,,b", "a,a"])
def test_empty_or_repeated_class_names_are_usage_errors(value, capsys):
    with pytest.raises(SystemExit) as exc:
        flags.parse_args(parser(), ["--classes", value])
    assert exc.value.code == 2
    assert "--classes" in capsys.readouterr().err


def test_quiet_is_read_as_an_entry_points_own_no_progress_without_a_note():
    p = argparse.ArgumentParser(prog="t")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    stream = io.StringIO()
    assert flags.renamed_argv(["--quiet"], flags.option_strings(p), "t", stream) == [
        "--no-progress"
    ]
    assert stream.getvalue() == ""
    assert flags.parse_args(p, ["--quiet"]).progress is False
