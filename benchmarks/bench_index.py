"""Benchmark: faiss indexes (`hf_vlp.index.make_faiss_index`) vs the exact in-memory `hf_vlp.retrieval.chunked_topk`.

A synthetic gallery of unit vectors shaped like real embeddings (clustered: each cluster spread along its own
low-dimensional subspace, not uniform noise) and `--queries` queries from the same distribution. For every index type,
in the same run: build time (training included), index memory (bytes faiss holds, per vector too), p50 / p99 latency
per query batch of `--query-batch`, recall@10 against the exact answer, and the same for VLPIndex's refinement of
approximate candidates with the stored float32 embeddings (`refine`, what `VLPIndex.search` does by default). The
exact answer is `chunked_topk`'s, whose latency is the reference of the ratios. A "10M on paper" table gives the
memory each type would take for 10M vectors from the measured bytes per vector.

    python benchmarks/bench_index.py                         # 100k x 512, 1,000 queries
    python benchmarks/bench_index.py --sizes 100000 1000000  # the scaling row (1M: long on 2 shared cores)
    python benchmarks/bench_index.py --smoke                 # seconds (CI)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def clustered(num: int, dim: int, clusters: int, seed: int, latent: int = 32, block: int = 50_000):
    """Unit vectors around `clusters` random centres, each cluster spread along its own `latent`-dim subspace."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((clusters, dim)).astype(np.float32)
    bases = np.random.default_rng(4321).standard_normal((clusters, latent, dim)).astype(np.float32) / np.sqrt(latent)
    out = np.empty((num, dim), dtype=np.float32)
    for start in range(0, num, block):
        n = min(block, num - start)
        cluster = rng.integers(0, clusters, n)
        latent_coords = rng.standard_normal((n, latent)).astype(np.float32)
        data = centres[cluster] + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
        for c in np.unique(cluster):  # per cluster: a [rows, latent] @ [latent, dim] product, no [n, latent, dim]
            rows = np.nonzero(cluster == c)[0]
            data[rows] += 0.6 * latent_coords[rows] @ bases[c]
        out[start : start + n] = data / np.linalg.norm(data, axis=1, keepdims=True)
    return out


def _latencies(search, queries, batch: int) -> tuple[list[float], Any]:
    import numpy as np

    times, results = [], []
    for start in range(0, len(queries), batch):
        t0 = time.perf_counter()
        results.append(search(queries[start : start + batch]))
        times.append(time.perf_counter() - t0)
    return times, np.concatenate(results)


def _recall(truth, found) -> float:
    import numpy as np

    return float(np.mean([len(set(t.tolist()) & set(f.tolist())) / len(t) for t, f in zip(truth, found)]))


