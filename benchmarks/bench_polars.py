"""Time of two polars queries over a large synthetic ALP table, cold and warm, and peak memory.

    python benchmarks/bench_polars.py                       # 5,000,000 ALPs in 50 files
    python benchmarks/bench_polars.py --work-dir /tmp/big   # keep (and reuse) the generated run

Generates an output directory as ``pipelines/extract_alps.py`` lays it out (``alp_dataset.schema``:
ALP_SCHEMA, the pipeline's Parquet writer options and row groups, a manifest), with phrases drawn
from a Zipf distribution over ``--n-phrases`` phrases and ALPs spread over ``--n-images``
images; then answers, through ``alp_dataset.query``,

- "top 20 phrases": ``phrase_frequencies(store).head(20).collect()`` (ALPs and images per phrase);
- "ALPs of one image": ``alps_of_image(store, image_id).collect()`` (every column);

and, as references for the first, the same answer grouped on the phrase string (the
alternative to ``phrase_frequencies``' grouping on the integer ``phrase_id``), and the plain
``group_by("phrase").len()`` top 20 (no ``phrase_id``, no image count): the floor of the query.

Each query runs in fresh processes (``--cold-runs`` of them): the first answer in a process is
"cold" (nothing of polars or the files in the process yet; the OS page cache is left as it is, and
the files were just written, so they are most likely in it), the median of ``--repeats`` more in
the same process is "warm". Peak memory is the process's maximum resident set size
(VmHWM; ``resource.getrusage`` where there is no /proc), imports included. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from process_stats import peak_rss_mib

from alp_curation import flags

QUERIES = ("top 20 phrases", "top 20, by phrase string", "plain group_by.len", "ALPs of one image")
DATASET_ID = "bench"
PHRASE_DIM = 16  # the queries timed here never read embeddings; a narrow table keeps setup quick
ADJECTIVES = (
    "red green blue yellow black white brown grey pink orange purple small big large tall short "
    "old young wooden metal glass plastic dark light bright round square long little striped "
    "spotted wet dry open closed empty full shiny dirty clean broken new tiny huge flat thin thick "
    "soft hard smooth rough"
).split()
SYLLABLES = (
    "ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo fu ga ge gi go gu ha he hi ho hu "
    "ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru"
).split()


# ---------------------------------------------------------------------------------------------
# The synthetic run


def _phrases(n: int) -> tuple[list[str], list[str]]:
    """n distinct phrases: a noun alone, or an adjective and a noun; and their head nouns."""
    nouns = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in ("", "n", "r", "s")]
    texts, heads = [], []
    for i in range(n):
        noun = nouns[i // (len(ADJECTIVES) + 1) % len(nouns)]
        k = i % (len(ADJECTIVES) + 1)
        texts.append(noun if k == 0 else f"{ADJECTIVES[k - 1]} {noun}")
        heads.append(noun)
    if len(set(texts)) != n:
        raise ValueError(f"--phrases {n} is more than this vocabulary makes distinct")
    return texts, heads


def generate(
    out: Path, *, rows: int, files: int, n_phrases: int, n_images: int, zipf: float, seed: int
) -> None:
    """Write an output directory of ``rows`` ALPs in ``files`` Parquet files, and a manifest."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from alp_dataset.schema import (
        ALP_SCHEMA,
        ALPS_DIR,
        MANIFEST_NAME,
        PHRASES_DIR,
        SCHEMA_VERSION,
        manifest_problems,
        part_name,
        phrase_id,
        phrase_schema,
    )
    from pipelines.writers import ALP_ROW_GROUP_ROWS, PARQUET_OPTIONS, PHRASE_ROW_GROUP_ROWS

    rng = np.random.default_rng(seed)
    texts, heads = _phrases(n_phrases)
    phrase_text = pa.array(texts, pa.string())
    head_text = pa.array(heads, pa.string())
    ids = np.array([phrase_id(t) for t in texts], dtype=np.int64)
    # Zipf over ranks, the ranks shuffled over the phrases so frequency is unrelated to id.
    weights = 1.0 / np.arange(1, n_phrases + 1, dtype=np.float64) ** zipf
    rank_to_phrase = rng.permutation(n_phrases)
    phrase_of_row = rank_to_phrase[rng.choice(n_phrases, size=rows, p=weights / weights.sum())]
    image_of_row = np.sort(rng.integers(0, n_images, size=rows))  # ~rows / n_images per image

    (out / ALPS_DIR).mkdir(parents=True, exist_ok=True)
    (out / PHRASES_DIR).mkdir(parents=True, exist_ok=True)
    alp_files = []
    # An image's ALPs share a file, as in the pipeline (which picks the file by a hash).
    file_of_row = image_of_row % files
    for f in range(files):
        take = np.flatnonzero(file_of_row == f)  # rows of this file, sorted by image
        n = len(take)
        images = image_of_row[take]
        phrases = phrase_of_row[take]
        first = np.r_[0, np.flatnonzero(np.diff(images)) + 1]  # first row of each image
        alp_index = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
        image_id = pc.utf8_lpad(pc.cast(pa.array(images), pa.string()), width=12, padding="0")
        x0, y0 = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
        w, h = rng.beta(2, 5, n).astype(np.float32), rng.beta(2, 5, n).astype(np.float32)
        boxes = np.stack([x0, y0, np.minimum(1, x0 + w), np.minimum(1, y0 + h)], axis=1)  # (n, 4)
        t_start = np.round(rng.uniform(0, 40, n), 3)
        start_char = rng.integers(0, 400, n).astype(np.int32)
        index = pa.array(phrases)
        columns = {
            "dataset_id": pa.array(np.full(n, DATASET_ID, dtype=object), pa.string()),
            "image_id": image_id,
            "annotator_id": pa.array(images % 97 + 1, pa.int64()),
            "alp_index": pa.array(alp_index.astype(np.int32)),
            "phrase": phrase_text.take(index),
            "phrase_id": pa.array(ids[phrases]),
            "head_lemma": head_text.take(index),
            "start_char": pa.array(start_char),
            "end_char": pa.array(start_char + rng.integers(3, 30, n).astype(np.int32)),
            "t_start": pa.array(t_start),
            "t_end": pa.array(t_start + np.round(rng.uniform(0.2, 1.5, n), 3)),
            "box_xyxy_norm": pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1)), 4),
            "n_points": pa.array(rng.integers(2, 60, n).astype(np.int32)),
            "source_file": pa.array(
                np.char.add("locnar/part-", (images % 10).astype(str)).astype(object), pa.string()
            ),
            "source_line": pa.array(images // 10 + 1, pa.int64()),
        }
        table = pa.Table.from_arrays(list(columns.values()), schema=ALP_SCHEMA)
        path = f"{ALPS_DIR}/{part_name(f, files, 'parquet')}"
        pq.write_table(table, out / path, row_group_size=ALP_ROW_GROUP_ROWS, **PARQUET_OPTIONS)
        alp_files.append({"path": path, "rows": n})

    counts = np.bincount(phrase_of_row, minlength=n_phrases)
    used = np.flatnonzero(counts)
    embedding = rng.standard_normal((len(used), PHRASE_DIM)).astype(np.float32)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    encoder_id = f"bench:random-{PHRASE_DIM}d"
    phrases = pa.Table.from_arrays(
        [
            pa.array(ids[used]),
            phrase_text.take(pa.array(used)),
            pa.array(counts[used].astype(np.int64)),
            pa.FixedSizeListArray.from_arrays(pa.array(embedding.reshape(-1)), PHRASE_DIM),
        ],
        schema=phrase_schema(PHRASE_DIM, encoder_id),
    ).sort_by("phrase")
    phrase_path = f"{PHRASES_DIR}/{part_name(0, 1, 'parquet')}"
    pq.write_table(
        phrases, out / phrase_path, row_group_size=PHRASE_ROW_GROUP_ROWS, **PARQUET_OPTIONS
    )
    narratives = len(np.unique(image_of_row))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "alp_version": "bench",
        "options": {"temporal_padding": 0.5, "text_encoder": encoder_id, "images": None},
        "inputs": [],
        "tagger": {"model": "none", "resolved": "none"},
        "encoder": {"id": encoder_id, "dim": PHRASE_DIM},
        "counts": {
            "input_lines": narratives,
            "blank_lines_skipped": 0,
            "dead_letters": {"total": 0, "by_reason": {}},
            "records": {
                "total": narratives,
                "with_alps": narratives,
                "without_alps": {"total": 0, "by_reason": {}},
            },
            "alps": rows,
            "phrases_dropped": {"total": 0, "by_reason": {}},
            "unique_phrases": len(used),
            "embeddings": {"computed": len(used), "reused": 0},
            "shards": {"samples": 0, "image_files_found": 0, "image_files_missing": 0},
        },
        "files": {
            "alps": alp_files,
            "phrases": [{"path": phrase_path, "rows": len(used)}],
            "shards": [],
            "dead_letters": [],
        },
    }
    problems = manifest_problems(manifest)
    if problems:
        raise AssertionError(f"bench manifest is inconsistent: {problems}")
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# One measurement, in a fresh process


