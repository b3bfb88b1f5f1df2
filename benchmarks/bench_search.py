"""Benchmark: chunked top-k search (``hf_vlp.retrieval.chunked_topk``) vs the naive full score matrix + ``topk``.

For each gallery size it measures, in the same run and on the same data:

* **ours**: ``chunked_topk(queries, gallery, k, chunk_size, query_chunk_size)``;
* **reference**: ``torch.topk(queries @ gallery.T, k, dim=1)`` (the ``[Q, N]`` matrix is materialised).

and prints wall and CPU time (best of ``--rounds`` x ``--repeats`` calls, the two methods alternating round by
round), the ratios, the peak *extra* memory of each (beyond the inputs) and whether the returned indices are equal.

Memory is measured per method in a fresh subprocess (`benchmarks.memory.run_worker`) that builds the inputs, runs
a small warm-up, then measures the peak *extra* memory of the timed calls with `benchmarks.memory.PeakMemory`
(peak RSS above the post-setup RSS on CPU, the CUDA allocator's peak on GPU). The analytic extra bytes (the score
buffer of each method) are reported next to it.

The reference is skipped (and reported as skipped) when its ``[Q, N]`` matrix would exceed
``--max-reference-bytes``.

    python benchmarks/bench_search.py                    # 10k / 100k / 1M x 512, 1000 queries, top-10
    python benchmarks/bench_search.py --smoke            # tiny CI-sized run (seconds)
    python benchmarks/bench_search.py --sizes 1000000 --chunk-size 16384
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


if __package__ in (None, ""):  # run as a file: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, memory  # noqa: E402


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


# ---------------------------------------------------------------------------------------------------- worker


def _make_data(num_gallery: int, num_queries: int, dim: int, dtype, device: str, seed: int):
    """Unit-norm gallery and queries that are noisy copies of random gallery items (a realistic search task).

    Built block by block in place, so building the inputs does not create a transient peak above their size.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    gallery = torch.empty(num_gallery, dim, dtype=torch.float32)
    block = 65536
    for start in range(0, num_gallery, block):
        part = gallery[start : start + block]
        part.normal_(generator=gen)
        part.div_(part.norm(dim=1, keepdim=True))
    targets = torch.randint(0, num_gallery, (num_queries,), generator=gen)
    queries = gallery[targets] + 0.5 * torch.randn(num_queries, dim, generator=gen) / dim**0.5
    queries = queries / queries.norm(dim=1, keepdim=True)
    gallery = gallery.to(device=device, dtype=dtype)
    queries = queries.to(device=device, dtype=dtype)
    return queries, gallery


