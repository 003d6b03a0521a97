"""Table 1 of MaskX R-CNN ("Learning to Segment Every Thing", Hu et al.) in miniature, on the
synthetic world and this CPU: how a partially supervised Mask R-CNN segments classes it never saw
a mask of.

Every class has boxes, only the classes of set A have masks (Sec. 3). A MaskX R-CNN
(``--arch maskx-rcnn``, ``synthetic-small``: narrow ResNet, 128 px images) predicts the mask of
class c either with one class-agnostic mask for every class (the baseline, Sec. 3.3) or with mask
weights w_seg = T(w_det) that a weight transfer function T computes from the class's box-head
weights (Sec. 3.1), optionally fused with a class-agnostic MLP mask branch (Sec. 3.4). Rows, named
as in the paper's Table 1 (mask AP on B is the number that matters):

- (a) the input of T: ``transfer w/ randn`` (a random vector per class, the control), ``w/ text``
  (the paper's GloVe row; here the project's phrase encoder, MiniLM through the prompt ensemble),
  ``w/ cls``, ``w/ box``, ``w/ cls+box`` (the box head's classification / regression weights);
  against ``class-agnostic`` and the ``fully supervised (oracle)``, per-class mask weights trained
  on the masks of every class;
- (c) the MLP mask branch: ``class-agnostic+MLP``, ``transfer+MLP`` (cls+box);
- (d) end-to-end training: ``transfer e2e, stop-grad`` and ``transfer e2e, no stop-grad`` (whether
  the mask loss reaches w_det through T, Sec. 3.2), ``class-agnostic e2e``.

Data: the synthetic world's 14 shape classes (`alp_dataset.synthetic.DEFAULT_CLASSES`), A = every
fourth one (circle, heart, crown, gear: about a quarter, as VOC's 20 of COCO's 80) and B = the other
10. One training world becomes two COCO shard outputs (`pipelines/build_coco_shards.py`):
``train_partial``, boxes for A ∪ B and masks for A only (``--base-classes A --novel-classes B
--boxes-for split-classes``), and ``train_full``, the same with masks for every class
(``--mask-classes all``, the oracle's data). A held-out world of another seed has masks for all
classes (``--class-split all``) and gives mask / box AP (pycocotools) on A and on B.

Training, stage-wise as in Table 1 (a-c): stage one is a Faster R-CNN trained on the boxes of
A ∪ B with no mask loss (``--train-stage detection``, ``--stage1-steps``); every stage-wise row
starts from it and trains only the mask branch and T on the masks of A, the backbone, RPN and box
head frozen (``--train-stage masks``, ``--steps``), so its w_det are fixed class embeddings and
the rows are cheap. The end-to-end rows start from the same stage-one detector and train
everything jointly (``--train-stage joint``) for as many steps. Nothing is pretrained (the paper
starts from ImageNet weights); stage one is long enough for the box classifier to tell the shapes
apart, without which w_det would carry no class information to transfer. Stage one is evaluated
too, for its boxes only (its mask head is untrained: n/a).

    python benchmarks/experiment_maskx.py                  # the full table
    python benchmarks/experiment_maskx.py --rows "transfer w/ cls+box"   # one row (+ stage one)
    python benchmarks/experiment_maskx.py --stage1-steps 30 --steps 10 --n-train 48 \\
        --n-eval 16 --work-dir maskx_quick                 # a quick look that everything runs
    python benchmarks/experiment_maskx.py --prepare-only   # worlds and shards, then their classes

Budget: on 2 CPU cores, one process alone, stage one runs at about 0.30 s a step (7.5 min), a
stage-wise row at 0.17-0.25 s a step (about 2 min with its evaluation) and an end-to-end row at
0.5-0.6 s a step (about 5 min): about 50 minutes for the whole table (a run sharing the machine
with other jobs measured 95; docs/benchmarks.md). The stage-wise rows are what keeps the table
cheap: raise ``--steps`` with care.

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

from experiment_runs import coco_shards, evaluate_summary, train_once

from alp_curation import flags
from alp_dataset.synthetic import DEFAULT_CLASSES, write_world

A_CLASSES = DEFAULT_CLASSES[::4]  # circle, heart, crown, gear: masks and boxes
B_CLASSES = tuple(c for c in DEFAULT_CLASSES if c not in A_CLASSES)  # boxes only
IMAGE_SIZE = 128
DATA_LAYOUT = 1  # bump when the worlds or shards change, so that old ones are not reused


def prepare(work: Path, *, n_train: int, n_eval: int, seed: int) -> dict[str, Path]:
    """Worlds and shards, reused when made with the same arguments (else remade, with the runs):
    ``train_partial`` (boxes for A ∪ B, masks for A), ``train_full`` (masks for every class) and
    ``eval`` (held out, masks for every class)."""
    size = (IMAGE_SIZE, IMAGE_SIZE)
    params = {"layout": DATA_LAYOUT, "n_train": n_train, "n_eval": n_eval, "seed": seed,
              "image_size": IMAGE_SIZE, "a": A_CLASSES, "b": B_CLASSES}  # fmt: skip
    stamp = work / "data_params.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != json.loads(json.dumps(params)):
        for old in [*work.glob("world_*"), *work.glob("shards_*"), work / "runs"]:
            shutil.rmtree(old, ignore_errors=True)
        stamp.write_text(json.dumps(params))
    train = write_world(work / "world_train", n_train, seed=seed, image_size=size)
    held_out = write_world(work / "world_eval", n_eval, seed=seed + 1, image_size=size)
    assert train.images and held_out.images
    split = ("--base-classes", ",".join(A_CLASSES), "--novel-classes", ",".join(B_CLASSES),
             "--boxes-for", "split-classes")  # fmt: skip
    return {
        "train_partial": coco_shards(
            train.instances, train.images, work / "shards_train_partial", *split
        ),
        "train_full": coco_shards(
            train.instances,
            train.images,
            work / "shards_train_full",
            *split,
            *("--mask-classes", "all"),
        ),
        "eval": coco_shards(
            held_out.instances, held_out.images, work / "shards_eval", "--class-split", "all"
        ),
    }


def describe(data: dict[str, Path]) -> None:
    """Each output's classes and instance counts, as its manifest has them."""
    for name, out in data.items():
        manifest = json.loads((out / "manifest.json").read_text())
        classes, counts = manifest["classes"], manifest["counts"]["annotations"]
        parts = [f"{counts['mask']} instances with masks of {', '.join(classes['mask'])}"]
        if classes["box_only"]:
            parts.append(f"{counts['box']} box-only of {', '.join(classes['box_only'])}")
        if classes["split_not_in_file"]:
            parts.append(f"absent: {', '.join(classes['split_not_in_file'])}")
        samples = manifest["counts"]["images"]["samples"]
        print(f"{name}: {samples} images; " + "; ".join(parts))


