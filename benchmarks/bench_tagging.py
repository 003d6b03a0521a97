"""Tagging speed: ``alp_curation.tagging.Tagger`` against bare spaCy with the same components.

    python benchmarks/bench_tagging.py --n-narratives 4000 --repeats 3

Captions of synthetic narratives, one thread. Each repeat times, interleaved:

- **bare spaCy**: ``nlp.pipe(captions)`` of the same components as stock spaCy runs them, each
  Doc consumed and dropped;
- **Tagger.tag, spaCy's Matcher**: what curation ran before `alp_curation.attribute_rules`: the
  captions normalised, piped, and every token turned into a ``Token`` (text, offsets, POS, tag,
  lemma);
- **Tagger.tag**: the same as shipped, the attribute_ruler's rules compiled.

Prints the best repeat's captions/s of each and the ratios, then the share of each spaCy
component in a stock run (the time inside it, its input excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# One thread, as the curation workers' tagging measures it.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from alp_curation import flags  # noqa: E402
from alp_curation.tagging import Tagger, load_spacy  # noqa: E402
from alp_dataset.synthetic import make_world  # noqa: E402


class _Timed:
    """A spaCy component that adds the time spent in it, its input excluded, to ``seconds``."""

    def __init__(self, name: str, proc: Any, seconds: dict[str, float]) -> None:
        self.name = name
        self.proc = proc
        self.seconds = seconds

    def __call__(self, doc: Any) -> Any:
        start = time.perf_counter()
        out = self.proc(doc)
        self.seconds[self.name] += time.perf_counter() - start
        return out

    def pipe(self, stream: Iterable[Any], batch_size: int = 128) -> Iterator[Any]:
        upstream = 0.0

        def timed_input() -> Iterator[Any]:
            nonlocal upstream
            source = iter(stream)
            while True:
                start = time.perf_counter()
                try:
                    doc = next(source)
                except StopIteration:
                    return
                finally:
                    upstream += time.perf_counter() - start
                yield doc

        if hasattr(self.proc, "pipe"):
            docs = self.proc.pipe(timed_input(), batch_size=batch_size)
        else:
            docs = map(self.proc, timed_input())
        inclusive = 0.0
        while True:
            start = time.perf_counter()
            try:
                doc = next(docs)
            except StopIteration:
                break
            finally:
                inclusive += time.perf_counter() - start
            yield doc
        self.seconds[self.name] += inclusive - upstream


def _timed_components(nlp: Any, seconds: dict[str, float]) -> Callable[[], None]:
    """Wrap each component of ``nlp`` in `_Timed`; returns an undo."""
    originals = list(nlp._components)
    nlp._components[:] = [(name, _Timed(name, proc, seconds)) for name, proc in originals]

    def undo() -> None:
        nlp._components[:] = originals

    return undo


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--n-narratives", type=int, default=4000, help="captions tagged")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (best)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument(
        "--input", help="tag the captions of this LocNar JSONL file instead (the first N)"
    )
    parser.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy pipeline")
    parser.add_argument("--batch-size", type=int, default=256, help="captions per spaCy batch")
    args = flags.parse_args(parser)

    if hasattr(os, "sched_setaffinity"):  # one core
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.input is not None:
        with open(args.input, encoding="utf-8") as f:
            captions = [json.loads(line)["caption"] for line in f if line.strip()]
        captions = captions[: args.n_narratives]
    else:
        captions = [s.narrative["caption"] for s in make_world(args.n_narratives, seed=args.seed)]
    tagger = Tagger(args.spacy_model, batch_size=args.batch_size)
    stock = Tagger(args.spacy_model, batch_size=args.batch_size)
    stock._nlp = load_spacy(args.spacy_model, compiled_rules=False)
    nlp = stock.nlp
    if tagger.tag(captions) != stock.tag(captions):
        raise SystemExit("the compiled rules changed a token: not timing")
    taggers = {"Tagger.tag, spaCy's Matcher": stock, "Tagger.tag": tagger}

    best: dict[str, float] = defaultdict(lambda: float("inf"))
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _doc in nlp.pipe(captions, batch_size=args.batch_size):
            pass
        best["bare spaCy"] = min(best["bare spaCy"], time.perf_counter() - start)
        for way, timed in taggers.items():
            start = time.perf_counter()
            timed.tag(captions)
            best[way] = min(best[way], time.perf_counter() - start)

    seconds: dict[str, float] = defaultdict(float)
    undo = _timed_components(nlp, seconds)
    try:
        start = time.perf_counter()
        for _doc in nlp.pipe(captions, batch_size=args.batch_size):
            pass
        total = time.perf_counter() - start
    finally:
        undo()

    n = len(captions)
    source = args.input or "synthetic"
    print(f"{n} {source} captions, {args.spacy_model} ({', '.join(nlp.pipe_names)}), one thread")
    print("| way | seconds | captions/s |")
    print("|---|---:|---:|")
    for way in ("bare spaCy", *taggers):
        print(f"| {way} | {best[way]:.2f} | {n / best[way]:.1f} |")
    shipped, before = best["Tagger.tag"], best["Tagger.tag, spaCy's Matcher"]
    print(
        f"\nTagger.tag runs at {best['bare spaCy'] / shipped:.2f} of bare spaCy's rate "
        f"({best['bare spaCy'] / before:.2f} with spaCy's Matcher); the compiled rules make it "
        f"{before / shipped:.2f}x faster. Every token's text, offsets, POS, tag and lemma is the "
        "same either way (checked before timing)."
    )
    print("\n| component | seconds | share |")
    print("|---|---:|---:|")
    for name in nlp.pipe_names:
        print(f"| {name} | {seconds[name]:.2f} | {seconds[name] / total:.0%} |")
    rest = total - sum(seconds.values())
    print(f"| tokenizer and the rest | {rest:.2f} | {rest / total:.0%} |")


if __name__ == "__main__":
    main()
