"""What the miniature experiments of `benchmarks/` share: running a command line quietly, COCO
shards made once, and training runs reused when finished with the same arguments."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["coco_shards", "quiet", "train_once"]


def quiet(run: Callable[[list[str]], int], argv: list[str]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = run(argv)
    if status != 0:
        raise SystemExit(f"{run.__module__} failed ({status}):\n{out.getvalue()}")


def coco_shards(instances: Path, images: Path, out: Path, *extra: str) -> Path:
    from pipelines.build_coco_shards import run

    if not (out / "manifest.json").exists():
        quiet(run, ["--instances", str(instances), "--images", str(images), "--output",
                    str(out), "--shard-size", "100", "--runner", "FnApiRunner", "--overwrite",
                    *extra])  # fmt: skip
    return out


def train_once(run_dir: Path, stamp: dict[str, Any], argv: list[str]) -> None:
    """Train into ``run_dir`` unless a finished run with the very same ``stamp`` is there."""
    from models.train import main as train

    stamp_path = run_dir / "run_args.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) != json.loads(json.dumps(stamp)):
        shutil.rmtree(run_dir)
    if (run_dir / "last.pt").exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # a run cut short: start it again
    run_dir.mkdir(parents=True)
    stamp_path.write_text(json.dumps(stamp))
    status = train([*argv, "--output", str(run_dir)])
    if status != 0:
        raise SystemExit(f"training in {run_dir} failed ({status})")