def measure(out: Path, query: str, image_id: str, repeats: int) -> dict[str, Any]:
    """Run ``query`` once (cold) and ``repeats`` times more (warm) in this process."""
    t0 = time.perf_counter()
    import polars as pl

    from alp_dataset.query import AlpStore, alps_of_image, phrase_frequencies

    import_s = time.perf_counter() - t0
    rss_after_import = peak_rss_mib()

    def answer() -> pl.DataFrame:
        store = AlpStore.open(out)  # part of the cost: a user opens the run, then asks
        if query == "top 20 phrases":
            return phrase_frequencies(store).head(20).collect()
        if query == "top 20, by phrase string":
            return _by_phrase(store.alps).head(20).collect()
        if query == "plain group_by.len":
            plain = store.alps.group_by("phrase").len()
            return plain.sort(["len", "phrase"], descending=[True, False]).head(20).collect()
        return alps_of_image(store, image_id).collect()

    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        result = answer()
        times.append(time.perf_counter() - start)
    return {
        "import_s": import_s,
        "cold_s": times[0],
        "warm_s": statistics.median(times[1:]) if repeats else float("nan"),
        "rows_out": result.height,
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_import_mib": rss_after_import,
        "polars": pl.__version__,
        "threads": pl.thread_pool_size(),
    }