def run_size(num: int, args: argparse.Namespace) -> dict[str, Any]:
    import faiss
    import numpy as np
    import torch

    from hf_vlp.index import make_faiss_index
    from hf_vlp.retrieval import chunked_topk

    t0 = time.perf_counter()
    gallery = clustered(num, args.dim, args.clusters, seed=0)
    queries = clustered(args.queries, args.dim, args.clusters, seed=1)
    print(f"\n[{num:,} x {args.dim}] data generated in {time.perf_counter() - t0:.1f}s", flush=True)
    k = args.k
    gallery_t, queries_t = torch.from_numpy(gallery), torch.from_numpy(queries)
    exact_times, truth = _latencies(
        lambda q: chunked_topk(torch.from_numpy(q), gallery_t, k)[1].numpy(), queries, args.query_batch
    )
    del queries_t
    rows: dict[str, Any] = {
        "chunked_topk": {
            "build_seconds": 0.0,
            "memory_bytes": gallery.nbytes,
            "bytes_per_vector": gallery.nbytes / num,
            "p50_ms": 1000 * float(np.percentile(exact_times, 50)),
            "p99_ms": 1000 * float(np.percentile(exact_times, 99)),
            "recall@10": 1.0,
        }
    }
    for kind in args.index_types:
        options: dict[str, Any] = {}
        if kind == "ivfpq":
            options = {"nlist": args.nlist, "pq_m": args.pq_m, "pq_bits": args.pq_bits, "train_size": args.train_size}
            options = {key: value for key, value in options.items() if value is not None}
        t0 = time.perf_counter()
        index, params, _ = make_faiss_index(gallery, kind, **options)
        build = time.perf_counter() - t0
        memory = int(faiss.serialize_index(index).nbytes)
        times, found = _latencies(lambda q, index=index: index.search(q, k)[1], queries, args.query_batch)
        row = {
            "factory": params["factory"],
            "params": params,
            "build_seconds": build,
            "memory_bytes": memory,
            "bytes_per_vector": memory / num,
            "p50_ms": 1000 * float(np.percentile(times, 50)),
            "p99_ms": 1000 * float(np.percentile(times, 99)),
            "recall@10": _recall(truth, found),
        }
        if kind != "flat":

            def refined(q, index=index):
                _, candidates = index.search(q, args.refine)
                exact = np.einsum("qd,qcd->qc", q, gallery[candidates])
                order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
                return np.take_along_axis(candidates, order, axis=1)

            ref_times, ref_found = _latencies(refined, queries, args.query_batch)
            row["refined"] = {
                "candidates": args.refine,
                "p50_ms": 1000 * float(np.percentile(ref_times, 50)),
                "p99_ms": 1000 * float(np.percentile(ref_times, 99)),
                "recall@10": _recall(truth, ref_found),
            }
        else:
            row["equal_to_chunked_topk"] = bool((found == truth).mean() > 0.999)
        rows[kind] = row
        print(f"  {kind}: built in {build:.1f}s, recall@10 {row['recall@10']:.3f}", flush=True)
        del index
    exact_p50 = rows["chunked_topk"]["p50_ms"]
    table = []
    for name, row in rows.items():
        speedup = exact_p50 / row["p50_ms"]
        table.append(
            [
                row.get("factory", name),
                f"{row['build_seconds']:.1f}",
                common.fmt_bytes(row["memory_bytes"]),
                f"{row['bytes_per_vector']:.0f}",
                f"{row['p50_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                common.fmt_ratio(speedup),
                f"{row['recall@10']:.3f}",
            ]
        )
        if "refined" in row:
            refined_row = row["refined"]
            table.append(
                [
                    f"  + refine {refined_row['candidates']}",
                    "",
                    "(+ embeddings on disk)",
                    "",
                    f"{refined_row['p50_ms']:.2f}",
                    f"{refined_row['p99_ms']:.2f}",
                    common.fmt_ratio(exact_p50 / refined_row["p50_ms"]),
                    f"{refined_row['recall@10']:.3f}",
                ]
            )
    common.print_table(
        f"{num:,} x {args.dim}, {args.queries} queries in batches of {args.query_batch}, top-{k}, "
        f"{args.threads} thread(s); ratio = chunked_topk p50 / this p50",
        ["index", "build s", "memory", "B/vector", "p50 ms", "p99 ms", "vs chunked_topk", "recall@10"],
        table,
    )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000], help="e.g. 100000 1000000 (1M: an hour+ here)"
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--query-batch", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--refine", type=int, default=40, help="candidates re-scored exactly for approximate indexes")
    parser.add_argument("--index-types", nargs="+", default=["flat", "ivfpq", "hnsw"])
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--pq-m", type=int, default=None)
    parser.add_argument("--pq-bits", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="faiss (OpenMP) and torch threads")
    parser.add_argument("--smoke", action="store_true", help="5k x 64, 50 queries: a CI check that it runs")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.dim, args.queries, args.clusters = [5000], 64, 50, 20
        args.nlist, args.pq_bits, args.train_size = 32, 4, 2000

    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "date": common.BENCH_DATE,
        "machine": common.machine_info("cpu"),
        "args": vars(args),
        "sizes": {},
    }
    for num in args.sizes:
        report["sizes"][str(num)] = run_size(num, args)
    paper = []
    largest = report["sizes"][str(max(args.sizes))]
    for name, row in largest.items():
        per_vector = row["bytes_per_vector"]
        paper.append([row.get("factory", name), f"{per_vector:.0f}", common.fmt_bytes(per_vector * 10_000_000)])
    common.print_table("10M vectors on paper (measured bytes per vector x 10M)", ["index", "B/vector", "10M"], paper)
    report["paper_10M_bytes"] = {row[0]: float(row[1]) * 10_000_000 for row in paper}
    common.write_report(
        args.output or common.RESULTS_DIR / ("index_smoke.json" if args.smoke else "index.json"), report
    )
    return report


if __name__ == "__main__":
    main()
