"""Text-encoder speed on this CPU: CLIP ViT-B/32 (open_clip) and MiniLM, texts per second.

    python benchmarks/bench_text_encoders.py --n-texts 512 --batch-size 64 --threads 2
    python benchmarks/bench_text_encoders.py --clip-checkpoint /path/open_clip_pytorch_model.bin
    python benchmarks/bench_text_encoders.py --encoders minilm --n-texts 4096 --threads 1

The texts are ViLD prompts filled with phrases like the ones curation finds. CLIP runs twice:
each batch cut to its longest real sequence (the default) and at open_clip's full 77-token
context. Without --clip-checkpoint CLIP has random weights (speed does not depend on the values;
the table says so). Texts reach ``encode`` 1,024 at a time, as ``ensemble_embeddings`` sends them;
--batch-size is the encoders' own batch. Model loading and one warm-up batch are left out of the
timings; each encoder runs --repeats times, the ways of one encoder taking turns within each
repeat, and the best run counts (the closing lines also give the median of the repeats' own
ratios, which a noisy machine moves less). MiniLM runs three ways:
``MiniLMEncoder.encode`` (tokenised once, batches sorted by token length), sentence-transformers'
own ``encode`` (batches sorted by characters) and ``MiniLMEncoder.encode`` with batches in input
order. For each MiniLM way the table gives the token positions the model computes (real tokens
plus each batch's padding), which bounds what the order can gain. Prints one table, then the
largest difference between the ways of each encoder, and the speed-up of the first over each.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import torch

from alp_curation import flags
from alp_curation.encoders import (
    MiniLMEncoder,
    OpenClipEncoder,
    TextEncoder,
    batch_order,
    padded_tokens,
)
from alp_curation.prompts import fill_templates

# Noun phrases of the kind curation extracts from Localized Narratives captions.
PHRASES = (
    "person",
    "woman",
    "red car",
    "white building",
    "wooden table",
    "black dog",
    "street light",
    "glass window",
    "blue shirt",
    "traffic signal pole",
    "umbrella",
    "orange cat",
    "bicycle",
    "flower pot",
    "green leaves",
    "metal fence",
    "coffee mug",
    "laptop",
    "open book",
    "hand bag",
    "yellow taxi",
    "stone wall",
    "chair",
    "hat",
    "wrist watch",
    "name board",
    "boat",
    "horse",
    "kite",
    "plastic bottle",
    "airplane",
    "pizza slice",
)


def make_texts(n_texts: int, seed: int = 0) -> list[str]:
    """n prompts: every phrase in every template, shuffled so batches mix lengths, repeated."""
    prompts = [p for phrase in PHRASES for p in fill_templates(phrase)]
    order = np.random.default_rng(seed).permutation(len(prompts))
    return [prompts[order[i % len(prompts)]] for i in range(n_texts)]


CALL_SIZE = 1024  # texts per encode() call: ensemble_embeddings' default batch


class SentenceTransformersEncode:
    """MiniLM through sentence-transformers' own ``encode``: the way before token-length sorting."""

    def __init__(self, encoder: MiniLMEncoder) -> None:
        self.encoder = encoder
        self.id = encoder.id
        self.dim = encoder.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.encoder._model is None:
            self.encoder.encode(texts[:1])  # loads the model
        with torch.inference_mode():
            emb = self.encoder._model.encode(
                texts,
                batch_size=self.encoder.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(emb, dtype=np.float32)


def minilm_positions(encoder: MiniLMEncoder, texts: Sequence[str]) -> dict[str, int]:
    """Token positions MiniLM computes over ``texts`` sent CALL_SIZE at a time, for each order its
    batches can be made in: "tokens" (``MiniLMEncoder.encode``'s), "chars" (sentence-transformers':
    longest text in characters first) and "input"."""
    totals = {"tokens": 0, "chars": 0, "input": 0}
    for start in range(0, len(texts), CALL_SIZE):
        call = list(texts[start : start + CALL_SIZE])
        ids, _ = encoder.token_ids(call)
        orders = {
            "tokens": batch_order(ids),
            "chars": np.argsort([-len(text) for text in call]),
            "input": np.arange(len(call)),
        }
        for way, order in orders.items():
            totals[way] += padded_tokens(ids, order, encoder.batch_size)
    return totals


def time_ways(
    encoders: Sequence[TextEncoder], texts: Sequence[str], repeats: int
) -> tuple[list[list[float]], list[np.ndarray]]:
    """Wall seconds of each encoder over ``texts``, one list per encoder with one entry per repeat,
    and each encoder's embeddings. The encoders take turns within every repeat, so a slow spell
    of the machine falls on all of them alike rather than on whichever ran then."""
    for encoder in encoders:
        encoder.encode(list(texts[: min(8, len(texts))]))  # loads the model, warms the kernels
    seconds: list[list[float]] = [[] for _ in encoders]
    outputs: list[np.ndarray] = [np.zeros(0, dtype=np.float32) for _ in encoders]
    for _ in range(repeats):
        for k, encoder in enumerate(encoders):
            start = time.perf_counter()
            parts = [
                encoder.encode(list(texts[i : i + CALL_SIZE]))
                for i in range(0, len(texts), CALL_SIZE)
            ]
            seconds[k].append(time.perf_counter() - start)
            outputs[k] = np.concatenate(parts)
    return seconds, outputs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--n-texts", type=int, default=512, help="prompts encoded per encoder")
    parser.add_argument("--batch-size", type=int, default=64, help="the encoders' batch size")
    parser.add_argument(
        "--clip-checkpoint",
        default=None,
        help="local open_clip checkpoint; without it CLIP has random weights",
    )
    parser.add_argument(
        "--clip-model",
        default="ViT-B-32",
        help="open_clip model name (ViT-B-32-quickgelu for OpenAI's weights)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per encoder; best is shown")
    parser.add_argument(
        "--encoders",
        default="clip,minilm",
        help="comma-separated: clip, minilm",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (None: torch's default)"
    )
    args = flags.parse_args(parser, argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    wanted = {name.strip() for name in args.encoders.split(",") if name.strip()}
    if not wanted or not wanted <= {"clip", "minilm"}:
        parser.error(
            f"--encoders {args.encoders!r}: expected a comma-separated subset of clip,minilm"
        )

    texts = make_texts(args.n_texts)
    weights = "checkpoint" if args.clip_checkpoint else "random weights"
    rows: list[tuple[str, str, int, float]] = []
    runs: dict[tuple[str, str], list[float]] = {}  # (encoder, way) -> seconds of each repeat
    positions: dict[tuple[str, str], int] = {}  # (encoder, way) -> token positions computed
    # (encoder, the way shipped, another way) -> their embeddings, for the closing lines.
    pairs: list[tuple[str, str, str]] = []
    outputs: dict[tuple[str, str], np.ndarray] = {}
    clip_name = f"open_clip {args.clip_model} ({weights})"
    if "clip" in wanted:
        clip_modes = (("cut to longest", True), ("full 77 tokens", False))
        clips = [
            OpenClipEncoder(
                args.clip_model,
                args.clip_checkpoint,
                cut_to_longest=cut,
                batch_size=args.batch_size,
            )
            for _, cut in clip_modes
        ]
        seconds, embeddings = time_ways(clips, texts, args.repeats)
        for (mode, _), times, emb in zip(clip_modes, seconds, embeddings, strict=True):
            runs[clip_name, mode], outputs[clip_name, mode] = times, emb
            rows.append((clip_name, mode, len(texts), min(times)))
        pairs.append((clip_name, "cut to longest", "full 77 tokens"))
    minilm_name = "all-MiniLM-L6-v2 (pretrained)"
    if "minilm" in wanted:
        minilm = MiniLMEncoder(batch_size=args.batch_size)
        in_input_order = MiniLMEncoder(batch_size=args.batch_size, sort_by_length=False)
        ways: list[tuple[str, str, TextEncoder]] = [
            ("sorted by tokens", "tokens", minilm),
            ("s-t encode (chars)", "chars", SentenceTransformersEncode(minilm)),
            ("input order", "input", in_input_order),
        ]
        seconds, embeddings = time_ways([way[2] for way in ways], texts, args.repeats)
        computed = minilm_positions(minilm, texts)
        for (mode, order, _), times, emb in zip(ways, seconds, embeddings, strict=True):
            runs[minilm_name, mode], outputs[minilm_name, mode] = times, emb
            rows.append((minilm_name, mode, len(texts), min(times)))
            positions[minilm_name, mode] = computed[order]
        pairs.append((minilm_name, "sorted by tokens", "s-t encode (chars)"))
        pairs.append((minilm_name, "sorted by tokens", "input order"))

    print(
        f"text encoders on CPU: {torch.get_num_threads()} torch threads, batch {args.batch_size}, "
        f"best of {args.repeats} runs, the ways taking turns in each"
    )
    print(
        f"{'encoder':<38} {'mode':<22} {'texts':>6} {'seconds':>8} {'texts/s':>8} "
        f"{'positions':>10}"
    )
    for name, mode, n, seconds in rows:
        computed = positions.get((name, mode))
        shown = "-" if computed is None else f"{computed:,}"
        print(f"{name:<38} {mode:<22} {n:>6} {seconds:>8.2f} {n / seconds:>8.1f} {shown:>10}")
    print()
    for (name, mode), times in runs.items():
        print(f"{name}, {mode}: seconds of each run " + " ".join(f"{t:.2f}" for t in times))
    for name, fast, slow in pairs:
        diff = np.abs(outputs[name, fast] - outputs[name, slow]).max()
        best = min(runs[name, slow]) / min(runs[name, fast])
        # Each repeat's own ratio: the two ways ran back to back in it.
        paired = float(np.median(np.divide(runs[name, slow], runs[name, fast])))
        line = (
            f"{name}: {fast} is {best:.2f}x {slow} (best runs; median of the repeats' ratios "
            f"{paired:.2f}x); largest |difference| {diff:.2e}"
        )
        if (name, fast) in positions:
            bound = positions[name, slow] / positions[name, fast]
            line += f"; {slow} computes {bound:.2f}x the token positions"
        print(line)


if __name__ == "__main__":
    main()
