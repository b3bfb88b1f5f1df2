"""Benchmark: contrastive batch scaling with and without gradient caching (`trainers.grad_cache`).

For each global batch size, a dual-encoder train step (contrastive loss over the whole batch, AdamW update) is run

* **reference**: plain, the whole batch in one forward / backward (`model(..., return_loss=True).loss.backward()`);
* **ours**: `trainers.grad_cache.grad_cache_backward` with sub-batches of `--chunk-size`, which must give the same
  gradients (checked once, on the smallest batch, before timing) with the activation memory of one sub-batch.

and reports peak memory (each (batch, variant) in its own subprocess, above the post-setup baseline, as RSS or
CUDA allocator peak and as live-tensor peak of a steady-state step; see `benchmarks/memory.py`) and pairs/s (both
variants in one process, interleaved ABBA, medians). A variant that runs out of memory is reported as OOM and not
timed. With caching, the
memory must stay flat in the batch apart from the terms that are inherently O(batch) (embeddings) and O(batch^2)
(the similarity matrix of the loss); the table shows both and the analytic size of one B x B fp32 matrix.

    python benchmarks/bench_grad_cache.py                    # CPU, tiny preset, batches 64 ... 2048, chunk 64
    python benchmarks/bench_grad_cache.py --smoke
    python benchmarks/bench_grad_cache.py --size base --device cuda --dtype bf16 --chunk-size 256 \\
        --batches 256,1024,4096,16384,32768
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # run as a file: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, memory  # noqa: E402
from benchmarks.train_models import make_batch as train_step_batch  # noqa: E402
from benchmarks.train_models import train_step  # noqa: E402


__all__ = ["grad_cache_step", "main"]


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"preset": "tiny", "seq_len": 32, "batches": "64,128,256,512,1024,2048", "chunk": 64},
    "base": {
        "preset": "chinese-clip-vit-base-patch16",
        "seq_len": 52,
        "batches": "256,1024,4096,8192,16384,32768",
        "chunk": 256,
    },
}
VARIANTS = ("reference", "ours")


def build_model(size: str, seed: int, settings: dict):
    """Our dual encoder at the preset's sizes, prepared (device, attention, compile), in train mode."""
    import torch

    from hf_vlp.models import DualEncoderConfig, DualEncoderModel

    torch.manual_seed(seed)
    model = DualEncoderModel(DualEncoderConfig.from_preset(SIZES[size]["preset"])).to(settings["device"])
    common.set_attention(model, settings["attn_implementation"])
    if settings["compile"]:
        common.compile_towers(model)
    return model.train()


def make_batch(size: str, batch: int, device: str, seed: int = 0) -> dict:
    """Random padded captions and pixels (see `train_models.make_batch`)."""
    return train_step_batch(size, batch, SIZES[size]["seq_len"], device, seed)


def grad_cache_step(model, optimizer, batch: dict, settings: dict, chunk_size: int) -> None:
    """Ours: gradient caching in sub-batches of `chunk_size`, then the same optimizer step."""
    from trainers.grad_cache import grad_cache_backward

    grad_cache_backward(
        model,
        batch,
        chunk_size,
        backward=lambda loss: loss.backward(),
        autocast=lambda: common.autocast(settings["device"], settings["dtype"]),
    )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_for(variant: str, chunk_size: int):
    if variant == "reference":  # the whole batch in one graph: `train_models.train_step`
        return train_step
    return lambda model, optimizer, batch, settings: grad_cache_step(model, optimizer, batch, settings, chunk_size)