def _worker(spec: dict) -> dict:
    import torch

    from hf_vlp.retrieval import chunked_topk

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    device = spec["device"]
    queries, gallery = _make_data(spec["size"], spec["queries"], spec["dim"], dtype, device, spec["seed"])
    k = spec["k"]

    def run(q, g):
        if spec["method"] == "ours":
            return chunked_topk(q, g, k, chunk_size=spec["chunk_size"], query_chunk_size=spec["query_chunk_size"])
        scores, indices = torch.topk(q @ g.T, min(k, g.shape[0]), dim=1)
        return scores, indices

    with torch.no_grad():
        run(queries[:16], gallery[: min(4096, gallery.shape[0])])  # warm-up: thread pool, kernels
        common.sync(device)
        meter = memory.PeakMemory(device)
        meter.start()
        times, cpu_times = [], []
        for _ in range(spec["repeats"]):
            common.sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            scores, indices = run(queries, gallery)
            common.sync(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            del scores
            if len(times) < spec["repeats"]:
                del indices
        peak = meter.peak_bytes()
        # scores of the returned indices, recomputed exactly the same way for both methods (fp-noise-free check)
        picked = torch.einsum("qd,qkd->qk", queries.double(), gallery[indices].double())
    return {
        "times_s": times,
        "cpu_times_s": cpu_times,
        "peak_extra_bytes": peak,
        "memory_method": meter.method,
        "indices": indices.cpu().tolist(),
        "picked_scores": picked.cpu().tolist(),
    }


# ---------------------------------------------------------------------------------------------------- driver


def _merge_runs(runs: list[dict]) -> dict:
    """Pool the timed calls of several subprocess runs of one method; memory = the largest peak seen."""
    return {
        "times_s": [t for r in runs for t in r["times_s"]],
        "cpu_times_s": [t for r in runs for t in r["cpu_times_s"]],
        "peak_extra_bytes": max(r["peak_extra_bytes"] for r in runs),
        "memory_method": runs[0]["memory_method"],
        "indices": runs[-1]["indices"],
        "picked_scores": runs[-1]["picked_scores"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = common.benchmark_parser(__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated gallery sizes")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=None, help="gallery rows per block (default: library)")
    parser.add_argument("--query-chunk-size", type=int, default=None, help="query rows per block (default: library)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPE_BYTES))
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per subprocess; the best is reported")
    parser.add_argument("--rounds", type=int, default=2, help="alternating ours/reference subprocesses per size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch default)")
    parser.add_argument("--max-reference-bytes", type=float, default=8 * 2**30, help="skip larger references")
    common.add_run_arguments(parser, "tiny CI-sized run: sizes 2000,5003, 64 queries, D=64", "search", worker=True)
    args = parser.parse_args(argv)
    if common.serve_worker(args, _worker):
        return {}

    import inspect

    from hf_vlp.retrieval import chunked_topk

    defaults = inspect.signature(chunked_topk).parameters
    chunk_size = args.chunk_size or defaults["chunk_size"].default
    query_chunk_size = args.query_chunk_size or defaults["query_chunk_size"].default
    if args.smoke:
        args.sizes, args.queries, args.dim, args.repeats, args.rounds = "2000,5003", 64, 64, 3, 1
        chunk_size = args.chunk_size or 1000
    args.output = common.output_path(args, "search")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    itemsize = DTYPE_BYTES[args.dtype]

    results = []
    header = (
        f"{'N':>9} {'ours s':>8} {'ref s':>8} {'ref/ours':>8} {'ours cpu':>8} {'ref cpu':>8} {'cpu r/o':>8} "
        f"{'ours extra mem':>15} {'ref extra mem':>14} "
        f"{'ours analytic':>14} {'ref analytic':>13} {'indices':>9}"
    )
    print(
        f"Q={args.queries} D={args.dim} k={args.k} dtype={args.dtype} device={args.device} "
        f"chunk_size={chunk_size} query_chunk_size={query_chunk_size} repeats={args.repeats} rounds={args.rounds}"
    )
    print(header)
    for size in sizes:
        spec = {
            "size": size,
            "queries": args.queries,
            "dim": args.dim,
            "k": args.k,
            "chunk_size": chunk_size,
            "query_chunk_size": query_chunk_size,
            "device": args.device,
            "dtype": args.dtype,
            "repeats": args.repeats,
            "threads": args.threads,
            "seed": args.seed,
        }
        ref_bytes = args.queries * size * itemsize
        run_reference = ref_bytes <= args.max_reference_bytes
        # Alternate the two methods round by round so that load changes on a shared machine hit both alike.
        runs: dict[str, list[dict]] = {"ours": [], "reference": []}
        for _ in range(args.rounds):
            runs["ours"].append(memory.run_worker(__file__, {**spec, "method": "ours"}, args.timeout))
            if run_reference:
                runs["reference"].append(memory.run_worker(__file__, {**spec, "method": "reference"}, args.timeout))
        ours = _merge_runs(runs["ours"])
        ours_analytic = min(query_chunk_size, args.queries) * min(chunk_size, size) * itemsize
        row = {
            "gallery_size": size,
            "ours_time_s": min(ours["times_s"]),
            "ours_cpu_time_s": min(ours["cpu_times_s"]),
            "ours_times_s": ours["times_s"],
            "ours_peak_extra_bytes": ours["peak_extra_bytes"],
            "ours_analytic_bytes": ours_analytic,
            "reference_analytic_bytes": ref_bytes,
            "memory_method": ours["memory_method"],
        }
        if not run_reference:
            row["reference_skipped"] = (
                f"[{args.queries}, {size}] score matrix = {common.fmt_bytes(ref_bytes)} > --max-reference-bytes "
                f"{common.fmt_bytes(args.max_reference_bytes)}"
            )
            print(f"  reference skipped for N={size}: {row['reference_skipped']}")
        else:
            ref = _merge_runs(runs["reference"])
            mismatched = sum(a != b for a, b in zip(ours["indices"], ref["indices"]))
            # a differing row is only acceptable as a tie / last-ulp swap: same recomputed scores
            score_diff = max(
                (abs(x - y) for a, b in zip(ours["picked_scores"], ref["picked_scores"]) for x, y in zip(a, b)),
                default=0.0,
            )
            row.update(
                reference_time_s=min(ref["times_s"]),
                reference_cpu_time_s=min(ref["cpu_times_s"]),
                reference_times_s=ref["times_s"],
                reference_peak_extra_bytes=ref["peak_extra_bytes"],
                ratio_reference_over_ours=min(ref["times_s"]) / min(ours["times_s"]),
                cpu_ratio_reference_over_ours=min(ref["cpu_times_s"]) / min(ours["cpu_times_s"]),
                indices_equal=mismatched == 0,
                mismatched_rows=mismatched,
                max_picked_score_diff=score_diff,
            )
        results.append(row)
        skipped = "reference_time_s" not in row
        ref_time = "skipped" if skipped else f"{row['reference_time_s']:.3f}"
        ratio = "-" if skipped else f"{row['ratio_reference_over_ours']:.2f}x"
        ref_cpu = "skipped" if skipped else f"{row['reference_cpu_time_s']:.2f}"
        cpu_ratio = "-" if skipped else f"{row['cpu_ratio_reference_over_ours']:.2f}x"
        check = "-" if skipped else ("equal" if row["indices_equal"] else f"{row['mismatched_rows']} rows")
        print(
            f"{size:>9} {row['ours_time_s']:>8.3f} {ref_time:>8} {ratio:>8} "
            f"{row['ours_cpu_time_s']:>8.2f} {ref_cpu:>8} {cpu_ratio:>8} "
            f"{common.fmt_bytes(row['ours_peak_extra_bytes']):>15} {common.fmt_bytes(row.get('reference_peak_extra_bytes')):>14} "
            f"{common.fmt_bytes(ours_analytic):>14} {common.fmt_bytes(ref_bytes):>13} {check:>9}",
            flush=True,
        )
    report = {
        "benchmark": "chunked_topk vs full matrix + topk",
        "date": common.BENCH_DATE,
        "machine": {**common.machine_info(args.device), "load_average_at_end": list(os.getloadavg())},
        "config": {
            "queries": args.queries,
            "dim": args.dim,
            "k": args.k,
            "dtype": args.dtype,
            "chunk_size": chunk_size,
            "query_chunk_size": query_chunk_size,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "worker_threads": args.threads or "torch default",
            "smoke": args.smoke,
            "max_reference_bytes": args.max_reference_bytes,
        },
        "results": results,
    }
    common.write_report(args.output, report)
    return report


if __name__ == "__main__":
    main()
