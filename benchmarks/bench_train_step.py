"""Benchmark: training throughput and peak memory of a `DualEncoderModel` step vs transformers' `ChineseCLIPModel`.

Both compute the same function: the reference `ChineseCLIPModel` is built at the preset's tower sizes with a fixed
seed, ours is made from it with `hf_vlp.convert.chinese_clip_to_dual_encoder`, and their logits and loss are checked
equal once before anything is timed. Both are trained with the same AdamW, on the same batch (random token ids with
padded lengths, random pixels), with the same device options.

* **Throughput** (pairs/s): one process, both models, `--rounds` rounds of `--steps` train steps per variant in
  ABBA order (the machine is shared; see `benchmarks/common.py`); medians and the median per-round ratio.
* **Peak memory**: each variant in its own subprocess, peak above the post-setup baseline (model, optimizer object
  and batch resident) over `--memory-steps` steps, so it includes gradients, AdamW state and activations. CPU:
  process RSS with mmap'd allocations (see `memory.PeakMemory`); CUDA: `torch.cuda.max_memory_allocated`. Then
  the live-tensor peak of one more (steady-state) step, counted op by op (`memory.TensorPeak`): exact, so it
  decides a comparison that the RSS figure (which moves by a MiB between runs) leaves open.
* **FLOPs / MFU**: FLOPs of one step counted by `FlopCounterMode`; achieved TFLOP/s always, MFU against
  `--peak-tflops` (default 790 on CUDA).
* **Price of fusion**: with `--fusion` (default on), the same for a `FusionEncoderForPreTraining` step
  (ITC + ITM + MLM) at the same tower sizes, against our dual-encoder step.

    python benchmarks/bench_train_step.py                       # CPU, tiny preset sizes, batch 64
    python benchmarks/bench_train_step.py --smoke               # seconds-long CI run
    python benchmarks/bench_train_step.py --size base --device cuda --dtype bf16 --compile --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # run as a file: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, memory  # noqa: E402
from benchmarks.train_models import (  # noqa: E402
    FUSION_MODULE,
    SIZES,
    build_fusion_model,
    build_models,
    check_same_function,
    fusion_available,
    make_batch,
    train_step,
)


__all__ = ["main"]

VARIANTS = ("reference", "ours", "fusion")


# ---------------------------------------------------------------------------------------------------- models


def prepare(model, settings: dict):
    """Move to the device, set attention and compile as asked, and build the optimizer; train mode."""
    model.to(settings["device"])
    common.set_attention(model, settings["attn_implementation"])
    if settings["compile"]:
        common.compile_towers(model)
    model.train()
    return common.build_optimizer(model, settings["fused_adamw"])


def build_variant(variant: str, size: str, seed: int):
    if variant == "fusion":
        return build_fusion_model(size, seed)
    reference, ours = build_models(size, seed)
    return reference if variant == "reference" else ours


def step_flops(model, batch: dict) -> int:
    """FLOPs of one forward + backward of `model` on `batch` (optimizer excluded, as MFU conventions do)."""

    def run(counted) -> None:
        counted.train()
        counted(**batch, return_loss=True).loss.backward()

    return common.count_flops(model, run)


# ---------------------------------------------------------------------------------------------------- workers


def _memory_worker(spec: dict) -> dict:
    """Peak memory of `spec["variant"]`'s train step, in this (fresh) process."""
    import gc

    import torch

    settings = spec["settings"]
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    model = build_variant(spec["variant"], spec["size"], spec["seed"])
    optimizer = prepare(model, settings)
    batch = make_batch(spec["size"], spec["batch"], spec["seq_len"], settings["device"], spec["seed"])
    # Run every code path once before the baseline, so that kernels' code pages (resident, hence in the RSS) and
    # compiled graphs are not counted as step memory: a step with a throw-away optimizer whose state is then freed.
    warm_optimizer = common.build_optimizer(model, settings["fused_adamw"])
    train_step(model, warm_optimizer, batch, settings)
    del warm_optimizer
    model.zero_grad(set_to_none=True)
    gc.collect()
    meter = memory.PeakMemory(settings["device"])
    meter.start()
    for _ in range(spec["steps"]):
        train_step(model, optimizer, batch, settings)
    peak = meter.peak_bytes()
    file_growth = meter.file_backed_growth()
    with memory.TensorPeak() as tensors:  # one more, steady-state step: AdamW state exists, gradients were freed
        train_step(model, optimizer, batch, settings)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "peak_bytes": peak,
        "tensor_peak_bytes": tensors.peak,
        "parameter_bytes": parameters,
        "method": meter.method,
        "file_backed_growth_bytes": file_growth,
    }


# ---------------------------------------------------------------------------------------------------- driver


