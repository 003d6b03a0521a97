"""Speed and quality of the curation functions on synthetic narratives, on one CPU core.

    python benchmarks/bench_curation.py --n-narratives 1000

Times each stage of ``alp_curation`` (parse + validate, spaCy POS tagging, phrase extraction +
time alignment + trace boxes) without text embedding, then scores the ALP boxes against the
ground-truth boxes of the objects their phrases name, for a few temporal paddings. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

# One core, as the issue measures it: pin the process and keep BLAS pools to one thread.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from alp_curation import flags  # noqa: E402
from alp_curation.curate import curate_record  # noqa: E402
from alp_curation.locnar import parse_record  # noqa: E402
from alp_curation.quality import Mention, match_mentions, summarise  # noqa: E402
from alp_curation.tagging import Tagger  # noqa: E402
from alp_dataset.synthetic import make_world  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument(
        "--n-narratives", type=int, default=1000, help="synthetic narratives curated"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy pipeline")
    parser.add_argument("--batch-size", type=int, default=256, help="captions per spaCy batch")
    parser.add_argument(
        "--paddings", default="0,0.25,0.5,1.0", help="temporal paddings to score, comma-separated"
    )
    args = flags.parse_args(parser)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    samples = list(make_world(args.n_narratives, seed=args.seed))
    lines = [json.dumps(s.narrative) for s in samples]
    mentions = [
        [
            Mention(m.start_char, m.end_char, tuple(m.box_xyxy_norm), m.class_name)
            for m in s.mentions
        ]
        for s in samples
    ]
    tagger = Tagger(args.spacy_model, batch_size=args.batch_size)
    tagger.tag(["warm up the model."])

    t0 = time.perf_counter()
    records = [parse_record(line) for line in lines]
    t1 = time.perf_counter()
    tokens = tagger.tag([r.caption for r in records])
    t2 = time.perf_counter()
    results = [curate_record(r, tok) for r, tok in zip(records, tokens, strict=True)]
    t3 = time.perf_counter()

    n = len(records)
    n_alps = sum(len(r.alps) for r in results)
    total = t3 - t0
    rows = [
        ("parse + validate", t1 - t0, n / (t1 - t0), ""),
        ("POS tagging (spaCy)", t2 - t1, n / (t2 - t1), tagger.name),
        ("phrases + timing + boxes", t3 - t2, n / (t3 - t2), ""),
        ("total", total, n / total, f"{n_alps / total:,.0f} ALPs/s"),
    ]
    print(f"curation on one core: {n:,} synthetic narratives, {n_alps:,} ALPs")
    print(f"{'stage':<26} {'seconds':>8} {'narratives/s':>13}  note")
    for name, seconds, rate, note in rows:
        print(f"{name:<26} {seconds:>8.2f} {rate:>13,.0f}  {note}")

    print()
    print(f"{'t_p (s)':>8} {'ALPs':>7} {'objects with ALP':>17} {'mean IoU':>9} {'IoU>=0.5':>9}")
    for padding in (float(p) for p in args.paddings.split(",")):
        matches = []
        alps_total = 0
        for record, tok, gt in zip(records, tokens, mentions, strict=True):
            alps = curate_record(record, tok, temporal_padding=padding).alps
            alps_total += len(alps)
            matches += match_mentions(alps, gt)
        q = summarise(matches)
        print(
            f"{padding:>8g} {alps_total:>7,} {q.answered_fraction:>17.1%} "
            f"{q.mean_iou:>9.3f} {q.iou_at_50:>9.1%}"
        )


if __name__ == "__main__":
    main()
