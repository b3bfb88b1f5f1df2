"""Benchmark: the cost of retrieval with the tiny models: gallery encoding, two-stage re-ranking, dual vs fusion.

Three measurements, each against a reference from the same run (interleaved rounds, medians; shared machine):

1. **Gallery encoding** (images/s, texts/s): our `DualEncoderModel.encode_image` / `encode_text` (normalised
   embeddings, what a gallery stores) against transformers' `ChineseCLIPModel.get_image_features` /
   `get_text_features` + normalisation, same weights (ours converted from the reference; embeddings checked equal),
   batches of `--encode-batch` (the demo recipe's eval batch, 128), under `torch.inference_mode`.
2. **Two-stage re-ranking latency per query vs k**: a text query against a pre-encoded gallery of `--gallery`
   images. Reference: the dual encoder (encode the query, dot product with the gallery, top-k). Ours:
   `FusionEncoderForRetrieval.rank` (the same first stage, then the cross encoder re-scores the top `k`, with the
   gallery's token states precomputed). One query at a time, as an online search serves them.
3. **Dual vs fusion**: the same with `k = gallery size`, i.e. the fusion cross encoder scores every gallery item
   (a single-encoder system), against the dual encoder. BagFormer reports about 20x between the two kinds of system
   on its models; this is the ratio for ours.

Top-k search over large galleries is measured by `benchmarks/bench_search.py` (chunked top-k vs the full score
matrix); its latest results (`benchmarks/results/search.json`), when present, are copied into this report.

    python benchmarks/bench_retrieval.py
    python benchmarks/bench_retrieval.py --smoke
    python benchmarks/bench_retrieval.py --device cuda --dtype bf16 --gallery 10000 --ks 16,128,256
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # run as a file: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


__all__ = ["main"]

SEARCH_RESULTS = common.RESULTS_DIR / "search.json"


def _prepare(model, settings: dict):
    model.to(settings["device"]).eval()
    common.set_attention(model, settings["attn_implementation"])
    if settings["compile"]:
        common.compile_towers(model)
    return model


def measure_encoding(args, settings: dict) -> dict[str, Any]:
    """images/s and texts/s of our gallery encoding vs the reference's, same weights, interleaved."""
    import torch
    import torch.nn.functional as F

    from benchmarks.train_models import build_models, make_batch

    reference, ours = build_models("tiny", args.seed)
    batch = make_batch("tiny", args.encode_batch, 32, "cpu", args.seed)
    with torch.no_grad():
        expected = F.normalize(reference.eval().get_image_features(pixel_values=batch["pixel_values"]).pooler_output)
        actual = ours.eval().encode_image(batch["pixel_values"]).embeds
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    reference, ours = _prepare(reference, settings), _prepare(ours, settings)
    batch = {key: value.to(settings["device"]) for key, value in batch.items()}
    text = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    pixels = batch["pixel_values"]
    count = float(args.encode_batch * args.encode_batches)

    def run(fn):
        def measured() -> float:
            with torch.inference_mode(), common.autocast(settings["device"], settings["dtype"]):
                for _ in range(args.encode_batches):
                    fn()
            return count

        return measured

    variants = {
        "reference_images": run(lambda: F.normalize(reference.get_image_features(pixel_values=pixels).pooler_output)),
        "ours_images": run(lambda: ours.encode_image(pixels).embeds),
        "reference_texts": run(lambda: F.normalize(reference.get_text_features(**text).pooler_output)),
        "ours_texts": run(lambda: ours.encode_text(**text).embeds),
    }
    for fn in variants.values():  # warm-up
        fn()
    images = common.interleaved_rates(
        {k: v for k, v in variants.items() if k.endswith("images")},
        args.rounds,
        settings["device"],
        "reference_images",
    )
    texts = common.interleaved_rates(
        {k: v for k, v in variants.items() if k.endswith("texts")}, args.rounds, settings["device"], "reference_texts"
    )
    return {**images, **texts}


