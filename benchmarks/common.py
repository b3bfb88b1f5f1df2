"""Shared pieces of the hf-vlp benchmarks: machine description, fair A/B timing, peak memory, FLOPs, reports.

Why these choices:

* **Interleaved A/B timing.** The development machines are shared (other jobs come and go), so timing the
  reference for a minute and then ours for a minute would measure the load, not the code. `interleaved_rates`
  alternates the variants round by round in ABBA order and reports, per variant, the median rate, and the median
  of the per-round ratios, which cancels slow drifts in the background load.
* **Memory** is measured in a fresh process per variant, as the peak above a post-setup baseline and as the
  live-tensor peak: see `benchmarks/memory.py`.
* **FLOPs counted, not guessed.** `count_flops` runs `torch.utils.flop_counter.FlopCounterMode` once; CPU
  SDPA kernels have no FLOP formula there, so FLOPs are counted on a copy of the model with eager attention
  (the same matmuls), which is what MFU is then computed from.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any


__all__ = [
    "BENCH_DATE",
    "DEFAULT_PEAK_TFLOPS",
    "REPO_ROOT",
    "RESULTS_DIR",
    "add_device_arguments",
    "add_run_arguments",
    "autocast",
    "benchmark_parser",
    "build_optimizer",
    "compile_towers",
    "count_flops",
    "device_settings",
    "fmt_bytes",
    "fmt_ratio",
    "interleaved_rates",
    "machine_info",
    "mfu",
    "output_path",
    "print_table",
    "report_head",
    "serve_worker",
    "set_attention",
    "sync",
    "torch_threads",
    "write_report",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# Dense bf16 throughput an H100 / H200 SXM reaches in practice on large matmuls (the 989 TFLOP/s datasheet figure is
# not reached by real kernels); MFU is reported against this unless `--peak-tflops` says otherwise.
DEFAULT_PEAK_TFLOPS = 790.0
BENCH_DATE = datetime.date.today().isoformat()


# ---------------------------------------------------------------------------------------------------- command line


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a benchmark script, its module docstring (with the example commands) as the help text."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_arguments(
    parser: argparse.ArgumentParser, smoke_help: str, output_name: str, worker: bool = False
) -> None:
    """The options every benchmark run shares: `--seed`, `--smoke` (a seconds-long CI run, `smoke_help` says what it
    shrinks), `--output` (see `output_path`); with `worker`, the peak-memory subprocesses' `--timeout` and the hidden
    `--_worker SPEC` they are started with (`benchmarks.memory.run_worker`, `serve_worker`)."""
    parser.add_argument("--seed", type=int, default=0)
    if worker:
        parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement subprocess")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument(
        "--output", default=None, help=f"JSON result (default benchmarks/results/{output_name}[_smoke].json)"
    )
    if worker:
        parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)


def output_path(args: argparse.Namespace, name: str) -> str:
    """`--output`, else `benchmarks/results/<name>.json` (`<name>_smoke.json` for a smoke run, which must not
    overwrite the results the README quotes)."""
    return args.output or str(RESULTS_DIR / f"{name}{'_smoke' if args.smoke else ''}.json")


def serve_worker(args: argparse.Namespace, worker: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """In a measurement subprocess (`--_worker SPEC`): print `worker(spec)` as the JSON line `run_worker` reads and
    return True; False in the main process."""
    if args._worker is None:
        return False
    print(json.dumps(worker(json.loads(args._worker))))
    return True


# ---------------------------------------------------------------------------------------------------- machine


def machine_info(device: str) -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), core count, torch version and threads, GPU name when on CUDA."""
    import torch

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_default_threads": torch.get_num_threads(),
        "device": device,
        "shared_machine": True,
    }
    with contextlib.suppress(ValueError, OSError):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = list(os.getloadavg())
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------------- device


