"""`python -m pipeline`: raw corpora -> Arrow shards (see docs/pipeline.md).

Our flags are parsed here; every flag we do not know goes to Beam's PipelineOptions unchanged
(--runner, --direct_num_workers, --direct_running_mode, --dask_client_address, --project, --region,
--temp_location, --flink_master, --spark_master_url, ...). Without --runner the pipeline runs in this
process on Beam's FnApiRunner (the DirectRunner family), which needs no service and nothing
downloaded. `--runner dask` (or `DaskRunner`) names Beam's DaskRunner, which Beam itself only
accepts by its full class path.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from contract.annotate import AVAILABLE, CHUNK_CHARS, MODEL, load_model_spans
from contract.cli import debug_requested
from contract.schema import MANIFEST, TOKENIZER_FILE, VOCAB_FILE, Manifest, TokenizerInfo, summarize
from contract.tokenizer import load_tokenizer, normalizer_identity, tokens_sha256, vocab_list
from pipeline.documents import FORMATS, CleanOptions, split_format
from pipeline.inputs import SPLIT_BYTES, ReadRange, match_inputs, parse_input, plan_ranges
from pipeline.manifest import ManifestBase, WriteManifest
from pipeline.outdir import join, prepare_output, read_text
from pipeline.transforms import ProcessRanges, RangeSettings

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
RUNNER_ALIASES = {"dask": DASK_RUNNER, "daskrunner": DASK_RUNNER}
DASK_MAX_PARTITIONS = 32  # default --dask_npartitions cap: each partition loads the tokenizer once


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline",
        allow_abbrev=False,  # a Beam flag must never be taken for an abbreviation of ours
        description="Preprocess corpora into SpanBERT block shards. Unknown flags go to Beam's PipelineOptions.",
    )
    p.add_argument("--input", action="append", required=True, metavar="[FORMAT:]GLOB",
                   help="input files (repeatable); an optional FORMAT: prefix overrides --format")
    p.add_argument("--format", choices=FORMATS, default="wikiextractor", help="format of unprefixed inputs")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--vocab", help="BERT vocab.txt (cased WordPiece unless --lowercase)")
    tok.add_argument("--tokenizer", help="any HF tokenizers tokenizer.json")
    p.add_argument("--lowercase", action="store_true",
                   help="with --vocab: BERT's uncased normaliser (lower-case, strip accents), for an uncased vocab.txt")
    p.add_argument("--output", required=True, help="output directory (local or gs://, s3://, hdfs://)")
    p.add_argument("--block-size", type=int, default=512, help="model sequence length; blocks hold block_size-2 pieces")
    p.add_argument("--num-shards", type=int, default=8,
                   help="about how many shards in all: a range rolls to a new shard after input bytes / N of its "
                        "documents; every planned range writes at least one (see docs/pipeline.md)")
    p.add_argument("--annotate", action=argparse.BooleanOptionalAction, default=True,
                   help="spaCy entities, noun chunks and sentences (--no-annotate: empty span columns)")
    p.add_argument("--spacy-model", default=MODEL)
    p.add_argument("--chunk-chars", type=int, default=CHUNK_CHARS, help="longest text given to spaCy at once")
    p.add_argument("--batch-docs", type=int, default=32, help="documents per encode_batch / nlp.pipe call")
    p.add_argument("--encoding-fallback", default=None, metavar="CODEC",
                   help="decode invalid UTF-8 with CODEC (e.g. latin-1) instead of dead-lettering the document")
    p.add_argument("--text-field", default="text", help="jsonl: field holding the text")
    p.add_argument("--id-field", default="id", help="jsonl: field holding the document id")
    p.add_argument("--keep-markup", action="store_true", help="do not strip HTML tags / entities")
    p.add_argument("--keep-gutenberg", action="store_true", help="do not strip Project Gutenberg header/footer")
    p.add_argument("--split-bytes", type=int, default=SPLIT_BYTES, help="byte range per read split (splittable formats)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory's contents")
    return p


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.block_size < 3:
        parser.error("--block-size must be >= 3 (room for [CLS] and [SEP])")
    if args.num_shards < 1:
        parser.error("--num-shards must be >= 1")
    if args.chunk_chars < 1000 or args.batch_docs < 1 or args.split_bytes < 1:
        parser.error("--chunk-chars >= 1000, --batch-docs >= 1, --split-bytes >= 1")
    if args.lowercase and not args.vocab:
        parser.error("--lowercase goes with --vocab; a tokenizer.json carries its own normaliser")
    if args.encoding_fallback:
        import codecs

        try:
            codecs.lookup(args.encoding_fallback)
        except LookupError:
            parser.error(f"--encoding-fallback: unknown codec {args.encoding_fallback!r}")
    _check_paths(args, parser)


def _check_paths(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Bad local paths fail here, in one line, before Beam starts (not after the whole pipeline has run)."""
    import glob
    import os

    for spec in args.input:
        try:
            _, pattern = split_format(spec, args.format)
        except ValueError as e:
            parser.error(str(e))
        if "://" in pattern or glob.has_magic(pattern):
            continue  # a glob is matched (and an empty match refused) by match_inputs, still before Beam
        if os.path.isdir(pattern):
            parser.error(f"--input {spec}: is a directory; give a glob of its files, e.g. {pattern.rstrip('/')}/*.txt")
        if os.path.exists(pattern) and not os.access(pattern, os.R_OK):
            parser.error(f"--input {spec}: not readable (permission denied)")
    out = args.output
    if "://" not in out and os.path.exists(out) and not os.path.isdir(out):
        parser.error(f"--output {out}: exists and is not a directory")