def check_same_gradients(size: str, batch_size: int, chunk_size: int, seed: int) -> float:
    """Gradients of the plain and the cached step agree (fp32, CPU); returns the largest absolute difference."""
    import torch

    settings = {"device": "cpu", "dtype": "fp32", "compile": False, "attn_implementation": "sdpa"}
    grads = []
    for variant in VARIANTS:
        model = build_model(size, seed, settings)
        batch = make_batch(size, batch_size, "cpu", seed)
        if variant == "reference":
            model(**batch, return_loss=True).loss.backward()
        else:
            from trainers.grad_cache import grad_cache_backward

            grad_cache_backward(model, batch, chunk_size, backward=lambda loss: loss.backward())
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys(), "gradient caching left parameters without gradient"
    worst = 0.0
    for name, expected in grads[0].items():
        torch.testing.assert_close(grads[1][name], expected, rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        worst = max(worst, float((grads[1][name] - expected).abs().max()))
    return worst


# ---------------------------------------------------------------------------------------------------- workers


def _memory_worker(spec: dict) -> dict:
    """Peak memory of one step of `spec["variant"]` at `spec["batch"]`, in this (fresh) process."""
    import gc

    import torch

    settings = spec["settings"]
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    model = build_model(spec["size"], spec["seed"], settings)
    optimizer = common.build_optimizer(model, settings["fused_adamw"])
    batch = make_batch(spec["size"], spec["batch"], settings["device"], spec["seed"])
    step = step_for(spec["variant"], spec["chunk_size"])
    # Run every code path once before the baseline, so that kernels' code pages (resident, hence in the RSS) and
    # compiled graphs are not counted: the same step with a throw-away optimizer whose state is then freed. The
    # full batch, not a smaller one, so that nothing is compiled for new shapes inside the measurement.
    warm_optimizer = common.build_optimizer(model, settings["fused_adamw"])
    try:
        step(model, warm_optimizer, batch, settings)
    except torch.OutOfMemoryError as error:
        return {"peak_bytes": None, "tensor_peak_bytes": None, "oom": str(error).splitlines()[0]}
    del warm_optimizer
    model.zero_grad(set_to_none=True)
    gc.collect()
    meter = memory.PeakMemory(settings["device"])
    meter.start()
    try:
        step(model, optimizer, batch, settings)
    except torch.OutOfMemoryError as error:
        return {"peak_bytes": None, "tensor_peak_bytes": None, "oom": str(error).splitlines()[0]}
    peak, file_growth = meter.peak_bytes(), meter.file_backed_growth()
    with memory.TensorPeak() as tensors:  # one more, steady-state step: AdamW state exists, gradients were freed
        step(model, optimizer, batch, settings)
    return {
        "peak_bytes": peak,
        "tensor_peak_bytes": tensors.peak,
        "oom": None,
        "method": meter.method,
        "file_backed_growth_bytes": file_growth,
    }


# ---------------------------------------------------------------------------------------------------- driver


def measure_rates(args, settings: dict, batch_size: int, variants: list[str]) -> dict[str, Any]:
    """pairs/s of `variants` at one batch size, interleaved, one model each (same initial weights)."""
    models = {variant: build_model(args.size, args.seed, settings) for variant in variants}
    optimizers = {variant: common.build_optimizer(models[variant], settings["fused_adamw"]) for variant in variants}
    batch = make_batch(args.size, batch_size, settings["device"], args.seed)
    steps = {variant: step_for(variant, args.chunk_size) for variant in variants}
    for variant in variants:
        for _ in range(args.warmup):
            steps[variant](models[variant], optimizers[variant], batch, settings)

    def runner(variant: str):
        def run() -> float:
            steps[variant](models[variant], optimizers[variant], batch, settings)
            return float(batch_size)

        return run

    reference = "reference" if "reference" in variants else None
    return common.interleaved_rates(
        {v: runner(v) for v in variants}, args.rounds, settings["device"], reference=reference
    )


def main(argv: list[str] | None = None) -> dict:
    parser = common.benchmark_parser(__doc__)
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="tower sizes (from the presets)")
    parser.add_argument("--batches", default=None, help="comma-separated global batch sizes")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="grad-cache sub-batch (default: 64 tiny, 256 base)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed steps per variant and batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant and batch size")
    common.add_run_arguments(parser, "seconds-long CI run: batches 16,32, chunk 8", "grad_cache_<size>", worker=True)
    common.add_device_arguments(parser)
    args = parser.parse_args(argv)
    if common.serve_worker(args, _memory_worker):
        return {}
    if args.smoke:
        args.batches, args.chunk_size, args.rounds, args.warmup = "16,32", 8, 1, 0
    batches = [int(b) for b in (args.batches or SIZES[args.size]["batches"]).split(",") if b.strip()]
    args.chunk_size = args.chunk_size or SIZES[args.size]["chunk"]
    args.output = common.output_path(args, f"grad_cache_{args.size}")
    settings = common.device_settings(args)
    print(
        f"size={args.size} chunk_size={args.chunk_size} device={settings['device']} dtype={settings['dtype']} "
        f"compile={settings['compile']} fused_adamw={settings['fused_adamw']} rounds={args.rounds}"
    )
    with common.torch_threads(settings["threads"]):
        max_grad_diff = check_same_gradients(args.size, min(batches), args.chunk_size, args.seed)
        print(f"gradients equal (max abs diff {max_grad_diff:.2e})")
        results = []
        for batch_size in batches:
            peaks = {}
            for variant in VARIANTS:
                spec = {
                    "variant": variant,
                    "size": args.size,
                    "batch": batch_size,
                    "chunk_size": args.chunk_size,
                    "seed": args.seed,
                    "settings": settings,
                }
                peaks[variant] = memory.run_worker(Path(__file__).resolve(), spec, args.timeout)
            # A variant that ran out of memory alone is not timed (it would run out again in this process).
            fits = [variant for variant in VARIANTS if peaks[variant]["oom"] is None]
            rates = measure_rates(args, settings, batch_size, fits) if fits else {}
            ref_peak, ours_peak = peaks["reference"]["peak_bytes"], peaks["ours"]["peak_bytes"]
            ref_tensors, ours_tensors = peaks["reference"]["tensor_peak_bytes"], peaks["ours"]["tensor_peak_bytes"]
            row = {
                "batch": batch_size,
                "reference_pairs_per_s": rates.get("reference", {}).get("median"),
                "ours_pairs_per_s": rates.get("ours", {}).get("median"),
                "ratio_pairs_per_s": rates.get("ours", {}).get("ratio_to_reference"),
                "ratio_pairs_per_cpu_s": rates.get("ours", {}).get("cpu_ratio_to_reference"),
                "reference_peak_bytes": ref_peak,
                "ours_peak_bytes": ours_peak,
                "ratio_peak_memory": (ours_peak / ref_peak) if ref_peak and ours_peak else None,
                "reference_tensor_peak_bytes": ref_tensors,
                "ours_tensor_peak_bytes": ours_tensors,
                "ratio_tensor_peak": (ours_tensors / ref_tensors) if ref_tensors and ours_tensors else None,
                "reference_oom": peaks["reference"]["oom"],
                "ours_oom": peaks["ours"]["oom"],
                "similarity_matrix_bytes": batch_size * batch_size * 4,
                "reference_rates": rates.get("reference", {}).get("rates"),
                "ours_rates": rates.get("ours", {}).get("rates"),
                "memory_method": peaks["ours"].get("method"),
                "file_backed_growth_bytes": {v: peaks[v].get("file_backed_growth_bytes") for v in VARIANTS},
            }
            results.append(row)
            print(
                f"  batch {batch_size}: ref {fmt_rate(row['reference_pairs_per_s'])} pairs/s {common.fmt_bytes(ref_peak)}, "
                f"ours {fmt_rate(row['ours_pairs_per_s'])} pairs/s {common.fmt_bytes(ours_peak)}",
                flush=True,
            )
    smallest = results[0]["ours_peak_bytes"] or 1
    smallest_tensors = results[0]["ours_tensor_peak_bytes"] or 1
    common.print_table(
        f"Contrastive batch scaling: plain step (reference) vs gradient caching, chunk {args.chunk_size} (ours)",
        [
            "batch",
            "ref pairs/s",
            "ours pairs/s",
            "ours/ref",
            "ours/ref CPU-s",
            "ref peak",
            "ours peak",
            "ours/ref mem",
            "ours vs smallest",
            "ours tensor peak",
            "vs smallest",
            "BxB fp32",
        ],
        [
            [
                row["batch"],
                fmt_rate(row["reference_pairs_per_s"]),
                fmt_rate(row["ours_pairs_per_s"]),
                common.fmt_ratio(row["ratio_pairs_per_s"]),
                common.fmt_ratio(row["ratio_pairs_per_cpu_s"] if settings["device"] == "cpu" else None),
                "OOM" if row["reference_oom"] else common.fmt_bytes(row["reference_peak_bytes"]),
                "OOM" if row["ours_oom"] else common.fmt_bytes(row["ours_peak_bytes"]),
                common.fmt_ratio(row["ratio_peak_memory"]),
                common.fmt_ratio((row["ours_peak_bytes"] or 0) / smallest),
                common.fmt_bytes(row["ours_tensor_peak_bytes"]),
                common.fmt_ratio((row["ours_tensor_peak_bytes"] or 0) / smallest_tensors),
                common.fmt_bytes(row["similarity_matrix_bytes"]),
            ]
            for row in results
        ],
    )
    report = {
        **common.report_head(
            "contrastive batch scaling: plain step vs trainers.grad_cache.grad_cache_backward", settings["device"]
        ),
        "config": {
            "size": args.size,
            "preset": SIZES[args.size]["preset"],
            "seq_len": SIZES[args.size]["seq_len"],
            "batches": batches,
            "chunk_size": args.chunk_size,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "smoke": args.smoke,
            **settings,
        },
        "max_grad_diff": max_grad_diff,
        "results": results,
    }
    common.write_report(args.output, report)
    return report


if __name__ == "__main__":
    main()