def build_retrieval_models(args, settings: dict):
    """(dual, fusion): our tiny dual encoder and the tiny ALBEF-style fusion retrieval model (same tower sizes)."""
    import torch

    from hf_vlp.models import DualEncoderConfig, DualEncoderModel
    from hf_vlp.models.configuration_fusion_encoder import FusionEncoderConfig
    from hf_vlp.models.modeling_fusion_encoder import FusionEncoderForRetrieval

    torch.manual_seed(args.seed)
    dual = _prepare(DualEncoderModel(DualEncoderConfig.from_preset("tiny")), settings)
    torch.manual_seed(args.seed)
    fusion = _prepare(FusionEncoderForRetrieval(FusionEncoderConfig.from_preset("tiny-fusion")), settings)
    return dual, fusion


def measure_latency(args, settings: dict) -> dict[str, Any]:
    """Per-query latency of dual-encoder search and of fusion two-stage ranking, for every k, interleaved."""
    import torch

    from benchmarks.train_models import make_batch
    from hf_vlp.models.modeling_fusion_encoder import FusionRetrievalEmbeddings

    device, dtype = settings["device"], settings["dtype"]
    dual, fusion = build_retrieval_models(args, settings)
    gallery_pixels = make_batch("tiny", args.gallery, 32, "cpu", args.seed)["pixel_values"]
    queries = make_batch("tiny", args.queries, 32, device, args.seed + 1)
    with torch.inference_mode(), common.autocast(device, dtype):
        chunks = [
            gallery_pixels[i : i + args.encode_batch].to(device) for i in range(0, args.gallery, args.encode_batch)
        ]
        dual_gallery = torch.cat([dual.encode_image(chunk).embeds for chunk in chunks])
        fusion_gallery = FusionRetrievalEmbeddings.cat([fusion.encode_image(chunk) for chunk in chunks])

    def query_inputs(index: int) -> dict:
        return {key: queries[key][index : index + 1] for key in ("input_ids", "attention_mask", "token_type_ids")}

    def dual_search(k: int):
        def run() -> float:
            with torch.inference_mode(), common.autocast(device, dtype):
                for index in range(args.queries):
                    query = dual.encode_text(**query_inputs(index)).embeds
                    torch.topk(query @ dual_gallery.t(), k, dim=1)
            return float(args.queries)

        return run

    def fusion_rank(k: int):
        def run() -> float:
            with torch.inference_mode(), common.autocast(device, dtype):
                for index in range(args.queries):
                    query = fusion.encode_text(**query_inputs(index))
                    fusion.rank(query, fusion_gallery, query_modality="text", k=k, batch_size=args.rerank_batch)
            return float(args.queries)

        return run

    rows = []
    for k in [*args.ks, args.gallery]:
        dual_search(k)(), fusion_rank(k)()  # warm-up
        summary = common.interleaved_rates(
            {"dual": dual_search(k), "fusion": fusion_rank(k)}, args.rounds, device, reference="dual"
        )
        rows.append(
            {
                "k": k,
                "scores_all_gallery": k == args.gallery,
                "dual_ms_per_query": 1000 / summary["dual"]["median"],
                "fusion_ms_per_query": 1000 / summary["fusion"]["median"],
                # rates are queries/s: fusion/dual rate is dual/fusion latency, so invert for "times slower"
                "ratio_fusion_over_dual_latency": 1 / summary["fusion"]["ratio_to_reference"],
                "cpu_ratio_fusion_over_dual_latency": 1 / summary["fusion"]["cpu_ratio_to_reference"],
                "dual_queries_per_s": summary["dual"]["rates"],
                "fusion_queries_per_s": summary["fusion"]["rates"],
            }
        )
        print(
            f"  k={k}: dual {rows[-1]['dual_ms_per_query']:.2f} ms/query, fusion "
            f"{rows[-1]['fusion_ms_per_query']:.2f} ms/query",
            flush=True,
        )
    return {"rows": rows}