def add_device_arguments(parser: argparse.ArgumentParser, default_dtype: str = "fp32") -> None:
    """The options every model benchmark shares: device, autocast dtype, compile, fused AdamW, attention, MFU."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--dtype", default=default_dtype, choices=("fp32", "bf16", "fp16"), help="autocast dtype (fp32: none)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the towers of every variant")
    parser.add_argument(
        "--fused-adamw",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fused AdamW kernel for every variant (default: on for CUDA, off for CPU)",
    )
    parser.add_argument(
        "--attn-implementation",
        default="sdpa",
        choices=("sdpa", "eager"),
        help="attention kernel of every variant (transformers attn_implementation)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"peak TFLOP/s MFU is measured against (default {DEFAULT_PEAK_TFLOPS:g} on CUDA, H100/H200 bf16 "
        "dense as measured; no MFU on CPU unless given)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on CPU, because on a shared, oversubscribed machine OpenMP threads "
        "waiting for each other at every op make multi-threaded timings 10x slower and erratic; torch's default "
        "on CUDA)",
    )


def device_settings(args) -> dict[str, Any]:
    """The device options of `add_device_arguments` as a JSON-able dict (what a worker subprocess gets)."""
    cuda = args.device.startswith("cuda")
    return {
        "device": args.device,
        "dtype": args.dtype,
        "compile": bool(args.compile),
        "fused_adamw": cuda if args.fused_adamw is None else bool(args.fused_adamw),
        "attn_implementation": args.attn_implementation,
        "peak_tflops": args.peak_tflops if args.peak_tflops is not None else (DEFAULT_PEAK_TFLOPS if cuda else None),
        "threads": args.threads if args.threads is not None else (0 if cuda else 1),
    }


def sync(device: str) -> None:
    """Wait for queued CUDA work, so wall-clock timings cover it; no-op on CPU."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def autocast(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """`torch.autocast` for bf16 / fp16, a null context for fp32."""
    import torch

    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(
        device_type="cuda" if device.startswith("cuda") else "cpu",
        dtype=torch.bfloat16 if dtype == "bf16" else torch.float16,
    )


def set_attention(model, implementation: str) -> None:
    """Switch a transformers model (and its sub-models) to `implementation` ("sdpa" or "eager")."""
    model.set_attn_implementation(implementation)
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = implementation


def build_optimizer(model, fused: bool, lr: float = 1e-4):
    """AdamW over the trainable parameters, fused kernel or torch's default (foreach) implementation."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.1, fused=True if fused else None)


def compile_towers(model) -> None:
    """`torch.compile` the two towers in place (module names and state-dict keys stay the same)."""
    model.text_model.compile()
    model.vision_model.compile()


# ---------------------------------------------------------------------------------------------------- timing


def interleaved_rates(
    variants: dict[str, Callable[[], float]],
    rounds: int,
    device: str = "cpu",
    reference: str | None = None,
    before: dict[str, Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Time every variant `rounds` times, alternating their order (ABBA...), and summarise.

    Each callable runs one measurement and returns the amount of work it did (e.g. pairs); the rate is work per
    second of wall time. `before[name]`, if given, runs untimed before each measurement of `name`. Returns, per
    variant, the list of rates and their median, and for every other variant its ratio to `reference`: the median
    over rounds of (variant rate / reference rate in the same round).

    Also returned: `cpu_rates`, work per second of this process's CPU time (all its threads, not its child
    processes). On a shared CPU it is much less disturbed by other jobs than wall time, because time spent
    preempted does not count; `cpu_ratio_to_reference` is its per-round median ratio. Meaningless on CUDA.
    """
    names = list(variants)
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu_rates: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            if before and name in before:
                before[name]()
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            work = variants[name]()
            sync(device)
            rates[name].append(work / (time.perf_counter() - start))
            cpu_rates[name].append(work / max(time.process_time() - cpu_start, 1e-9))
    summary: dict[str, Any] = {
        name: {
            "rates": rates[name],
            "median": statistics.median(rates[name]),
            "cpu_rates": cpu_rates[name],
            "cpu_median": statistics.median(cpu_rates[name]),
        }
        for name in names
    }
    if reference is not None:
        for name in names:
            if name != reference:
                per_round = [a / b for a, b in zip(rates[name], rates[reference])]
                summary[name]["ratio_to_reference_per_round"] = per_round
                summary[name]["ratio_to_reference"] = statistics.median(per_round)
                cpu_per_round = [a / b for a, b in zip(cpu_rates[name], cpu_rates[reference])]
                summary[name]["cpu_ratio_to_reference"] = statistics.median(cpu_per_round)
    return summary


# ---------------------------------------------------------------------------------------------------- FLOPs


def count_flops(model, step: Callable[[Any], Any]) -> int:
    """FLOPs of `step(model)` (forward and backward), counted on an eager-attention copy of `model`.

    The copy is needed because `FlopCounterMode` has no formula for the CPU SDPA kernel; eager attention does the
    same matmuls. The count is in fp32 on the model's device and does not depend on dtype.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counted = copy.deepcopy(model)
    set_attention(counted, "eager")
    with FlopCounterMode(display=False) as counter:
        step(counted)
    del counted
    return int(counter.get_total_flops())


def mfu(flops_per_second: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak, or None without a peak."""
    if not peak_tflops:
        return None
    return flops_per_second / (peak_tflops * 1e12)


# ---------------------------------------------------------------------------------------------------- reports


def fmt_bytes(n: float | None) -> str:
    """Human-readable bytes (binary units); "-" for None."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a plain-text table, columns right-aligned to their widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    sys.stdout.flush()


def report_head(benchmark: str, device: str) -> dict[str, Any]:
    """The fields every report starts with: what it measures, the date and the machine (`machine_info`)."""
    return {"benchmark": benchmark, "date": BENCH_DATE, "machine": machine_info(device)}


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write the JSON report (creating folders) and say where."""
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {output}")
    return output


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Use `threads` CPU threads inside the block (0 leaves torch's setting alone)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
