"""The ALP paper's Table 3 in miniature, on the synthetic world and this CPU: FCOS-MO and the
Mask R-CNN* baseline side by side.

Base classes have masks, novel classes only narratives. Both detectors (``synthetic-small``:
narrow ResNet, 128 px images) are trained in each setting and evaluated with mask AP50 on base
and novel classes:

- **open-vocabulary**: base masks only (the "COCO" images, which show no novel object);
- **ALPs without boxes** (Mask R-CNN* only, Detic-style): base masks + the ALP phrases as
  image-level labels of the largest proposal (``--alp-supervision image-labels``);
- **ALP-supervised**: base masks + ALPs of the novel classes, curated from narratives by the
  real pipeline (`pipelines/extract_alps.py`, MiniLM phrase embeddings);
- **box oracle**: base masks + the exact boxes of the novel objects (no masks);
- optionally FCOS-MO **ALP-supervised, no box quantization** (the paper's Table 5 ablation).

Data, as in the paper's COCO -> OID setup, three separate worlds: the "COCO" side shows only
base-class objects, annotated with masks; the "LocNar" side shows only novel-class objects,
described in narratives (ALPs) and, for the oracle, boxed exactly; the evaluation world holds all
classes with masks. Class names are embedded with the same encoder and prompt ensemble as the ALP
phrases. Both detectors see the same worlds, seeds, steps and schedules.

Training, in two stages. The paper starts every model from ImageNet weights; here nothing is
pretrained, and a detector trained from scratch needs about 1,000 steps on the base masks before
its classifier tells the shapes apart at all (before that it has learnt objectness only, and every
setting scores alike). So a **base stage** trains each detector on the base masks
(``--base-steps``) and each of its settings continues from it for ``--steps`` more steps on its own
data, alternating batches of the two sources; the open-vocabulary settings continue on the base
masks alone, so that all see the same number of steps. The base stages are evaluated too, as the
starting points.

    python benchmarks/experiment_table3.py                 # the full table (~80 min on 2 cores)
    python benchmarks/experiment_table3.py --settings "FCOS-MO ALP-supervised"   # one row
    python benchmarks/experiment_table3.py --base-steps 40 --steps 20 --n-coco 64 --n-locnar 64 \
        --n-eval 32                                        # a quick look that everything runs

Prints one table and the paper's trends, holding or not (and writes ``results.json`` under
``--work-dir``); everything is seeded, and finished runs with the same arguments are reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiment_runs import coco_shards, evaluate_summary, quiet, train_once

from alp_curation import flags
from alp_dataset.synthetic import DEFAULT_CLASSES, write_world

BASE_CLASSES = DEFAULT_CLASSES[:7]  # circle ... cross
NOVEL_CLASSES = DEFAULT_CLASSES[7:]  # diamond ... bone
IMAGE_SIZE = 128


def alp_shards(narratives: Path, images: Path, out: Path) -> Path:
    from pipelines.extract_alps import run

    if not (out / "manifest.json").exists():
        quiet(run, ["--input", str(narratives), "--images", str(images), "--output", str(out),
                    "--shard-size", "100", "--text-encoder", "minilm", "--runner", "FnApiRunner",
                    "--overwrite"])  # fmt: skip
    return out


DATA_LAYOUT = 2  # bump when the worlds change, so that old shards are not reused


def prepare(work: Path, *, n_coco: int, n_locnar: int, n_eval: int, seed: int) -> dict[str, Path]:
    """Worlds and shards, reused when made with the same arguments (else remade, with the runs)."""
    size = (IMAGE_SIZE, IMAGE_SIZE)
    params = {"layout": DATA_LAYOUT, "n_coco": n_coco, "n_locnar": n_locnar, "n_eval": n_eval,
              "seed": seed, "image_size": IMAGE_SIZE}  # fmt: skip
    stamp = work / "data_params.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != params:
        for old in [*work.glob("world_*"), *work.glob("shards_*"), work / "runs"]:
            shutil.rmtree(old, ignore_errors=True)
        stamp.write_text(json.dumps(params))
    coco = write_world(
        work / "world_coco", n_coco, seed=seed, classes=BASE_CLASSES, image_size=size
    )
    locnar = write_world(
        work / "world_locnar", n_locnar, seed=seed + 1, classes=NOVEL_CLASSES, image_size=size
    )
    held_out = write_world(work / "world_eval", n_eval, seed=seed + 2, image_size=size)
    assert coco.images and locnar.images and held_out.images
    return {
        "base_masks": coco_shards(coco.instances, coco.images, work / "shards_base_masks"),
        "novel_alps": alp_shards(locnar.narratives, locnar.images, work / "shards_novel_alps"),
        # Every category of the file is "base" with --class-split all; masks for none of them.
        "novel_boxes": coco_shards(
            locnar.instances,
            locnar.images,
            work / "shards_novel_boxes",
            *("--mask-classes", "novel", "--boxes-for", "all"),
        ),
        "eval": coco_shards(held_out.instances, held_out.images, work / "shards_eval"),
    }


DETECTORS = {"mask-rcnn-star": "Mask R-CNN*", "fcos-mo": "FCOS-MO"}


@dataclass(frozen=True)
class Setting:
    """One row of the table: the detector, its training sources and its extra flags."""

    arch: str
    sources: tuple[str, ...]
    extra: tuple[str, ...] = ()


SETTINGS: dict[str, Setting] = {
    "Mask R-CNN* open-vocabulary": Setting("mask-rcnn-star", ("base_masks",)),
    "Mask R-CNN* ALPs without boxes": Setting(
        "mask-rcnn-star", ("base_masks", "novel_alps"), ("--alp-supervision", "image-labels")
    ),
    "Mask R-CNN* ALP-supervised": Setting("mask-rcnn-star", ("base_masks", "novel_alps")),
    "FCOS-MO open-vocabulary": Setting("fcos-mo", ("base_masks",)),
    "FCOS-MO ALP-supervised": Setting("fcos-mo", ("base_masks", "novel_alps")),
    "Mask R-CNN* box oracle": Setting("mask-rcnn-star", ("base_masks", "novel_boxes")),
    "FCOS-MO box oracle": Setting("fcos-mo", ("base_masks", "novel_boxes")),
    "FCOS-MO ALP-supervised, no box quantization": Setting(
        "fcos-mo", ("base_masks", "novel_alps"), ("--no-quantize",)
    ),
}
DEFAULT_SETTINGS = [name for name in SETTINGS if "no box quantization" not in name]


def base_stage_name(arch: str) -> str:
    return f"{DETECTORS[arch]} base stage (start of its settings)"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _schedule(arch: str, steps: int, lr: float, args: argparse.Namespace) -> list[str]:
    return [
        "--arch", arch, "--preset", "synthetic-small", "--steps", str(steps),
        "--warmup-steps", str(min(200, steps // 10)), "--lr", str(lr),
        "--batch-size", str(args.batch_size), "--optimizer", args.optimizer,
        "--scale-range", "0.75", "1.5", "--num-workers", "1", "--seed", str(args.seed),
        "--checkpoint-every", str(steps), "--log-every", "25", "--no-progress",
    ]  # fmt: skip


def _evaluate(checkpoint: Path, data: dict[str, Path]) -> dict[str, Any]:
    return evaluate_summary(
        checkpoint, data["eval"], list(BASE_CLASSES), list(NOVEL_CLASSES), IMAGE_SIZE
    )


def base_stage(
    arch: str, data: dict[str, Path], work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The detector every setting of ``arch`` starts from: ``--base-steps`` on the base masks."""
    started = time.perf_counter()
    stamp = {"arch": arch, **{k: getattr(args, k) for k in
             ("base_steps", "base_lr", "optimizer", "batch_size", "seed")}}  # fmt: skip
    run_dir = work / "runs" / arch / "base_stage"
    train_once(
        run_dir,
        stamp,
        [*_schedule(arch, args.base_steps, args.base_lr, args),
         "--shards", str(data["base_masks"])],
    )  # fmt: skip
    trained = time.perf_counter() - started
    summary = _evaluate(run_dir / "last.pt", data)
    return {
        "arch": arch,
        "checkpoint": run_dir / "last.pt",
        "stamp": stamp,
        "train_s": trained,
        "eval_s": time.perf_counter() - started - trained,
        "summary": summary,
    }