def _by_phrase(alps: Any) -> Any:
    """``phrase_frequencies`` grouped on the phrase string, phrase_id taken by first()."""
    import polars as pl

    image_key_hash = pl.struct("dataset_id", "image_id").hash()
    return (
        alps.group_by("phrase")
        .agg(
            pl.col("phrase_id").first(),
            pl.len().cast(pl.Int64).alias("n_alps"),
            image_key_hash.n_unique().cast(pl.Int64).alias("n_images"),
        )
        .select("phrase", "phrase_id", "n_alps", "n_images")
        .sort(["n_alps", "phrase"], descending=[True, False])
    )


def measure_in_subprocess(out: Path, query: str, image_id: str, repeats: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--measure", query, "--image-id", image_id]
    argv += ["--repeats", str(repeats), "--work-dir", str(out)]
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"measurement of {query!r} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _an_image(out: Path) -> str:
    """An image id in the middle of the middle file (row group statistics do not single it out)."""
    import polars as pl

    from alp_dataset.query import AlpStore

    store = AlpStore.open(out)
    middle = store.alp_files[len(store.alp_files) // 2]
    ids = pl.read_parquet(middle, columns=["image_id"])["image_id"]
    return str(ids[len(ids) // 2])


def _check_same_answer(out: Path) -> None:
    """The top 20 grouped on the phrase and on phrase_id must be the same table."""
    from alp_dataset.query import AlpStore, phrase_frequencies

    store = AlpStore.open(out)
    ours = phrase_frequencies(store).head(20).collect()
    other = _by_phrase(store.alps).head(20).collect()
    if not ours.equals(other):
        raise AssertionError(f"top 20 differs by grouping key:\n{ours}\n{other}")


def _size_mib(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*.parquet")) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=flags.HelpFormatter
    )
    parser.add_argument("--n-rows", type=int, default=5_000_000, help="ALP rows")
    parser.add_argument("--n-files", type=int, default=50, help="ALP Parquet files")
    parser.add_argument("--n-phrases", type=int, default=200_000, help="distinct phrases")
    parser.add_argument("--n-images", type=int, default=1_000_000, help="distinct images")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of phrases")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated run")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes per query")
    parser.add_argument("--repeats", type=int, default=5, help="warm answers per process")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where the generated run goes, kept (reused when it holds a manifest); default: a "
        "temporary folder, removed at the end",
    )
    parser.add_argument("--measure", choices=QUERIES, help=argparse.SUPPRESS)
    parser.add_argument("--image-id", help=argparse.SUPPRESS)
    args = flags.parse_args(parser, argv)

    if args.measure is not None:  # the child process of one measurement
        print(json.dumps(measure(args.work_dir, args.measure, args.image_id, args.repeats)))
        return

    with tempfile.TemporaryDirectory(prefix="bench_polars_") as tmp:
        out = args.work_dir if args.work_dir is not None else Path(tmp) / "run"
        generated = "reused"
        if not (out / "manifest.json").is_file():
            start = time.perf_counter()
            generate(
                out,
                rows=args.n_rows,
                files=args.n_files,
                n_phrases=args.n_phrases,
                n_images=args.n_images,
                zipf=args.zipf,
                seed=args.seed,
            )
            generated = f"generated in {time.perf_counter() - start:.1f} s"
        image_id = _an_image(out)
        results = {
            query: [
                measure_in_subprocess(out, query, image_id, args.repeats)
                for _ in range(args.cold_runs)
            ]
            for query in QUERIES
        }
        _check_same_answer(out)
        manifest = json.loads((out / "manifest.json").read_text())
        first = results[QUERIES[0]][0]
        print(
            f"polars {first['polars']} ({first['threads']} threads), "
            f"{manifest['counts']['alps']:,} ALP rows in {len(manifest['files']['alps'])} files "
            f"({_size_mib(out):,.0f} MiB, zstd), {manifest['counts']['unique_phrases']:,} phrases "
            f"(Zipf {args.zipf:g}), ~{args.n_images:,} images; data {generated}"
        )
        print(
            f"{'query':<26} {'cold (s)':>9} {'warm (s)':>9} {'peak RSS (MiB)':>15} {'rows out':>9}"
        )
        warm_of = {}
        for query, runs in results.items():
            cold = statistics.median(r["cold_s"] for r in runs)
            warm_of[query] = warm = statistics.median(r["warm_s"] for r in runs)
            rss = max(r["peak_rss_mib"] for r in runs)
            print(f"{query:<26} {cold:>9.3f} {warm:>9.3f} {rss:>15,.0f} {runs[0]['rows_out']:>9,}")
        top, by_string, plain = (warm_of[q] for q in QUERIES[:3])
        print(
            f"warm: top 20 phrases is {by_string / top:.2f}x faster than grouping by the phrase "
            "string, "
            f"and takes {top / plain:.2f}x the plain group_by.len"
        )
        base = statistics.median(r["rss_after_import_mib"] for rs in results.values() for r in rs)
        imports = statistics.median(r["import_s"] for rs in results.values() for r in rs)
        print(
            f"cold: first answer in a fresh process, median of {args.cold_runs} processes; OS page "
            "cache as is (files just written or read, so most likely cached); warm: median of "
            f"{args.repeats} more answers in that process; both include AlpStore.open. Peak RSS: "
            f"the process's maximum, imports included (after imports: {base:,.0f} MiB; "
            f"importing polars + alp_dataset.query: {imports:.2f} s, not in the times)."
        )


if __name__ == "__main__":
    main()
