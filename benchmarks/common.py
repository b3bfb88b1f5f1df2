"""Shared pieces of the hf-vlp benchmarks: machine description, fair A/B timing, peak memory, FLOPs, reports.

Why these choices:

* **Interleaved A/B timing.** The development machines are shared (other jobs come and go), so timing the
  reference for a minute and then ours for a minute would measure the load, not the code. `interleaved_rates`
  alternates the variants round by round in ABBA order and reports, per variant, the median rate, and the median
  of the per-round ratios, which cancels slow drifts in the background load.
* **Peak memory in a fresh process per variant.** On CPU, torch allocations are invisible to `tracemalloc`, and
  the process peak (`ru_maxrss`) never goes down, so two variants measured in one process contaminate each other.
  Each measurement runs in its own subprocess; after setup it resets the kernel's peak-RSS counter
  (`/proc/self/clear_refs` = 5) and reports `VmHWM - VmRSS(before)`; glibc is told to serve every allocation of
  64 KiB or more with `mmap` (`MALLOC_MMAP_THRESHOLD_`), so freed tensors leave the resident set at once and the
  RSS follows the live bytes instead of the allocator's cached heap. On CUDA it is
  `torch.cuda.max_memory_allocated() - memory_allocated(before)`.
* **Live-tensor peak.** RSS peaks move by a MiB or two between runs (pages, allocator); `TensorPeak` also
  counts the bytes of live tensor storages op by op, which is deterministic and compares variants exactly.
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
import resource
import statistics
import subprocess
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
    "PeakMemory",
    "TensorPeak",
    "add_device_arguments",
    "autocast",
    "build_optimizer",
    "compile_towers",
    "count_flops",
    "device_settings",
    "fmt_bytes",
    "fmt_ratio",
    "interleaved_rates",
    "machine_info",
    "mfu",
    "print_table",
    "run_worker",
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
# glibc serves allocations at or above this size with mmap, so they are returned to the OS when freed.
MMAP_THRESHOLD_BYTES = 65536


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


# ---------------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory above a baseline taken at `start()`: CUDA allocator on GPU, process RSS on CPU.

    Call `start()` after setup (model, optimizer, inputs built, and every code path run once on a small input so
    that its code pages are resident) and `peak_bytes()` after the measured work. `method` says what was measured,
    for the report.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.base = 0
        self.file_base: int | None = None
        self.method = ""

    def start(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated - memory_allocated after setup"
        elif _reset_peak_rss():
            self.base = (_status_kib("VmRSS") or 0) * 1024
            self.file_base = (_status_kib("RssFile") or 0) * 1024
            self.method = "VmHWM - VmRSS after setup (peak RSS reset via /proc/self/clear_refs, mmap'd allocations)"
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss delta over the post-setup peak (underestimates when setup peaked higher)"

    def file_backed_growth(self) -> int | None:
        """Growth of the file-backed resident set (code pages of kernels run for the first time) since `start()`.

        It is part of the RSS peak but not memory the workload allocated; callers warm up every code path before
        `start()` so that this stays near zero, and report it so that a reader can check.
        """
        if self.file_base is None:
            return None
        return (_status_kib("RssFile") or 0) * 1024 - self.file_base

    def peak_bytes(self) -> int:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(int(peak - self.base), 0)


class TensorPeak:
    """Peak bytes of tensor storages created and still alive inside the block (a `TorchDispatchMode`).

    An allocation-level complement to `PeakMemory`: deterministic (no page granularity, no allocator caching, no
    other process), device-independent, and able to tell which variant keeps more tensors alive at its worst
    moment. It sees every storage an aten op returns, including in backward and in the optimizer; it does not see
    scratch buffers a kernel allocates and frees internally, storages that existed before the block, nor what runs
    inside a `torch.compile`d graph (use the `PeakMemory` figure with `--compile`).
    """

    def __init__(self) -> None:
        self.peak = 0
        self._mode = None

    def __enter__(self) -> TensorPeak:
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        live: dict[int, int] = {}
        current = [0]

        def forget(key: int, size: int) -> None:
            if live.pop(key, None) is not None:
                current[0] -= size

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                # Views and in-place results share an input's storage: not an allocation (and the input may be a
                # parameter or optimizer state that existed before the block).
                inputs = {
                    t.untyped_storage().data_ptr()
                    for t in tree_flatten((args, kwargs))[0]
                    if isinstance(t, torch.Tensor) and t.device.type != "meta"
                }
                for tensor in tree_flatten(out)[0]:
                    if not isinstance(tensor, torch.Tensor):
                        continue
                    storage = tensor.untyped_storage()
                    key, size = storage.data_ptr(), storage.nbytes()
                    if size == 0 or key in live or key in inputs:
                        continue
                    live[key] = size
                    current[0] += size
                    tracker.peak = max(tracker.peak, current[0])
                    weakref.finalize(storage, forget, key, size)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def run_worker(script: str | Path, spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run `script --_worker <spec as JSON>` in a fresh interpreter and return the JSON on its last stdout line.

    The environment makes glibc mmap every allocation of 64 KiB or more (see `PeakMemory`).
    """
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD_BYTES)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [sys.executable, str(script), "--_worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({spec}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
