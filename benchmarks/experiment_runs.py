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

__all__ = ["coco_shards", "evaluate_summary", "quiet", "train_once"]


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


def evaluate_summary(
    checkpoint: Path, shards: Path, base: list[str], novel: list[str], image_size: int
) -> dict[str, Any]:
    """``models.evaluate`` of ``checkpoint`` on ``shards`` (its JSON beside the checkpoint): the
    summary's APs as fractions (0-1), as the experiments' tables and results.json hold them,
    whichever unit the JSON states (it says percent since it has a "units" key)."""
    from models.evaluate import main as evaluate

    out = checkpoint.parent / "eval.json"
    status = evaluate([
        "--checkpoint", str(checkpoint), "--shards", str(shards),
        "--base-classes", ",".join(base), "--novel-classes", ",".join(novel),
        "--image-size", str(image_size), "--batch-size", "8", "--output", str(out),
    ])  # fmt: skip
    if status != 0:
        raise SystemExit(f"evaluating {checkpoint} failed ({status})")
    result = json.loads(out.read_text())
    scale = 0.01 if result.get("units") == "percent" else 1.0
    return {
        subset: {k: None if v is None else v * scale for k, v in values.items()}
        for subset, values in result["summary"].items()
    }