def train_and_evaluate(
    name: str, data: dict[str, Path], work: Path, args: argparse.Namespace, start: dict[str, Any]
) -> dict[str, Any]:
    setting = SETTINGS[name]
    run_dir = work / "runs" / setting.arch / _slug(name)
    shards = [flag for source in setting.sources for flag in ("--shards", str(data[source]))]
    started = time.perf_counter()
    stamp = {
        "arch": setting.arch,
        "sources": setting.sources,
        "extra": setting.extra,
        "start": start["stamp"],
        **{k: getattr(args, k) for k in ("steps", "lr", "optimizer", "batch_size", "seed")},
    }
    train_once(
        run_dir,
        stamp,
        [*_schedule(setting.arch, args.steps, args.lr, args), *shards,
         "--init-from", str(start["checkpoint"]), *setting.extra],
    )  # fmt: skip
    trained = time.perf_counter() - started
    summary = _evaluate(run_dir / "last.pt", data)
    return {
        "arch": setting.arch,
        "train_s": trained,
        "eval_s": time.perf_counter() - started - trained,
        "summary": summary,
    }


def _pct(value: float | None) -> str:
    """A fraction (0-1, as `evaluate_summary` gives it) in percent."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print("| setting | mask AP50 base | mask AP50 novel | box AP50 novel | OID mask AP50 novel "
          "| train s | eval s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        base, novel = r["summary"]["base"], r["summary"]["novel"]
        print(
            f"| {name} | {_pct(base['mask_AP50'])} | {_pct(novel['mask_AP50'])} "
            f"| {_pct(novel['box_AP50'])} | {_pct(novel['oid_mask_AP50'])} "
            f"| {r['train_s']:.0f} | {r['eval_s']:.0f} |"
        )


def _novel(results: dict[str, dict[str, Any]], name: str) -> float | None:
    r = results.get(name)
    return None if r is None else r["summary"]["novel"]["mask_AP50"]


# The paper's trends (Table 3, Sec. 4 "Results"), as comparisons of novel mask AP50.
TRENDS = (
    ("Mask R-CNN* ALP-supervised", ">", "Mask R-CNN* open-vocabulary"),
    ("FCOS-MO ALP-supervised", ">", "FCOS-MO open-vocabulary"),
    ("Mask R-CNN* ALP-supervised", ">", "Mask R-CNN* ALPs without boxes"),
    ("FCOS-MO ALP-supervised", ">=", "Mask R-CNN* ALP-supervised"),
    ("Mask R-CNN* box oracle", ">", "Mask R-CNN* ALP-supervised"),
    ("FCOS-MO box oracle", ">", "FCOS-MO ALP-supervised"),
)


def print_trends(results: dict[str, dict[str, Any]]) -> None:
    """Each trend whose two rows were run: holds or not, with the numbers (novel mask AP50). The
    paper's "ALPs without boxes stay near open-vocabulary" is printed as their difference."""
    print("\nTrends of the paper (novel mask AP50):")
    for left, relation, right in TRENDS:
        a, b = _novel(results, left), _novel(results, right)
        if a is None or b is None:
            continue
        holds = a > b if relation == ">" else a >= b
        verdict = "holds" if holds else "does NOT hold"
        print(f"- {left} {relation} {right}: {_pct(a)} vs {_pct(b)}: {verdict}")
    a = _novel(results, "Mask R-CNN* ALPs without boxes")
    b = _novel(results, "Mask R-CNN* open-vocabulary")
    if a is not None and b is not None:
        print(f"- Mask R-CNN* ALPs without boxes - open-vocabulary: {100 * (a - b):+.1f} points")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("table3_work"),
        help="worlds, shards, runs and results.json; finished steps are reused "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--n-coco",
        type=int,
        default=1200,
        help="images of the base-mask world (default: %(default)s)",
    )
    parser.add_argument(
        "--n-locnar",
        type=int,
        default=1200,
        help="narrated images of novel classes (default: %(default)s)",
    )
    parser.add_argument(
        "--n-eval",
        type=int,
        default=150,
        help="held-out images with masks for all classes (default: %(default)s)",
    )
    parser.add_argument(
        "--base-steps",
        type=int,
        default=1500,
        help="steps of the base stage: one detector trained on the base masks, "
        "the start of every setting (default: %(default)s)",
    )
    parser.add_argument(
        "--base-lr",
        type=float,
        default=0.003,
        help="peak learning rate of the base stage (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=600,
        help="steps of each setting after the base stage (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.001,
        help="peak learning rate of the settings (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    parser.add_argument(
        "--optimizer",
        default="adamw",
        choices=("sgd", "adamw"),
        help="AdamW learns far more in this budget than SGD from scratch (default: %(default)s)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=DEFAULT_SETTINGS,
        choices=list(SETTINGS),
        metavar="NAME",
        help=f"settings to run, each with its detector's base stage (default: {DEFAULT_SETTINGS}"
        f"; all: {list(SETTINGS)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    return parser  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = flags.parse_args(build_parser(), argv)
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = prepare(
        work, n_coco=args.n_coco, n_locnar=args.n_locnar, n_eval=args.n_eval, seed=args.seed
    )
    prepared = time.perf_counter() - start
    print(f"worlds and shards ready in {prepared:.0f} s", flush=True)
    results: dict[str, dict[str, Any]] = {}
    starts: dict[str, dict[str, Any]] = {}
    for arch in DETECTORS:  # base stages first, then the settings in table order
        if any(SETTINGS[name].arch == arch for name in args.settings):
            starts[arch] = base_stage(arch, data, work, args)
            results[base_stage_name(arch)] = starts[arch]
            print(f"{base_stage_name(arch)}: {starts[arch]['summary']}", flush=True)
    for name in args.settings:
        results[name] = train_and_evaluate(name, data, work, args, starts[SETTINGS[name].arch])
        print(f"{name}: {results[name]['summary']}", flush=True)
    total = time.perf_counter() - start
    record = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "prepare_s": prepared,
        "total_s": total,
        "results": {
            name: {k: v for k, v in r.items() if k not in ("checkpoint", "stamp")}
            for name, r in results.items()
        },
    }
    (work / "results.json").write_text(json.dumps(record, indent=2))
    print(
        f"\nTable 3 in miniature: {len(BASE_CLASSES)} base classes with masks "
        f"({args.n_coco} images), {len(NOVEL_CLASSES)} novel classes ({args.n_locnar} narrated "
        f"images), {args.n_eval} held-out images; a base stage of {args.base_steps} steps, then "
        f"{args.steps} steps per setting, batch {args.batch_size}; total {total / 60:.1f} min"
    )
    print_table(results)
    print_trends(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