@dataclass(frozen=True)
class Job:
    """Everything planned before the graph is built: the read plan, the per-range settings, the manifest's
    fixed fields, and the Beam arguments (ours already parsed out)."""

    ranges: list[ReadRange]
    settings: RangeSettings
    base: ManifestBase
    vocab_txt: str
    tokenizer_json: str
    beam_args: list[str]


def build_graph(p: beam.Pipeline, job: Job) -> None:
    """The whole pipeline: ranges -> shards (+ per-range results) -> manifest."""
    results = p | "ProcessRanges" >> ProcessRanges(job.ranges, job.settings)
    # Applied last: the DaskRunner computes only the graph behind the last transform.
    _ = results | "WriteManifest" >> WriteManifest(
        job.settings.output, job.base, len(job.ranges), job.vocab_txt, job.tokenizer_json
    )


def run(argv: Sequence[str] | None = None) -> Manifest:
    """Run the pipeline; returns the manifest (also printed as an accounting summary)."""
    job = plan_job(argv)
    beam_options = PipelineOptions(job.beam_args)
    # No --runner: FnApiRunner directly. (DirectRunner would first try Prism, which downloads a binary.)
    runner = None if beam_options.view_as(StandardOptions).runner else local_runner()
    with beam.Pipeline(runner=runner, options=beam_options) as p:
        build_graph(p, job)
    _close_client(p.result)
    output = job.settings.output
    manifest = Manifest.from_json(json.loads(read_text(join(output, MANIFEST))))
    print(summarize(manifest, output))
    return manifest


