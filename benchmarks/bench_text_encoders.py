"""Text-encoder speed on this CPU: CLIP ViT-B/32 (open_clip) and MiniLM, texts per second.

    python benchmarks/bench_text_encoders.py --n-texts 512 --batch-size 64 --threads 2
    python benchmarks/bench_text_encoders.py --clip-checkpoint /path/open_clip_pytorch_model.bin
    python benchmarks/bench_text_encoders.py --encoders minilm --n-texts 4096 --threads 1

The texts are ViLD prompts filled with phrases like the ones curation finds. CLIP runs twice:
each batch cut to its longest real sequence (the default) and at open_clip's full 77-token
context. Without --clip-checkpoint CLIP has random weights (speed does not depend on the values;
the table says so). Texts reach ``encode`` 1,024 at a time, as ``ensemble_embeddings`` sends them;
--batch-size is the encoders' own batch. Model loading and one warm-up batch are left out of the
timings; each encoder runs --repeats times and the best run counts. MiniLM runs twice too:
sentence-transformers' own ``encode`` (batches sorted by characters) and ``MiniLMEncoder.encode``
(tokenised once, batches sorted by token length). Prints one table, then the largest difference
between the two ways of each encoder, and the speed-up of each over the other.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import torch

from alp_curation import flags
from alp_curation.encoders import MiniLMEncoder, OpenClipEncoder, TextEncoder
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


def time_encoder(
    encoder: TextEncoder, texts: Sequence[str], repeats: int
) -> tuple[float, np.ndarray]:
    """Best wall time of ``repeats`` runs over ``texts`` (as timeit reports), and the embeddings."""
    encoder.encode(list(texts[: min(8, len(texts))]))  # loads the model, warms the kernels
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        parts = [
            encoder.encode(list(texts[i : i + CALL_SIZE])) for i in range(0, len(texts), CALL_SIZE)
        ]
        best = min(best, time.perf_counter() - start)
    return best, np.concatenate(parts)


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
    # (encoder, the faster way, the slower way) -> their embeddings, for the closing lines.
    pairs: list[tuple[str, str, str]] = []
    outputs: dict[tuple[str, str], np.ndarray] = {}
    clip_name = f"open_clip {args.clip_model} ({weights})"
    if "clip" in wanted:
        for mode, cut in (("cut to longest", True), ("full 77 tokens", False)):
            clip = OpenClipEncoder(
                args.clip_model,
                args.clip_checkpoint,
                cut_to_longest=cut,
                batch_size=args.batch_size,
            )
            seconds, outputs[clip_name, mode] = time_encoder(clip, texts, args.repeats)
            rows.append((clip_name, mode, len(texts), seconds))
        pairs.append((clip_name, "cut to longest", "full 77 tokens"))
    minilm_name = "all-MiniLM-L6-v2 (pretrained)"
    if "minilm" in wanted:
        minilm = MiniLMEncoder(batch_size=args.batch_size)
        ways: list[tuple[str, TextEncoder]] = [
            ("sorted by tokens", minilm),
            ("s-t encode (chars)", SentenceTransformersEncode(minilm)),
        ]
        for mode, encoder in ways:
            seconds, outputs[minilm_name, mode] = time_encoder(encoder, texts, args.repeats)
            rows.append((minilm_name, mode, len(texts), seconds))
        pairs.append((minilm_name, "sorted by tokens", "s-t encode (chars)"))

    print(
        f"text encoders on CPU: {torch.get_num_threads()} torch threads, batch {args.batch_size}, "
        f"best of {args.repeats} runs"
    )
    print(f"{'encoder':<38} {'mode':<22} {'texts':>6} {'seconds':>8} {'texts/s':>8}")
    for name, mode, n, seconds in rows:
        print(f"{name:<38} {mode:<22} {n:>6} {seconds:>8.2f} {n / seconds:>8.1f}")
    seconds_of = {(name, mode): seconds for name, mode, _, seconds in rows}
    print()
    for name, fast, slow in pairs:
        diff = np.abs(outputs[name, fast] - outputs[name, slow]).max()
        ratio = seconds_of[name, slow] / seconds_of[name, fast]
        print(f"{name}: {fast} is {ratio:.2f}x {slow}; largest |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