def measure_throughput(args, settings: dict, variants: list[str]) -> dict[str, Any]:
    """Build every variant in this process, check equality, warm up, and time them interleaved."""
    reference, ours = build_models(args.size, args.seed)
    batch = make_batch(args.size, args.batch, args.seq_len, "cpu", args.seed)
    max_diff = check_same_function(reference, ours, batch)
    batch = {key: value.to(settings["device"]) for key, value in batch.items()}
    models = {"reference": reference, "ours": ours}
    if "fusion" in variants:
        models["fusion"] = build_fusion_model(args.size, args.seed)
    flops = {name: step_flops(model.to(settings["device"]), batch) for name, model in models.items()}
    optimizers = {name: prepare(model, settings) for name, model in models.items()}
    for name in models:  # warm-up: thread pools, allocator, AdamW state, compilation
        for _ in range(args.warmup):
            train_step(models[name], optimizers[name], batch, settings)

    def runner(name: str):
        def run() -> float:
            for _ in range(args.steps):
                train_step(models[name], optimizers[name], batch, settings)
            return float(args.steps * args.batch)

        return run

    timed = {name: runner(name) for name in models}
    summary = common.interleaved_rates(timed, args.rounds, settings["device"], reference="reference")
    if "fusion" in summary:
        per_round = [f / o for f, o in zip(summary["fusion"]["rates"], summary["ours"]["rates"])]
        summary["fusion"]["ratio_to_ours_per_round"] = per_round
        summary["fusion"]["ratio_to_ours"] = statistics.median(per_round)
        cpu_per_round = [f / o for f, o in zip(summary["fusion"]["cpu_rates"], summary["ours"]["cpu_rates"])]
        summary["fusion"]["cpu_ratio_to_ours"] = statistics.median(cpu_per_round)
    for name, entry in summary.items():
        entry["flops_per_step"] = flops[name]
        entry["tflops_per_s"] = flops[name] * entry["median"] / args.batch / 1e12
        entry["mfu"] = common.mfu(flops[name] * entry["median"] / args.batch, settings["peak_tflops"])
    summary["max_logit_diff"] = max_diff
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = common.benchmark_parser(__doc__)
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="tower sizes (from the presets)")
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (default: 64 tiny, 128 base)")
    parser.add_argument("--seq-len", type=int, default=None, help="text length (default: 32 tiny, 52 base)")
    parser.add_argument("--steps", type=int, default=5, help="train steps per timed round")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of each peak-memory subprocess")
    parser.add_argument(
        "--fusion", action=argparse.BooleanOptionalAction, default=True, help="also measure the fusion step"
    )
    common.add_run_arguments(
        parser, "seconds-long CI run: batch 8, 1 step x 2 rounds", "train_step_<size>", worker=True
    )
    common.add_device_arguments(parser)
    args = parser.parse_args(argv)
    if common.serve_worker(args, _memory_worker):
        return {}

    args.batch = args.batch or SIZES[args.size]["batch"]
    args.seq_len = args.seq_len or SIZES[args.size]["seq_len"]
    if args.smoke:
        args.batch, args.steps, args.rounds, args.warmup, args.memory_steps = 8, 1, 2, 1, 1
    args.output = common.output_path(args, f"train_step_{args.size}")
    settings = common.device_settings(args)
    variants = ["reference", "ours"]
    fusion_note = None
    if args.fusion:
        if fusion_available():
            variants.append("fusion")
        else:
            fusion_note = f"skipped: {FUSION_MODULE.name} does not exist yet"
            print(f"fusion step {fusion_note}")

    print(
        f"size={args.size} batch={args.batch} seq_len={args.seq_len} device={settings['device']} "
        f"dtype={settings['dtype']} compile={settings['compile']} fused_adamw={settings['fused_adamw']} "
        f"attn={settings['attn_implementation']} steps={args.steps} rounds={args.rounds}"
    )
    with common.torch_threads(settings["threads"]):
        throughput = measure_throughput(args, settings, variants)
    peaks = {}
    for variant in variants:
        spec = {
            "variant": variant,
            "size": args.size,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "steps": args.memory_steps,
            "seed": args.seed,
            "settings": settings,
        }
        peaks[variant] = memory.run_worker(Path(__file__).resolve(), spec, args.timeout)

    ref, ours = throughput["reference"], throughput["ours"]
    on_cpu = settings["device"] == "cpu"
    rows = [
        [
            "pairs/s (median)",
            f"{ref['median']:.1f}",
            f"{ours['median']:.1f}",
            common.fmt_ratio(ours["ratio_to_reference"]),
            "ours/ref, median of per-round ratios (wall time)",
        ],
        [
            "peak memory",
            common.fmt_bytes(peaks["reference"]["peak_bytes"]),
            common.fmt_bytes(peaks["ours"]["peak_bytes"]),
            common.fmt_ratio(peaks["ours"]["peak_bytes"] / max(peaks["reference"]["peak_bytes"], 1)),
            "RSS / CUDA allocator, steps 1-n incl. AdamW state",
        ],
        [
            "live-tensor peak",
            common.fmt_bytes(peaks["reference"]["tensor_peak_bytes"]),
            common.fmt_bytes(peaks["ours"]["tensor_peak_bytes"]),
            common.fmt_ratio(peaks["ours"]["tensor_peak_bytes"] / max(peaks["reference"]["tensor_peak_bytes"], 1)),
            "steady-state step, op-level count (exact)",
        ],
        [
            "TFLOP/s",
            f"{ref['tflops_per_s']:.4f}",
            f"{ours['tflops_per_s']:.4f}",
            common.fmt_ratio(ours["tflops_per_s"] / ref["tflops_per_s"]),
            f"{ours['flops_per_step'] / 1e9:.2f} GFLOP/step",
        ],
    ]
    if on_cpu:
        rows.insert(
            1,
            [
                "pairs per CPU-s",
                f"{ref['cpu_median']:.1f}",
                f"{ours['cpu_median']:.1f}",
                common.fmt_ratio(ours["cpu_ratio_to_reference"]),
                "process CPU time: robust to other jobs",
            ],
        )
    if settings["peak_tflops"]:
        rows.append(
            ["MFU", f"{ref['mfu']:.1%}", f"{ours['mfu']:.1%}", "-", f"peak {settings['peak_tflops']:g} TFLOP/s"]
        )
    common.print_table(
        "Dual-encoder train step: ChineseCLIPModel (reference) vs DualEncoderModel (ours)",
        ["metric", "reference", "ours", "ratio", "note"],
        rows,
    )
    fusion_row = None
    if "fusion" in throughput:
        fusion = throughput["fusion"]
        fusion_row = {
            "pairs_per_s": fusion["median"],
            "ratio_fusion_over_dual": fusion["ratio_to_ours"],
            "cpu_ratio_fusion_over_dual": fusion["cpu_ratio_to_ours"],
            "peak_bytes": peaks["fusion"]["peak_bytes"],
            "memory_ratio_fusion_over_dual": peaks["fusion"]["peak_bytes"] / max(peaks["ours"]["peak_bytes"], 1),
            "flops_per_step": fusion["flops_per_step"],
        }
        common.print_table(
            "Price of fusion: our dual-encoder step (reference here) vs FusionEncoderForPreTraining (ITC+ITM+MLM)",
            ["metric", "dual", "fusion", "fusion/dual"],
            [
                [
                    "pairs/s (median)",
                    f"{ours['median']:.1f}",
                    f"{fusion['median']:.1f}",
                    common.fmt_ratio(fusion["ratio_to_ours"]),
                ],
                *(
                    [
                        [
                            "pairs per CPU-s",
                            f"{ours['cpu_median']:.1f}",
                            f"{fusion['cpu_median']:.1f}",
                            common.fmt_ratio(fusion["cpu_ratio_to_ours"]),
                        ]
                    ]
                    if on_cpu
                    else []
                ),
                [
                    "peak memory",
                    common.fmt_bytes(peaks["ours"]["peak_bytes"]),
                    common.fmt_bytes(peaks["fusion"]["peak_bytes"]),
                    common.fmt_ratio(fusion_row["memory_ratio_fusion_over_dual"]),
                ],
                [
                    "live-tensor peak",
                    common.fmt_bytes(peaks["ours"]["tensor_peak_bytes"]),
                    common.fmt_bytes(peaks["fusion"]["tensor_peak_bytes"]),
                    common.fmt_ratio(
                        peaks["fusion"]["tensor_peak_bytes"] / max(peaks["ours"]["tensor_peak_bytes"], 1)
                    ),
                ],
                [
                    "GFLOP/step",
                    f"{ours['flops_per_step'] / 1e9:.2f}",
                    f"{fusion['flops_per_step'] / 1e9:.2f}",
                    common.fmt_ratio(fusion["flops_per_step"] / ours["flops_per_step"]),
                ],
            ],
        )
    report = {
        **common.report_head(
            "train step: DualEncoderModel vs ChineseCLIPModel (same weights), and fusion vs dual", settings["device"]
        ),
        "config": {
            "size": args.size,
            "preset": SIZES[args.size]["preset"],
            "batch": args.batch,
            "seq_len": args.seq_len,
            "steps_per_round": args.steps,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "memory_steps": args.memory_steps,
            "smoke": args.smoke,
            **settings,
        },
        "max_logit_diff": throughput["max_logit_diff"],
        "reference": {**throughput["reference"], **peaks["reference"]},
        "ours": {**throughput["ours"], **peaks["ours"]},
        "ratio_pairs_per_s": ours["ratio_to_reference"],
        "ratio_pairs_per_cpu_s": ours["cpu_ratio_to_reference"],
        "ratio_peak_memory": peaks["ours"]["peak_bytes"] / max(peaks["reference"]["peak_bytes"], 1),
        "ratio_tensor_peak": peaks["ours"]["tensor_peak_bytes"] / max(peaks["reference"]["tensor_peak_bytes"], 1),
        "fusion": ({**throughput["fusion"], **peaks["fusion"], **fusion_row} if fusion_row else fusion_note),
    }
    common.write_report(args.output, report)
    return report


if __name__ == "__main__":
    main()
