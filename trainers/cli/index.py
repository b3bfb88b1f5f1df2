"""`hf-vlp index build | merge | search`: build a faiss index of a data source, finish a multi-process build, search.

Building is `trainers.indexing.build_index`; the index format and search are `hf_vlp.index`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from trainers.data import DataFormatError
from trainers.indexing import build_index, merge_index

from .errors import require_modules
from .parsing import flag_values


__all__ = ["index_main"]


def _build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Build and search faiss indexes of hf-vlp embeddings.")
    sub = parser.add_subparsers(dest="action", required=True)

    build = sub.add_parser("build", help="encode an image source into an index folder (resumable)")
    build.add_argument("--model", required=True, help="saved hf-vlp model folder or Hub id")
    build.add_argument("--revision", default=None, help="Hub revision of the model (recorded in the index)")
    build.add_argument(
        "--images",
        nargs="+",
        default=[],
        help="image folders (imagefolder with metadata.jsonl/csv, or plain image files), tar shards, "
        "JSONL/CSV/parquet lists, glob patterns, or demo:eval / demo:train (the built-in demo set)",
    )
    build.add_argument(
        "--dataset", default=None, help="a datasets Hub id or save_to_disk folder (instead of --images)"
    )
    build.add_argument("--split", default="train")
    build.add_argument("--image-column", default="image")
    build.add_argument("--text-column", default="text")
    build.add_argument("--id-column", default=None)
    build.add_argument("--output", required=True, help="index folder (an unfinished build there is resumed)")
    build.add_argument(
        "--modality", choices=("image", "text"), default="image", help="index images, or captions (image->text)"
    )
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--chunk-size", type=int, default=4096, help="items per atomically written shard")
    build.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    build.add_argument("--num-shards", type=int, default=None, help="processes sharing the build (default: torchrun)")
    build.add_argument("--shard-index", type=int, default=None, help="this process's share, 0..num-shards-1")
    _add_faiss_flags(build)
    build.add_argument("--device", default="cpu")
    build.add_argument("--no-progress", action="store_true")

    merge = sub.add_parser("merge", help="finish a multi-process build once every part is done")
    merge.add_argument("index", help="the index folder")
    _add_faiss_flags(merge)

    search = sub.add_parser("search", help="search an index; one hit per line, best first")
    search.add_argument("index", help="the index folder")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", action="append", help="a text query (repeat for a batch)")
    query.add_argument("--image", action="append", help="an image file query (repeat for a batch)")
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--rerank", action="store_true", help="re-rank the top-k with a fusion model's cross encoder")
    search.add_argument("--candidates", type=int, default=None, help="faiss candidates re-scored (token-wise/rerank)")
    search.add_argument("--model", default=None, help="query model (default: the one recorded in the index)")
    search.add_argument("--nprobe", type=int, default=None, help="IVF lists visited (approximate indexes)")
    search.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth")
    search.add_argument("--json", action="store_true", help="print each hit as a JSON line")
    return parser


def _add_faiss_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index-type",
        default="auto",
        help="flat (exact), ivfpq, hnsw, auto (flat up to --auto-threshold vectors, then ivfpq) or a faiss factory "
        "string such as 'IVF4096,PQ64'",
    )
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantisers (default: embedding size / 8)")
    parser.add_argument("--pq-bits", type=int, default=None, help="bits per PQ code (default 8)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=None, help="training sample of approximate indexes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training sample")
    parser.add_argument("--auto-threshold", type=int, default=None)


def _faiss_options(args: argparse.Namespace) -> dict[str, Any]:
    options = flag_values(args, "nlist", "pq_m", "pq_bits", "hnsw_m", "train_size")
    options = {k: v for k, v in options.items() if v is not None}
    options["seed"] = args.seed
    if args.auto_threshold is not None:
        options["auto_threshold"] = args.auto_threshold
    return options


def index_main(argv: Sequence[str], prog: str = "hf-vlp index") -> int:
    """`hf-vlp index build | merge | search`; an expected failure is one line on stderr and exit status 1."""
    from hf_vlp.index import IndexFormatError, IndexModelMismatchError

    args = _build_parser(prog).parse_args(list(argv))
    require_modules(f"{prog} {args.action}", ("faiss", "pyarrow"), "deploy")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars would bury the one-line answer
    try:
        if args.action == "build":
            return _build_command(args)
        if args.action == "merge":
            manifest = merge_index(args.index, index_type=args.index_type, **_faiss_options(args))
            print(f"merged {args.index}: {manifest['num_items']} items, faiss {manifest['faiss']['factory']}")
            return 0
        return _search_command(args)
    except (DataFormatError, IndexFormatError, IndexModelMismatchError, OSError, ValueError) as error:
        print(f"{prog} {args.action}: {error}", file=sys.stderr)
        return 1


def _build_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = ("dataset", "split", "image_column", "text_column", "id_column", "modality", "revision", "batch_size")
    options += ("chunk_size", "num_workers", "num_shards", "shard_index", "index_type", "device")
    result = build_index(
        args.model,
        args.output,
        args.images,
        faiss_options=_faiss_options(args),
        progress=not args.no_progress,
        **flag_values(args, *options),
    )
    skipped = ", ".join(f"{reason}: {count}" for reason, count in sorted(result.skipped.items())) or "none"
    if result.finished:
        manifest = result.manifest or {}
        print(
            f"indexed {manifest.get('num_items')} {manifest.get('modality')}s into {args.output} "
            f"(faiss {manifest.get('faiss', {}).get('factory')}); skipped: {skipped}"
        )
    else:
        print(f"part {args.shard_index} done: {result.indexed} items; skipped: {skipped}; merge with rank 0")
    return 0


def _search_command(args: argparse.Namespace) -> int:
    from hf_vlp.index import VLPIndex, load_model_and_processor

    model = processor = None
    if args.model:
        model, processor = load_model_and_processor(args.model)
    index = VLPIndex.load(args.index, model, processor)
    index.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    if args.image:
        missing = [path for path in args.image if not os.path.isfile(path)]
        if missing:
            raise DataFormatError(f"query image not found: {missing[0]}")
    results = index.search(
        texts=args.text, images=args.image, k=args.k, rerank=args.rerank, candidates=args.candidates
    )
    for query_number, hits in enumerate(results):
        if len(results) > 1:
            print(f"# query {query_number}: {(args.text or args.image)[query_number]}")
        for hit in hits:
            if args.json:
                print(json.dumps(hit.to_dict(), ensure_ascii=False))
            else:
                where = hit.path if hit.path is not None else hit.id
                caption = f"\t{hit.text}" if index.modality == "text" and hit.text else ""
                print(f"{where}\t{hit.score:.4f}{caption}")
    return 0