def search_results() -> dict[str, Any] | None:
    """The latest full `bench_search.py` run, if one was saved."""
    if not SEARCH_RESULTS.exists():
        return None
    return json.loads(SEARCH_RESULTS.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = common.benchmark_parser(__doc__)
    parser.add_argument("--encode-batch", type=int, default=128, help="batch of gallery encoding (demo eval batch)")
    parser.add_argument("--encode-batches", type=int, default=8, help="batches per timed encoding round")
    parser.add_argument("--gallery", type=int, default=1000, help="gallery images of the latency measurements")
    parser.add_argument("--queries", type=int, default=8, help="text queries per timed latency round")
    parser.add_argument(
        "--ks", default="1,16,128", help="comma-separated re-ranking depths (the gallery size is added)"
    )
    parser.add_argument("--rerank-batch", type=int, default=128, help="pairs per cross-encoder call")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved timing rounds")
    common.add_run_arguments(parser, "seconds-long CI run: gallery 64, k 1,8", "retrieval")
    common.add_device_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.encode_batch, args.encode_batches, args.gallery, args.queries = 16, 1, 64, 2
        args.ks, args.rounds = "1,8", 2
    args.ks = [int(k) for k in args.ks.split(",") if k.strip() and int(k) < args.gallery]
    args.output = common.output_path(args, "retrieval")
    settings = common.device_settings(args)
    print(
        f"tiny models, device={settings['device']} dtype={settings['dtype']} compile={settings['compile']} "
        f"encode_batch={args.encode_batch} gallery={args.gallery} queries/round={args.queries} rounds={args.rounds}"
    )
    on_cpu = settings["device"] == "cpu"
    with common.torch_threads(settings["threads"]):
        encoding = measure_encoding(args, settings)
        latency = measure_latency(args, settings)

    common.print_table(
        "Gallery encoding (tiny): ChineseCLIPModel get_*_features + normalise (reference) vs encode_* (ours)",
        ["items", "reference /s", "ours /s", "ours/ref", "ours/ref CPU-s"],
        [
            [
                kind,
                f"{encoding[f'reference_{kind}']['median']:.0f}",
                f"{encoding[f'ours_{kind}']['median']:.0f}",
                common.fmt_ratio(encoding[f"ours_{kind}"]["ratio_to_reference"]),
                common.fmt_ratio(encoding[f"ours_{kind}"]["cpu_ratio_to_reference"] if on_cpu else None),
            ]
            for kind in ("images", "texts")
        ],
    )
    common.print_table(
        f"Latency per text query, gallery of {args.gallery} images: dual-encoder search (reference) vs fusion "
        "two-stage ranking (ours); k = gallery size is the cross encoder scoring every item",
        ["k", "dual ms", "fusion ms", "fusion/dual", "fusion/dual CPU-s"],
        [
            [
                f"{row['k']}{' (all)' if row['scores_all_gallery'] else ''}",
                f"{row['dual_ms_per_query']:.2f}",
                f"{row['fusion_ms_per_query']:.2f}",
                common.fmt_ratio(row["ratio_fusion_over_dual_latency"]),
                common.fmt_ratio(row["cpu_ratio_fusion_over_dual_latency"] if on_cpu else None),
            ]
            for row in latency["rows"]
        ],
    )
    search = search_results()
    if search is not None:
        common.print_table(
            f"Top-k search (from {SEARCH_RESULTS.relative_to(common.RESULTS_DIR.parent.parent)}, {search.get('date')}): "
            "full matrix + topk (reference) vs chunked_topk (ours)",
            ["gallery", "ref s", "ours s", "ref/ours time", "ref extra mem", "ours extra mem"],
            [
                [
                    row["gallery_size"],
                    f"{row['reference_time_s']:.3f}" if "reference_time_s" in row else "skipped",
                    f"{row['ours_time_s']:.3f}",
                    common.fmt_ratio(row.get("ratio_reference_over_ours")),
                    common.fmt_bytes(row.get("reference_peak_extra_bytes")),
                    common.fmt_bytes(row.get("ours_peak_extra_bytes")),
                ]
                for row in search["results"]
            ],
        )
    report = {
        **common.report_head(
            "retrieval cost: gallery encoding, two-stage re-ranking latency vs k, dual vs fusion", settings["device"]
        ),
        "config": {
            "encode_batch": args.encode_batch,
            "encode_batches": args.encode_batches,
            "gallery": args.gallery,
            "queries": args.queries,
            "ks": args.ks,
            "rerank_batch": args.rerank_batch,
            "rounds": args.rounds,
            "smoke": args.smoke,
            **settings,
        },
        "encoding": encoding,
        "latency": latency["rows"],
        "search": search,
    }
    common.write_report(args.output, report)
    return report


if __name__ == "__main__":
    main()