@dataclass(frozen=True)
class Row:
    """One row of the table: the training stage, the shards it trains on, its model flags."""

    stage: str  # --train-stage: "detection", "masks" (stage-wise) or "joint" (end-to-end)
    source: str  # a key of prepare()'s outputs
    flags: tuple[str, ...]


def _agnostic(*extra: str) -> tuple[str, ...]:
    return ("--mask-predictor", "class-agnostic", *extra)


def _transfer(inputs: str, *extra: str) -> tuple[str, ...]:
    return ("--mask-predictor", "transfer", "--transfer-input", inputs, *extra)


STAGE_ONE = "Faster R-CNN stage one (boxes of A ∪ B)"
STAGE_ONE_ROW = Row("detection", "train_partial", _agnostic())
ROWS: dict[str, Row] = {
    "class-agnostic": Row("masks", "train_partial", _agnostic("--no-mask-mlp")),
    "class-agnostic+MLP": Row("masks", "train_partial", _agnostic("--mask-mlp")),
    "transfer w/ randn": Row("masks", "train_partial", _transfer("randn", "--no-mask-mlp")),
    "transfer w/ text": Row("masks", "train_partial", _transfer("text", "--no-mask-mlp")),
    "transfer w/ cls": Row("masks", "train_partial", _transfer("cls", "--no-mask-mlp")),
    "transfer w/ box": Row("masks", "train_partial", _transfer("box", "--no-mask-mlp")),
    "transfer w/ cls+box": Row("masks", "train_partial", _transfer("cls+box", "--no-mask-mlp")),
    "transfer+MLP": Row("masks", "train_partial", _transfer("cls+box", "--mask-mlp")),
    "fully supervised (oracle)": Row(
        "masks", "train_full", ("--mask-predictor", "class-specific", "--no-mask-mlp")
    ),
    "transfer e2e, stop-grad": Row(
        "joint", "train_partial", _transfer("cls+box", "--no-mask-mlp", "--stop-gradient")
    ),
    "transfer e2e, no stop-grad": Row(
        "joint", "train_partial", _transfer("cls+box", "--no-mask-mlp", "--no-stop-gradient")
    ),
    "class-agnostic e2e": Row("joint", "train_partial", _agnostic("--no-mask-mlp")),
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _train_argv(
    row: Row, steps: int, lr: float, shards: Path, args: argparse.Namespace
) -> list[str]:
    """models.train's flags: the detector over all 14 classes, the row's stage and mask flags,
    and table3's schedule."""
    return [
        "--arch", "maskx-rcnn", "--preset", "synthetic-small", "--classes", *DEFAULT_CLASSES,
        "--text-encoder", "minilm", "--shards", str(shards), "--train-stage", row.stage,
        *row.flags, "--steps", str(steps), "--warmup-steps", str(min(200, steps // 10)),
        "--lr", str(lr), "--batch-size", str(args.batch_size), "--optimizer", args.optimizer,
        "--scale-range", "0.75", "1.5", "--num-workers", "1", "--seed", str(args.seed),
        "--checkpoint-every", str(steps), "--log-every", "25", "--no-progress",
    ]  # fmt: skip


def _evaluate(checkpoint: Path, data: dict[str, Path]) -> dict[str, Any]:
    return evaluate_summary(checkpoint, data["eval"], list(A_CLASSES), list(B_CLASSES), IMAGE_SIZE)


def stage_one(data: dict[str, Path], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The detector every other row starts from: ``--stage1-steps`` on the boxes of A ∪ B."""
    started = time.perf_counter()
    row = STAGE_ONE_ROW
    stamp = {"row": STAGE_ONE, "stage": row.stage, "source": row.source, "flags": row.flags,
             **{k: getattr(args, k) for k in
                ("stage1_steps", "stage1_lr", "optimizer", "batch_size", "seed")}}  # fmt: skip
    run_dir = work / "runs" / "stage_one"
    argv = _train_argv(row, args.stage1_steps, args.stage1_lr, data[row.source], args)
    train_once(run_dir, stamp, argv)
    trained = time.perf_counter() - started
    summary = _evaluate(run_dir / "last.pt", data)
    return {
        "stage": row.stage,
        "masks": False,  # its mask head never met a mask loss
        "checkpoint": run_dir / "last.pt",
        "stamp": stamp,
        "train_s": trained,
        "eval_s": time.perf_counter() - started - trained,
        "summary": summary,
    }


def train_and_evaluate(
    name: str, data: dict[str, Path], work: Path, args: argparse.Namespace, start: dict[str, Any]
) -> dict[str, Any]:
    row = ROWS[name]
    run_dir = work / "runs" / _slug(name)
    started = time.perf_counter()
    stamp = {
        "row": name,
        "stage": row.stage,
        "source": row.source,
        "flags": row.flags,
        "start": start["stamp"],
        **{k: getattr(args, k) for k in ("steps", "lr", "optimizer", "batch_size", "seed")},
    }
    argv = _train_argv(row, args.steps, args.lr, data[row.source], args)
    train_once(run_dir, stamp, [*argv, "--init-from", str(start["checkpoint"])])
    trained = time.perf_counter() - started
    summary = _evaluate(run_dir / "last.pt", data)
    return {
        "stage": row.stage,
        "masks": True,
        "train_s": trained,
        "eval_s": time.perf_counter() - started - trained,
        "summary": summary,
    }


def _pct(value: float | None) -> str:
    """A fraction (0-1, as `evaluate_summary` gives it) in percent."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def report(name: str, r: dict[str, Any]) -> None:
    """One line as each row finishes."""
    a, b = r["summary"]["base"], r["summary"]["novel"]
    masks = f"mask AP on B {_pct(b['mask_AP'])}, on A {_pct(a['mask_AP'])}; " if r["masks"] else ""
    print(
        f"{name}: {masks}box AP50 on B {_pct(b['box_AP50'])} "
        f"(train {r['train_s']:.0f} s, eval {r['eval_s']:.0f} s)",
        flush=True,
    )


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print("| method | mask AP on B | mask AP50 on B | mask AP on A | mask AP50 on A "
          "| box AP50 on B | train s | eval s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        a, b = r["summary"]["base"], r["summary"]["novel"]
        masks = [b["mask_AP"], b["mask_AP50"], a["mask_AP"], a["mask_AP50"]]
        cells = [_pct(v if r["masks"] else None) for v in masks]
        print(
            f"| {name} | {' | '.join(cells)} | {_pct(b['box_AP50'])} "
            f"| {r['train_s']:.0f} | {r['eval_s']:.0f} |"
        )


def _on_b(results: dict[str, dict[str, Any]], name: str) -> float | None:
    r = results.get(name)
    return None if r is None or not r["masks"] else r["summary"]["novel"]["mask_AP"]


# The paper's mask AP on B, voc -> non-voc (Table 1 a, c, d), printed beside each trend.
PAPER_ON_B = {
    "class-agnostic": 14.2,
    "class-agnostic+MLP": 17.1,
    "transfer w/ randn": 15.4,
    "transfer w/ text": 17.3,  # GloVe
    "transfer w/ cls": 18.1,
    "transfer w/ box": 19.8,
    "transfer w/ cls+box": 20.2,
    "transfer+MLP": 21.3,
    "fully supervised (oracle)": 30.7,
    "transfer e2e, stop-grad": 22.2,
    "transfer e2e, no stop-grad": 20.2,
    "class-agnostic e2e": 19.2,
}
TRENDS = (
    ("transfer w/ cls+box", "class-agnostic"),  # Table 1a: T beats the baseline
    ("class-agnostic+MLP", "class-agnostic"),  # Table 1c: the MLP branch helps both heads
    ("transfer+MLP", "transfer w/ cls+box"),
    ("transfer e2e, stop-grad", "transfer e2e, no stop-grad"),  # Table 1d: stop the gradient
)
TRANSFER_INPUTS = tuple(name for name in ROWS if name.startswith("transfer w/"))
ORACLE = "fully supervised (oracle)"


def _paper(*names: str) -> str:
    return "paper " + " vs ".join(f"{PAPER_ON_B[n]:.1f}" for n in names)


def print_trends(results: dict[str, dict[str, Any]]) -> None:
    """Each trend whose rows were run: holds or not, with the numbers (mask AP on B)."""
    print("\nTrends of the paper (mask AP on B):")
    for left, right in TRENDS:
        a, b = _on_b(results, left), _on_b(results, right)
        if a is not None and b is not None:
            verdict = "holds" if a > b else "does NOT hold"
            print(f"- {left} > {right}: {_pct(a)} vs {_pct(b)}: {verdict} "
                  f"({_paper(left, right)})")  # fmt: skip
    inputs = {n: v for n in TRANSFER_INPUTS if (v := _on_b(results, n)) is not None}
    randn = inputs.pop("transfer w/ randn", None)
    if randn is not None and inputs:
        verdict = "holds" if randn < min(inputs.values()) else "does NOT hold"
        others = ", ".join(f"{n.removeprefix('transfer w/ ')} {_pct(v)}" for n, v in inputs.items())
        print(f"- transfer w/ randn is the lowest of the transfer inputs: {_pct(randn)} vs "
              f"{others}: {verdict} ({_paper(*TRANSFER_INPUTS)})")  # fmt: skip
    oracle = _on_b(results, ORACLE)
    rest = {n: v for n in ROWS if n != ORACLE and (v := _on_b(results, n)) is not None}
    if oracle is not None and rest:
        best = max(rest, key=rest.__getitem__)
        verdict = "holds" if oracle > rest[best] else "does NOT hold"
        print(f"- {ORACLE} > every other row: {_pct(oracle)} vs {_pct(rest[best])} ({best}): "
              f"{verdict} ({_paper(ORACLE, best)})")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("maskx_work"),
        help="worlds, shards, runs and results.json; finished steps are reused "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--n-train",
        type=int,
        default=1200,
        help="images of the training world: boxes for every class, masks for A "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--n-eval",
        type=int,
        default=150,
        help="held-out images with masks for every class (default: %(default)s)",
    )
    parser.add_argument(
        "--stage1-steps",
        type=int,
        default=1500,
        help="steps of stage one, the Faster R-CNN on the boxes of A ∪ B that every other row "
        "starts from (default: %(default)s)",
    )
    parser.add_argument(
        "--stage1-lr",
        type=float,
        default=0.003,
        help="peak learning rate of stage one (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=500,
        help="steps of each stage-wise row (mask branch only) and each end-to-end row after "
        "stage one (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.001,
        help="peak learning rate of the rows after stage one (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="images per step (default: %(default)s)"
    )
    parser.add_argument(
        "--optimizer",
        default="adamw",
        choices=("sgd", "adamw"),
        help="AdamW learns far more in this budget than SGD from scratch (default: %(default)s)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        default=list(ROWS),
        choices=[STAGE_ONE, *ROWS],
        metavar="NAME",
        help=f"rows to run; stage one always runs, since every row starts from it (default: "
        f"all: {list(ROWS)})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="worlds and training (default: %(default)s)"
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="build the worlds and shards, print their classes and stop (default: off)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = flags.parse_args(build_parser(), argv)
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = prepare(work, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed)
    prepared = time.perf_counter() - start
    print(f"worlds and shards ready in {prepared:.0f} s", flush=True)
    if args.prepare_only:
        describe(data)
        return 0
    results: dict[str, dict[str, Any]] = {STAGE_ONE: stage_one(data, work, args)}
    report(STAGE_ONE, results[STAGE_ONE])
    for name in ROWS:  # in table order, whatever the order of --rows
        if name in args.rows:
            results[name] = train_and_evaluate(name, data, work, args, results[STAGE_ONE])
            report(name, results[name])
    total = time.perf_counter() - start
    record = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "a_classes": A_CLASSES,
        "b_classes": B_CLASSES,
        "prepare_s": prepared,
        "total_s": total,
        "results": {
            name: {k: v for k, v in r.items() if k not in ("checkpoint", "stamp")}
            for name, r in results.items()
        },
    }
    (work / "results.json").write_text(json.dumps(record, indent=2))
    print(
        f"\nTable 1 in miniature: {len(A_CLASSES)} classes with masks (A: "
        f"{', '.join(A_CLASSES)}), {len(B_CLASSES)} with boxes only (B), {args.n_train} training "
        f"images, {args.n_eval} held-out images; stage one {args.stage1_steps} steps, then "
        f"{args.steps} steps per row, batch {args.batch_size}; total {total / 60:.1f} min"
    )
    print_table(results)
    print_trends(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
