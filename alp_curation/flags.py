"""One vocabulary of command-line flags for every ALP entry point (docs/cli.md).

Each concept has one spelling everywhere: ``--output`` for where results go, ``--num-workers``
for data-loader workers, ``--image-size``, ``--class-split``, ``--batch-size``, comma-separated
class lists, and so on. Spellings that earlier versions used keep working: `parse_args` rewrites
them to today's flag before argparse sees them, prints a note on stderr, and ``--help`` does not
show them.

    parser = argparse.ArgumentParser(formatter_class=flags.HelpFormatter)
    parser.add_argument("--output", ...)
    args = flags.parse_args(parser, argv)     # "--out x" is read as "--output x", with a note
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

# Old spelling -> today's. An old spelling is only rewritten where the parser defines today's
# flag and not the old one, so one table serves every entry point (``--images`` is a folder in
# the pipelines and stays so; it was a count in bench_polars, which now says ``--n-images``).
RENAMED: dict[str, str] = {
    "--out": "--output",
    "--output-dir": "--output",
    "--workers": "--num-workers",
    "--size": "--image-size",
    "--split": "--class-split",
    "--batch": "--batch-size",
    "--repeat": "--repeats",
    "--images": "--n-images",
    "--rows": "--n-rows",
    "--files": "--n-files",
    "--phrases": "--n-phrases",
}

# The convention's spelling -> the flag an entry point defines for it under another name, read
# silently: ``--quiet`` is ``models.train``'s ``--no-progress`` (a config field's on/off flag).
SYNONYMS: dict[str, str] = {"--quiet": "--no-progress"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows each flag's default: "(default: X)" is
    added unless the help already says its default, or the default is None / False / SUPPRESS
    (an optional path, an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        # help strings are %-format strings: the default's own text must not be read as one
        return text + f" (default: {shown})".replace("%", "%%")


def renamed_argv(
    argv: Sequence[str],
    known: Iterable[str],
    prog: str,
    stream: TextIO | None = None,
) -> list[str]:
    """``argv`` with each old spelling (``--out x``, ``--out=x``) rewritten to today's flag.

    ``known`` are the option strings the entry point defines. Nothing after a bare ``--`` is
    touched. One note per old spelling goes to ``stream`` (stderr by default).
    """
    known = set(known)
    stream = sys.stderr if stream is None else stream
    out: list[str] = []
    noted: set[str] = set()
    tokens = list(argv)
    for i, token in enumerate(tokens):
        if token == "--":
            out.extend(tokens[i:])
            break
        flag, sep, value = token.partition("=")
        synonym = SYNONYMS.get(flag)
        if synonym is not None and synonym in known and flag not in known:
            out.append(synonym + sep + value)  # the convention's word for it: no note
            continue
        new = RENAMED.get(flag)
        if new is None or new not in known or flag in known:
            out.append(token)
            continue
        if flag not in noted:
            print(f"{prog}: note: {flag} is now spelled {new} (docs/cli.md)", file=stream)
            noted.add(flag)
        out.append(new + sep + value)
    return out


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """``parser.parse_args`` after rewriting old flag spellings (see `renamed_argv`)."""
    argv = sys.argv[1:] if argv is None else argv
    return parser.parse_args(renamed_argv(argv, option_strings(parser), parser.prog))


def parse_known_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, list[str]]:
    """``parser.parse_known_args`` after rewriting old flag spellings (see `renamed_argv`)."""
    argv = sys.argv[1:] if argv is None else argv
    return parser.parse_known_args(renamed_argv(argv, option_strings(parser), parser.prog))


def split_class_names(text: str) -> tuple[str, ...]:
    """ "dog, sofa,red car" -> ("dog", "sofa", "red car"); ValueError for an empty or repeated
    name. What every class-list flag, and `models.inference.parse_class_list`, reads."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise ValueError(f"class list {text!r} holds an empty name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"class list {text!r} repeats {repeated}")
    return names


def class_list(text: str) -> tuple[str, ...]:
    """`split_class_names` as an argparse ``type=``: its errors become usage errors that keep
    their message."""
    try:
        return split_class_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def join_class_lists(values: Iterable[str]) -> tuple[str, ...]:
    """The names of several shell words, each comma-separated: ["a,b", "c"] -> ("a", "b", "c");
    ValueError for an empty name, or a name repeated within or across the words."""
    names = [name for value in values for name in split_class_names(value)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"repeats {repeated}")
    return tuple(names)


class ClassListAction(argparse.Action):
    """A class-list flag given with ``nargs="+"``: ``--classes dog,cat`` (the convention) and
    the older ``--classes dog cat`` both give ("dog", "cat")."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, join_class_lists(values))
        except ValueError as exc:
            parser.error(f"argument {option_string}: {exc}")


def add_class_list(parser: argparse.ArgumentParser, flag: str, **kwargs) -> argparse.Action:
    """A class-list flag: comma-separated names (space-separated words still work)."""
    kwargs.setdefault("metavar", "NAME,NAME")
    return parser.add_argument(flag, nargs="+", action=ClassListAction, **kwargs)
