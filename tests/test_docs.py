"""Every shell and Python block of README.md, docs/ and samples/ runs as written.

Each document runs top to bottom in a workspace of its own that looks like the repository root
(its files linked in, ``.venv`` the environment running this test), so a block sees what the
blocks before it in the same document made, and nothing from another document. Shell blocks run
under ``bash -euo pipefail``, Python blocks with the environment's interpreter.

Long blocks write their sizes as ``${NAME:-default}``: a reader gets the default, this test
sets ``NAME`` small (``SMALL`` below). A block that cannot run here (real COCO or Open Images
files, Google Cloud, eight GPUs, the test suite itself) is preceded in the Markdown by
``<!-- not run: why -->``; the reason is required and every such block is listed by
``test_blocks_that_do_not_run_say_why``.

    ./dev.sh test tests/test_docs.py          # all documents
    ./dev.sh test tests/test_docs.py -k training
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [REPO / "README.md", REPO / "samples" / "synthetic" / "README.md", *REPO.glob("docs/*.md")]
)
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
# Sizes of long blocks (see the module docstring).
SMALL = {
    "N_IMAGES": "24",
    "N_NARRATIVES": "40",
    "SIZES": "40,60",
    "N_ROWS": "2000",
    "N_TEXTS": "16",
    "STEPS": "3",
    "RUNS": "1",
    "IMAGE_SIZE": "128",
}
BLOCK_TIMEOUT_S = 900
# Blocks another test runs, and checks more closely than "it runs".
COVERED = {
    ("docs/querying.md", "python"): "tests/alp_dataset/test_query.py runs these in one namespace "
    "and compares what each prints with the text block under it",
}
# What a block's output must never hold: a renamed flag (docs/cli.md) or a Python traceback.
FORBIDDEN_OUTPUT = re.compile(r"is now spelled|Traceback \(most recent call last\)")

FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>.*?)\s*-->\s*\Z", re.S)


@dataclass(frozen=True)
class Block:
    document: Path
    line: int
    lang: str  # "shell" or "python"
    body: str
    not_run: str | None  # the reason, for a block that does not run here

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def blocks_of(document: Path) -> list[Block]:
    """The shell and Python blocks of one Markdown file, in order."""
    text = document.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        lang = match["lang"].lower()
        if lang not in SHELL | PYTHON:
            continue  # output, a directory tree, a table: nothing to run
        before = text[: match.start()].rstrip()
        marker = NOT_RUN.search(before[-400:])
        lang = "shell" if lang in SHELL else "python"
        covered = COVERED.get((str(document.relative_to(REPO)), lang))
        found.append(
            Block(
                document=document,
                line=text.count("\n", 0, match.start()) + 1,
                lang=lang,
                body=match["body"],
                not_run=marker["why"] if marker else covered,
            )
        )
    return found


def workspace(root: Path) -> Path:
    """A folder that looks like the repository root: its entries linked in, ``.venv`` the
    environment running the tests, outputs (``out/``, ``runs/``, ...) made fresh here."""
    root.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name in {".venv", ".git", "out", "runs"} or entry.name.startswith("."):
            continue
        (root / entry.name).symlink_to(entry)
    (root / ".venv").symlink_to(Path(sys.prefix))
    return root


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> None:
    if block.lang == "shell":
        command = ["bash", "-euo", "pipefail", "-c", block.body]
    else:
        command = [str(cwd / ".venv" / "bin" / "python"), "-c", block.body]
    done = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        f"{block.where}: the block exited {done.returncode}\n--- block\n{block.body}"
        f"--- output (last 4000 characters)\n{output[-4000:]}"
    )
    bad = FORBIDDEN_OUTPUT.search(output)
    assert bad is None, (
        f"{block.where}: the block printed {bad.group(0)!r}\n--- block\n{block.body}"
        f"--- output (last 4000 characters)\n{output[-4000:]}"
    )


def every_block() -> list[Block]:
    return [block for document in DOCUMENTS for block in blocks_of(document)]


# ---------------------------------------------------------------------------------------------
# The blocks themselves


def test_blocks_that_do_not_run_say_why() -> None:
    skipped = [b for b in every_block() if b.not_run is not None]
    for block in skipped:
        assert len(block.not_run) >= 12, f"{block.where}: say why the block does not run"
    print("\n".join(f"not run: {b.where}: {b.not_run}" for b in skipped))


def test_shell_blocks_call_the_project_environment() -> None:
    # One way everywhere (README: the set-up command makes .venv): .venv/bin/python, .venv/bin/beam.
    bare = re.compile(r"(^|[\s;&|(])(python3?|beam|pip|pytest|torchrun)\s", re.M)
    wrong = []
    for block in every_block():
        if block.lang != "shell":
            continue
        for number, line in enumerate(block.body.splitlines()):
            code = line.split("#", 1)[0]
            if "python3 -m venv" in code:
                continue  # making the environment itself
            if bare.search(code):
                wrong.append(
                    f"{block.document.relative_to(REPO)}:{block.line + 1 + number}: {line}"
                )
    assert not wrong, "call the tools through .venv/bin/:\n" + "\n".join(wrong)


@pytest.mark.slow
@pytest.mark.parametrize(
    "document", [d for d in DOCUMENTS if any(b.not_run is None for b in blocks_of(d))],
    ids=lambda d: str(d.relative_to(REPO)),
)  # fmt: skip
def test_document_runs_as_written(document: Path, tmp_path: Path) -> None:
    cwd = workspace(tmp_path / "repo")
    env = {**os.environ, **SMALL, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for block in blocks_of(document):
        if block.not_run is None:
            run_block(block, cwd, env)
