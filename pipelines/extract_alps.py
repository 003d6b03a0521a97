"""Curate Localized Narratives into ALPs with Apache Beam: Parquet tables, WebDataset shards.

    beam run pipelines/extract_alps.py --input 'narratives/*.jsonl.gz' --output out/
    python -m pipelines.extract_alps --input gs://bucket/locnar/*.jsonl --output gs://bucket/alps \\
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp

Stages (each a labelled composite transform around ``alp_curation`` functions)::

    ReadLocNar        files (globs; .gz by extension) -> lines, bounded memory per line
    ParseRecords      parse_record                    -> records | dead letters
    CurateRecords     Tagger.tag in batches, curate_record -> ALP rows, narratives | dead letters
    EmbedPhrases      count per phrase, embed each unique phrase once (prompt ensemble, cache)
    BuildSamples      join ALPs with their phrase embeddings, group by image
    Write*            alps/, phrases/, shards/, dead_letters/ (deterministic, atomic files)
    WriteManifest     manifest.json, last: counts per stage that add up, files, options

Every non-blank input line ends up in exactly one of: a record with ALPs, a record without ALP
(counted by reason), a dead letter (reason code, message, raw line). The output layout and every
field are documented in docs/data_format.md; the schemas live in alp_dataset/schema.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam

from alp_curation.curate import DEFAULT_TEMPORAL_PADDING
from alp_curation.embedding_cache import EmbeddingCache, EmbeddingCacheError
from alp_curation.encoders import EncoderUnavailable
from alp_curation.tagging import DEFAULT_MODEL, ModelUnavailable
from pipelines import launcher, progress, writers
from pipelines import manifest as m
from pipelines.input_kinds import COCO_INSTANCES, HEAD_BYTES, LOCNAR_JSONL, kind_of
from pipelines.io import (
    BeamStorage,
    NoInputFiles,
    OutputExists,
    match_inputs,
    prepare_output,
    read_head,
)
from pipelines.local_workers import (
    AUTO_PROCESSES_MIN_BYTES,
    AUTO_PROCESSES_MIN_CORES,
    LocalPlan,
    choose_local_workers,
    direct_flags_given,
    local_plan,
    worker_environment,
)
from pipelines.options import (
    add_dead_letter_limit_flag,
    add_help_beam_flag,
    add_quiet_flag,
    add_runner_flag,
    alp_version,
    non_negative_float,
    positive_int,
)
from pipelines.samples import NARRATIVES, BuildSamples, phrase_embeddings, spilled_samples
from pipelines.spill import spill_folder
from pipelines.transforms import (
    DEAD_LETTERS,
    CurateRecords,
    EmbedPhrases,
    EncoderConfig,
    ParseRecords,
    ReadLocNar,
    shared_encoder,
    shared_tagger,
)

PROG = "beam run pipelines/extract_alps.py"
DEFAULT_TEXT_ENCODER = "open_clip:ViT-B-32:openai"
MIB = 2**20
MAX_HINTED_INPUTS = 10  # inputs whose kind is named when every line became a dead letter

DESCRIPTION = """\
Curate Localized Narratives (JSONL) into approximately localized phrases (ALPs): a Parquet ALP
table, a Parquet phrase table with text embeddings, WebDataset shards with one sample per image,
dead letters for bad lines, and a manifest whose counts account for every input line.
"""

EPILOG = f"""\
Local workers: on a local runner (FnApiRunner, the default) with neither --direct_num_workers
nor --direct_running_mode given, the run picks the faster setting for this machine: one worker
process per core (multi_processing) when the machine has at least {AUTO_PROCESSES_MIN_CORES}
cores and the input holds at least {AUTO_PROCESSES_MIN_BYTES // 2**20} MiB, else one worker in
this process: a worker process takes seconds to start, which a smaller input does not pay back
(on 2 cores, two processes measured 0.95x one at 30 MiB of narratives, 1.35x at 60 MiB and 1.66x
at 150 MiB; docs/benchmarks.md). Each worker process gets cores / workers threads. The output
bytes do not depend on the setting.

Beam options: every Apache Beam pipeline option is accepted as well, including those of the
runner in use (e.g. --dask_* with DaskRunner), for example
  --direct_num_workers N --direct_running_mode multi_processing
                        run locally in N worker processes (in_memory, multi_threading,
                        multi_processing); --direct_num_workers 1 keeps one in-process worker
  --project, --region, --temp_location, --setup_file, --sdk_container_image, ...
                        for --runner DataflowRunner (see docs)
  --help-beam lists them all. Options that neither this pipeline nor Beam knows are an error.

Output under --output: alps/*.parquet, phrases/*.parquet, shards/shard-NNNNNN.tar,
dead_letters/*.jsonl and manifest.json (written last; see docs/data_format.md).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input",
        action="append",
        metavar="PATTERN",
        help="(required) LocNar JSONL files: a path or glob, local, gs:// or s3://; .gz (and other "
        "compressions) by extension; repeat the flag for several patterns",
    )
    parser.add_argument(
        "--output", metavar="DIR", help="(required) output directory (local, gs://, s3://)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier run in --output (only alps/, phrases/, shards/, "
        "dead_letters/ and manifest.json are removed); without it such a directory is refused",
    )
    add_runner_flag(parser)
    parser.add_argument(
        "--spacy-model",
        default=DEFAULT_MODEL,
        help="spaCy model for POS tagging (en_core_web_sm, en_core_web_trf as in the paper, or "
        "a path); default: %(default)s",
    )
    parser.add_argument(
        "--temporal-padding",
        type=non_negative_float,
        default=DEFAULT_TEMPORAL_PADDING,
        metavar="SECONDS",
        help="t_p: seconds added before and after a phrase's utterances when selecting its "
        "trace points; default: %(default)s",
    )
    parser.add_argument(
        "--text-encoder",
        default=DEFAULT_TEXT_ENCODER,
        metavar="SPEC",
        help="phrase encoder: open_clip:ViT-B-32:openai (the paper's; hub weights), "
        "open_clip:ViT-B-32-quickgelu:/path/to/checkpoint.bin (local weights), or minilm "
        "(all-MiniLM-L6-v2, offline); default: %(default)s",
    )
    parser.add_argument(
        "--encoder-device",
        default="cpu",
        metavar="DEVICE",
        help="torch device for the text encoder on each worker (cpu, cuda, cuda:1); with "
        "Dataflow GPUs use cuda; default: %(default)s",
    )
    parser.add_argument(
        "--encoder-threads",
        type=positive_int,
        metavar="N",
        help="torch threads per worker process for the text encoder; default: the machine's "
        "cores divided by --direct_num_workers when running locally with multi_processing "
        "(so worker processes do not fight over cores), else torch's default. On Dataflow, "
        "which runs one SDK process per vCPU, pass 1",
    )
    parser.add_argument(
        "--embedding-cache",
        metavar="DIR",
        help="persistent embeddings keyed by (encoder id, phrase): a later run embeds only "
        "phrases not seen before (local, gs://, s3://); default: no cache",
    )
    parser.add_argument(
        "--embedding-buckets",
        type=positive_int,
        default=64,
        metavar="N",
        help="phrases are embedded in N groups by phrase_id %% N (the cache's buckets; must "
        "match an existing cache); default: %(default)s",
    )
    parser.add_argument(
        "--images",
        metavar="ROOT",
        help="add image bytes to the shards: ROOT/<dataset_id>/<image_id>.{jpg,jpeg,png} or "
        "ROOT/<image_id>.{jpg,jpeg,png}; missing images are counted in the manifest",
    )
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        default=1000,
        metavar="N",
        help="about N images per WebDataset shard (ceil(images / N) shards); default: %(default)s",
    )
    parser.add_argument(
        "--alp-rows-per-file",
        type=positive_int,
        default=500_000,
        metavar="N",
        help="about N rows per ALP Parquet file; default: %(default)s",
    )
    parser.add_argument(
        "--phrase-rows-per-file",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="about N rows per phrase Parquet file; default: %(default)s",
    )
    parser.add_argument(
        "--dead-letter-rows-per-file",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="about N dead letters per JSONL file; default: %(default)s",
    )
    parser.add_argument(
        "--max-line-bytes",
        type=positive_int,
        default=16 * MIB,
        metavar="N",
        help="longer input lines become 'line_too_long' dead letters without being held in "
        "memory whole; default: %(default)s (16 MiB)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        metavar="N",
        help="at most N captions per spaCy batch; default: %(default)s",
    )
    parser.add_argument(
        "--embed-batch-size",
        type=positive_int,
        default=1024,
        metavar="N",
        help="at most N prompts per text-encoder call; default: %(default)s",
    )
    parser.add_argument(
        "--timings-json",
        metavar="PATH",
        help="after a local run, write the wall time and the seconds spent in each stage "
        "(summed over workers) to this JSON file; they are kept out of the manifest, which "
        "must not change between identical runs",
    )
    add_dead_letter_limit_flag(parser, "input lines")
    add_quiet_flag(parser)
    add_help_beam_flag(parser)
    return parser


# The long stages of a run, as progress lines (`pipelines.progress`).
PROGRESS_STAGES = (
    progress.Stage("tagging", "narratives", (progress.NARRATIVES_TAGGED,)),
    progress.Stage(
        "embedding",
        "phrases",
        (progress.PHRASES_EMBEDDED, progress.PHRASES_FROM_CACHE),
        rate_of=(progress.PHRASES_EMBEDDED,),
        total=progress.TOTAL_UNIQUE_PHRASES,
        parts=(
            (progress.PHRASES_EMBEDDED, "embedded"),
            (progress.PHRASES_FROM_CACHE, "from the cache"),
        ),
    ),
    progress.Stage("writing shards", "samples", (progress.SAMPLES_WRITTEN,)),
)


def curation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that, with the inputs, determine the output (recorded in the manifest)."""
    names = (
        "input",
        "spacy_model",
        "temporal_padding",
        "text_encoder",
        "embedding_cache",
        "embedding_buckets",
        "images",
        "shard_size",
        "alp_rows_per_file",
        "phrase_rows_per_file",
        "dead_letter_rows_per_file",
        "max_line_bytes",
        "batch_size",
        "embed_batch_size",
    )
    return {name: getattr(args, name) for name in names}


def build_pipeline(
    p: beam.Pipeline,
    args: argparse.Namespace,
    paths: Sequence[str],
    about: dict[str, Any],
    encoder_config: EncoderConfig,
    plan: LocalPlan,
    progress_folder: str | None = None,
    spill_folder: str | None = None,
) -> None:
    """Add the curation stages to ``p`` (``about``: the manifest's static entries; ``plan``: how
    the input is read, `pipelines.local_workers`; ``progress_folder``: where the workers report
    progress, `pipelines.progress`; ``spill_folder``: for a local run, where rows are grouped
    into output files through the disk, `pipelines.spill`)."""
    out = args.output
    encoder = about["encoder"]
    read = p | "ReadLocNar" >> ReadLocNar(
        paths, args.max_line_bytes, lanes=plan.lanes, spread_lines=plan.spread_lines
    )
    parsed = read["lines"] | "ParseRecords" >> ParseRecords(args.max_line_bytes)
    curated = parsed.records | "CurateRecords" >> CurateRecords(
        args.spacy_model, args.batch_size, args.temporal_padding, progress_folder
    )
    phrases = curated.alps | "EmbedPhrases" >> EmbedPhrases(
        encoder_config,
        args.embedding_cache,
        args.embedding_buckets,
        args.embed_batch_size,
        progress_folder,
    )
    spilled = None if spill_folder is None else writers.Spilled(spill_folder)
    if spill_folder is None:
        samples = (curated.alps, phrases.phrases, curated[NARRATIVES]) | "BuildSamples" >> (
            BuildSamples(encoder["dim"], args.images)
        )
        sample_spill, embeddings = None, None
    else:  # local: built in the shard writer, from image items grouped through the disk
        samples, sample_spill = spilled_samples(
            curated.alps, curated[NARRATIVES], spill_folder, encoder["dim"], args.images
        )
        embeddings = phrase_embeddings(phrases.phrases)
    dead = (read[DEAD_LETTERS], parsed[DEAD_LETTERS], curated[DEAD_LETTERS]) | (
        "AllDeadLetters" >> beam.Flatten()
    )
    dead_per_file = args.dead_letter_rows_per_file
    written = [
        curated.alps
        | "WriteAlpTable" >> writers.write_alp_table(out, args.alp_rows_per_file, spilled=spilled),
        phrases.phrases
        | "WritePhraseTable"
        >> writers.write_phrase_table(
            out, args.phrase_rows_per_file, encoder["dim"], encoder["id"], spilled=spilled
        ),
        samples
        | "WriteShards"
        >> writers.write_shards(
            out,
            args.shard_size,
            image_stats=(m.IMAGES_FOUND, m.IMAGES_MISSING) if args.images else None,
            embeddings=embeddings,
            progress_folder=progress_folder,
            spilled=sample_spill,
        ),
        dead
        | "WriteDeadLetters" >> writers.write_dead_letters(out, dead_per_file, spilled=spilled),
    ]
    files = [w.files for w in written] | "AllFiles" >> beam.Flatten()
    stats = [
        read[m.STATS],
        parsed[m.STATS],
        curated[m.STATS],
        phrases[m.STATS],
        *(w[m.STATS] for w in written),
    ] | "AllStats" >> beam.Flatten()
    _ = (files, stats) | "WriteManifest" >> writers.WriteManifest(out, about)


def _input_hints(paths: Sequence[str]) -> list[str]:
    """What the first inputs look like, when not LocNar JSONL (after every line was rejected)."""
    hints = []
    for path in paths[:MAX_HINTED_INPUTS]:
        kind = kind_of(read_head(path, HEAD_BYTES))
        if kind == COCO_INSTANCES:
            hints.append(
                f"{path} looks like {kind}, not {LOCNAR_JSONL}: make shards of it with "
                f"pipelines/build_coco_shards.py --instances {path}"
            )
        elif kind is not None and kind != LOCNAR_JSONL:
            hints.append(f"{path} looks like {kind}, not {LOCNAR_JSONL} (UTF-8)")
    return hints


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> int:
    """Run the pipeline; returns the exit status (pipelines.launcher: 0 when the run completed)."""
    parser = build_parser()
    try:
        args, options = launcher.parse_args(parser, argv, PROG)
    except launcher.UsageError as exc:
        return launcher.usage_error(exc)
    if args.input is None or args.output is None:
        parser.error("--input and --output are required")
    try:
        # Everything that can fail before any work is checked here, in the launcher: input
        # patterns, the spaCy model, the encoder's weights. The output is cleared last.
        inputs = match_inputs(args.input)
        if not direct_flags_given(sys.argv[1:] if argv is None else argv):
            choose_local_workers(args.runner, options, sum(size for _, size in inputs))
        plan = local_plan(args.runner, options, threads=args.encoder_threads)
        encoder_config = EncoderConfig(args.text_encoder, args.encoder_device, plan.threads)
        # The same per-process instances the DoFns take, so a local in-process run loads once.
        tagger = shared_tagger(args.spacy_model, args.batch_size).model
        encoder = shared_encoder(encoder_config).model
        if args.embedding_cache is not None:  # an existing cache must match encoder and buckets
            EmbeddingCache(
                args.embedding_cache,
                encoder.id,
                encoder.dim,
                storage=BeamStorage(),
                n_buckets=args.embedding_buckets,
            )
        prepare_output(args.output, overwrite=args.overwrite)
    except (
        NoInputFiles,
        OutputExists,
        ModelUnavailable,
        EncoderUnavailable,
        EmbeddingCacheError,
        ValueError,
    ) as exc:
        return launcher.usage_error(exc)
    about = {
        "options": curation_options(args),
        "inputs": inputs,
        "tagger": {"model": args.spacy_model, "resolved": tagger.name},
        "encoder": {"id": encoder.id, "dim": encoder.dim},
        "alp_version": alp_version(),
    }
    paths = [path for path, _ in inputs]
    show = plan.local and not args.quiet
    with (
        worker_environment(plan),
        spill_folder(plan.local) as spill,
        launcher.progress_lines("extract_alps", PROGRESS_STAGES, show=show) as folder,
    ):
        finished = launcher.execute(
            lambda p: build_pipeline(p, args, paths, about, encoder_config, plan, folder, spill),
            options,
            args,
            save_main_session=save_main_session,
        )
    if finished is None:
        return launcher.EXIT_FAILED
    stages = m.stage_seconds(finished.result.metrics())
    counts = finished.manifest["counts"]
    print(
        m.format_summary(
            finished.manifest, out_dir=args.output, seconds=finished.seconds, stages=stages
        )
    )
    if args.timings_json:
        timings = {"wall_seconds": finished.seconds, "stage_seconds": stages}
        Path(args.timings_json).write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
    return launcher.report_dead_letters(
        counts["input_lines"],
        counts["dead_letters"]["total"],
        unit="input lines",
        by_reason=counts["dead_letters"]["by_reason"],
        limit=args.fail_on_dead_letters,
        hints=lambda: _input_hints(paths),
    )


if __name__ == "__main__":
    sys.exit(run())