def plan_job(argv: Sequence[str] | None) -> Job:
    """Parse and check the flags, match the inputs and plan the ranges, load the tokenizer, prepare the
    output directory."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    _validate(args, parser)
    if _timed_flush_experiment(beam_args):
        parser.error("--experiments data_buffer_time_limit_ms: Beam's timed flush of a worker's output loses "
                     "data (docs/pipeline.md, 'Lost blocks'); leave it unset")
    inputs = [parse_input(s, args.format) for s in args.input]
    # Planned here, before any worker starts: a glob that matches nothing fails now, and every
    # runner gets the ranges as separate elements to distribute.
    matched = match_inputs(inputs)
    ranges = plan_ranges(matched, args.split_bytes)
    input_bytes = sum(m.size_in_bytes for _, metas in matched for m in metas)
    tok = load_tokenizer(args.vocab, lowercase=True) if args.lowercase else load_tokenizer(args.vocab or args.tokenizer)
    vocab = vocab_list(tok)
    # Loaded here, before any worker: a model that is not installed is one line, and the manifest says
    # which span kinds and labels the model gives.
    spans = load_model_spans(args.spacy_model) if args.annotate else None
    prepare_output(args.output, args.overwrite)

    options = {k: v for k, v in vars(args).items() if k not in ("output", "overwrite")}
    base = ManifestBase(
        block_size=args.block_size,
        annotated=args.annotate,
        spacy=spans.as_manifest() if spans else None,
        tokenizer=TokenizerInfo(file=TOKENIZER_FILE, vocab_file=VOCAB_FILE, vocab_sha256=tokens_sha256(vocab),
                                vocab_size=len(vocab), normalizer=normalizer_identity(tok)),
        options=options,
    )
    tokenizer_json = tok.to_str()
    settings = RangeSettings(
        clean=CleanOptions(
            encoding_fallback=args.encoding_fallback,
            text_field=args.text_field,
            id_field=args.id_field,
            strip_markup=not args.keep_markup,
            strip_gutenberg=not args.keep_gutenberg,
        ),
        tokenizer_json=tokenizer_json,
        block_size=args.block_size,
        output=args.output,
        shard_input_bytes=shard_input_bytes(input_bytes, args.num_shards),
        annotate_model=args.spacy_model if args.annotate else None,
        entities=spans is None or spans.entities == AVAILABLE,
        noun_chunks=spans is None or spans.noun_phrases == AVAILABLE,
        chunk_chars=args.chunk_chars,
        batch_docs=args.batch_docs,
    )
    beam_args = _runner_defaults(_local_defaults(_resolve_runner(beam_args), args.annotate), len(ranges))
    return Job(ranges, settings, base, "".join(t + "\n" for t in vocab), tokenizer_json, beam_args)


def shard_input_bytes(input_bytes: int, num_shards: int) -> int:
    """Input bytes per shard part: --num-shards N asks for about N shards over the whole input."""
    return max(1, math.ceil(input_bytes / num_shards))


def _local_defaults(beam_args: list[str], annotate: bool) -> list[str]:
    """Annotating on the local runner with no worker flags: one worker process per core.

    spaCy is the bottleneck and holds the GIL, so only processes help (Beam's own default is one
    in-process worker); without annotation the tokenizer already uses every core from one process.
    """
    if not annotate or any(a.startswith(("--runner", "--direct_running_mode", "--direct_num_workers")) for a in beam_args):
        return beam_args
    import os

    return [*beam_args, "--direct_running_mode=multi_processing", f"--direct_num_workers={os.cpu_count() or 1}"]


def _resolve_runner(beam_args: list[str]) -> list[str]:
    """`--runner dask` / `--runner=DaskRunner` -> Beam's DaskRunner by its full class path."""
    out = list(beam_args)
    for i, a in enumerate(out):
        if a.startswith("--runner="):
            name = a.split("=", 1)[1]
            out[i] = "--runner=" + RUNNER_ALIASES.get(name.lower(), name)
        elif a == "--runner" and i + 1 < len(out):
            out[i + 1] = RUNNER_ALIASES.get(out[i + 1].lower(), out[i + 1])
    return out


def _runner_defaults(beam_args: list[str], num_ranges: int) -> list[str]:
    """On Dask, one partition per planned input range (up to DASK_MAX_PARTITIONS) unless given.

    The DaskRunner's parallelism is the partition count of the initial Create, which it otherwise
    sets to one partition per 128 elements: one task for a whole corpus of fewer files.
    """
    if PipelineOptions(beam_args).view_as(StandardOptions).runner != DASK_RUNNER or any(a.startswith(("--dask_npartitions", "--dask_partition_size")) for a in beam_args):
        return beam_args
    return [*beam_args, f"--dask_npartitions={min(num_ranges, DASK_MAX_PARTITIONS)}"]


def _close_client(result: Any) -> None:
    """The DaskRunner opens a dask.distributed Client and leaves it open; close it once the job is done."""
    client = getattr(result, "client", None)
    if client is not None:
        client.close()


def local_runner() -> beam.runners.PipelineRunner:
    """Beam's FnApiRunner, without the timed flush that lost blocks on the multi-worker modes.

    Beam 2.77's runner sends every stage's input to a worker process through a stream that a timer
    thread also flushes once a second (worker_handlers.DATA_BUFFER_TIME_LIMIT_MS, used by its gRPC data
    server and by in-process gRPC workers). That flush hands on get() and then _clear()s, without the
    writer's lock: a chunk the runner writes in between is dropped, silently. 0 leaves the size-based
    flush alone, which runs on the writing thread. Root cause and reproduction: docs/pipeline.md,
    "Lost blocks". Beam is pinned (pyproject.toml); after an upgrade, tests/pipeline/test_runner_data_plane.py
    says whether this still switches the race off.
    """
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers

    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
    return FnApiRunner()


def _timed_flush_experiment(beam_args: list[str]) -> bool:
    """`--experiments data_buffer_time_limit_ms=N` (N > 0) turns the same racy flush on in the workers."""
    from apache_beam.options.pipeline_options import DebugOptions

    for experiment in PipelineOptions(beam_args).view_as(DebugOptions).experiments or []:
        name, _, value = experiment.partition("=")
        if name == "data_buffer_time_limit_ms" and value.strip().lstrip("+").isdigit() and int(value) > 0:
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A DoFn's error is logged with its traceback by Beam (and by its worker processes), then re-raised:
    # run_main prints it as one line; --debug / SPANBERT_DEBUG=1 keep Beam's logs.
    if not debug_requested(sys.argv):
        for name in ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker",
                     "apache_beam.runners.portability.local_job_service"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(argv)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
