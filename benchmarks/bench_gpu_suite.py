"""Benchmark: the GPU suite — a ViT-B/16 + BERT-base train step, ours against transformers' `ChineseCLIPModel`.

One run, one GPU, under 8 minutes (`benchmarks/gpu_suite.sh`): bf16 autocast, SDPA attention, fused AdamW, at
224 px and 52 tokens (the `chinese-clip-vit-base-patch16` preset's towers), for these variants, each measured in
turn in this process:

| variant | model | `torch.compile` | FLIP patch dropout |
|---|---|---|---|
| `reference` / `reference+compile` | `ChineseCLIPModel` | off / on | - |
| `ours` / `ours+compile` | `DualEncoderModel` converted from the reference (same weights) | off / on | 0 |
| `ours+flip` / `ours+flip+compile` | the same weights with `vision_patch_dropout=0.5` | off / on | 0.5 |

Reported per variant: pairs/s (median of `--rounds` timed blocks of `--steps` steps, after `--warmup` steps that
include compilation), step time, MFU against `--peak-tflops` with the issue's nominal 132 GFLOP per pair (forward
and backward at that size; FLIP variants thus report an *effective* MFU: full-image work per second), the FLOPs per
pair counted by `FlopCounterMode` for the uncompiled variants, and peak memory above the post-setup baseline
(CUDA: `torch.cuda.max_memory_allocated`; CPU: the live-tensor peak of one eager step, `memory.TensorPeak`). Ratios
are against `reference` (uncompiled) and `reference+compile`. A variant that would overrun `--time-budget` is
skipped and listed as such, never estimated.

    benchmarks/gpu_suite.sh                            # on a GPU machine: the full suite
    python benchmarks/bench_gpu_suite.py --smoke       # CPU, tiny towers, a couple of steps, compile backend
                                                       # 'eager' (traced, no codegen): seconds, for CI
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # run as a file: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, memory  # noqa: E402
from benchmarks.train_models import SIZES, build_models, make_batch  # noqa: E402


__all__ = ["NOMINAL_GFLOP_PER_PAIR", "VARIANTS", "main"]

# Forward + backward FLOPs of one image-text pair at ViT-B/16 224 px + BERT-base 52 tokens (issue 10's figure).
NOMINAL_GFLOP_PER_PAIR = 132.0
VARIANTS = ("reference", "reference+compile", "ours", "ours+compile", "ours+flip", "ours+flip+compile")
FLIP_RATE = 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU-sized run: tiny towers, batch 4, 2 steps")
    parser.add_argument("--device", default="cuda", help="cuda[:N] (cpu for --smoke)")
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "fp16"), help="autocast dtype")
    parser.add_argument("--batch", type=int, default=256, help="pairs per step")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + str(VARIANTS))
    parser.add_argument(
        "--time-budget", type=float, default=420.0, help="seconds for all variants; later ones are skipped past it"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help=f"MFU denominator (CUDA: {common.DEFAULT_PEAK_TFLOPS})"
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the +compile variants (--smoke: 'eager', which traces but skips codegen)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU torch threads (default 1 on CPU)")
    parser.add_argument("--output", default=None, help="JSON report (default benchmarks/results/gpu_suite.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.batch, args.steps, args.rounds, args.warmup = "cpu", 4, 2, 1, 1
        args.compile_backend = "eager"  # inductor's CPU codegen takes minutes: too long for CI
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    return args


def build_variant(name: str, reference, ours):
    """A fresh copy of the model a variant trains (the reference and ours start from the same weights)."""
    if name.startswith("reference"):
        return copy.deepcopy(reference)
    if "flip" not in name:
        return copy.deepcopy(ours)
    from hf_vlp import DualEncoderModel

    config = copy.deepcopy(ours.config)
    config.vision_patch_dropout = FLIP_RATE
    flip = DualEncoderModel(config)
    flip.load_state_dict(ours.state_dict())
    return flip


def train_step(model, optimizer, batch: dict, device: str, dtype: str) -> None:
    with common.autocast(device, dtype):
        loss = model(**batch, return_loss=True).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(name: str, model, batch: dict, args: argparse.Namespace, nominal_flops_per_pair: float) -> dict[str, Any]:
    """Warm up, time `rounds` blocks of `steps` steps, and take the peak memory of the variant's steps."""
    import torch

    device = args.device
    model.to(device).train()
    common.set_attention(model, "sdpa")
    counted = None
    if "compile" not in name:
        small = {key: value[: min(4, args.batch)] for key, value in batch.items()}
        counted = common.count_flops(model, lambda m: m(**small, return_loss=True).loss.backward()) / len(
            small["input_ids"]
        )
        model.zero_grad(set_to_none=True)
    if "compile" in name:
        model.text_model.compile(backend=args.compile_backend)
        model.vision_model.compile(backend=args.compile_backend)
    optimizer = common.build_optimizer(model, fused=device.startswith("cuda"))
    cuda = device.startswith("cuda")
    if cuda:
        common.sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    for _ in range(args.warmup):
        train_step(model, optimizer, batch, device, args.dtype)
    common.sync(device)
    warmup_seconds = time.perf_counter() - started
    rates = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for _ in range(args.steps):
            train_step(model, optimizer, batch, device, args.dtype)
        common.sync(device)
        rates.append(args.steps * args.batch / (time.perf_counter() - started))
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - baseline
        peak_method = "torch.cuda.max_memory_allocated above the post-setup baseline"
    else:
        with memory.TensorPeak() as tensors:
            train_step(model, optimizer, batch, device, args.dtype)
        peak = tensors.peak
        peak_method = "live-tensor peak of one steady-state step (TensorPeak; blind inside compiled graphs)"
    pairs_per_s = statistics.median(rates)
    peak_tflops = args.peak_tflops if args.peak_tflops is not None else (common.DEFAULT_PEAK_TFLOPS if cuda else None)
    return {
        "pairs_per_s": pairs_per_s,
        "rates": rates,
        "step_seconds": args.batch / pairs_per_s,
        "warmup_seconds": warmup_seconds,
        "counted_flops_per_pair": counted,
        "effective_tflops": pairs_per_s * nominal_flops_per_pair / 1e12,
        "mfu": pairs_per_s * nominal_flops_per_pair / (peak_tflops * 1e12) if peak_tflops else None,
        "peak_bytes": int(peak),
        "peak_method": peak_method,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    size = "tiny" if args.smoke else "base"
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_gpu_suite: no CUDA device here; run with --smoke on CPU")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    threads = args.threads if args.threads is not None else (0 if cuda else 1)
    seq_len = 52 if size == "base" else SIZES[size]["seq_len"]
    suite_started = time.perf_counter()
    with common.torch_threads(threads):
        reference, ours = build_models(size, seed=0)
        batch = make_batch(size, args.batch, seq_len, args.device)
        if size == "base":
            nominal = NOMINAL_GFLOP_PER_PAIR * 1e9
        else:  # tiny towers: the counted FLOPs of our uncompiled step stand in for the nominal figure
            small = {key: value[:4].cpu() for key, value in batch.items()}
            nominal = common.count_flops(ours, lambda m: m(**small, return_loss=True).loss.backward()) / 4
            ours.zero_grad(set_to_none=True)
        results: dict[str, Any] = {}
        for name in args.variants.split(","):
            spent = time.perf_counter() - suite_started
            if spent > args.time_budget:
                results[name] = {"skipped": f"time budget of {args.time_budget:.0f}s spent ({spent:.0f}s)"}
                continue
            model = build_variant(name, reference, ours)
            results[name] = measure(name, model, batch, args, nominal)
            del model
            if cuda:
                torch.cuda.empty_cache()
    measured = {name: entry for name, entry in results.items() if "pairs_per_s" in entry}
    for name, entry in measured.items():
        base = measured.get("reference+compile" if "compile" in name else "reference")
        if base is not None:
            entry["ratio_pairs_per_s_vs_reference"] = entry["pairs_per_s"] / base["pairs_per_s"]
            entry["ratio_peak_memory_vs_reference"] = entry["peak_bytes"] / max(base["peak_bytes"], 1)
    report = {
        **common.report_head("gpu_suite", args.device),
        "config": {
            "smoke": args.smoke,
            "size": size,
            "towers": "ViT-B/16 + BERT-base (chinese-clip-vit-base-patch16 preset)" if size == "base" else "tiny",
            "batch": args.batch,
            "seq_len": seq_len,
            "device": args.device,
            "dtype": args.dtype,
            "attention": "sdpa",
            "compile_backend": args.compile_backend,
            "fused_adamw": cuda,
            "steps": args.steps,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "flip_rate": FLIP_RATE,
            "nominal_flops_per_pair": nominal,
            "seconds_total": time.perf_counter() - suite_started,
        },
        "results": results,
    }
    rows = []
    for name, entry in results.items():
        if "skipped" in entry:
            rows.append([name, "skipped", "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                f"{entry['pairs_per_s']:.1f}",
                f"{entry['step_seconds'] * 1000:.1f}",
                "-" if entry["mfu"] is None else f"{entry['mfu'] * 100:.1f}%",
                common.fmt_bytes(entry["peak_bytes"]),
                common.fmt_ratio(entry.get("ratio_pairs_per_s_vs_reference")),
                common.fmt_ratio(entry.get("ratio_peak_memory_vs_reference")),
            ]
        )
    common.print_table(
        f"GPU suite ({report['config']['towers']}, batch {args.batch}, {args.dtype}, SDPA)",
        ["variant", "pairs/s", "ms/step", "MFU", "peak mem", "speed vs ref", "mem vs ref"],
        rows,
    )
    common.write_report(
        args.output or common.RESULTS_DIR / ("gpu_suite_smoke.json" if args.smoke else "gpu_suite.json"), report
    )
    return report


if __name__ == "__main__":
    main()
