"""Peak memory of the hf-vlp benchmarks: in a fresh process per variant, above a post-setup baseline.

Why these choices:

* **Peak memory in a fresh process per variant.** On CPU, torch allocations are invisible to `tracemalloc`, and
  the process peak (`ru_maxrss`) never goes down, so two variants measured in one process contaminate each other.
  Each measurement runs in its own subprocess; after setup it resets the kernel's peak-RSS counter
  (`/proc/self/clear_refs` = 5) and reports `VmHWM - VmRSS(before)`; glibc is told to serve every allocation of
  64 KiB or more with `mmap` (`MALLOC_MMAP_THRESHOLD_`), so freed tensors leave the resident set at once and the
  RSS follows the live bytes instead of the allocator's cached heap. On CUDA it is
  `torch.cuda.max_memory_allocated() - memory_allocated(before)`.
* **Live-tensor peak.** RSS peaks move by a MiB or two between runs (pages, allocator); `TensorPeak` also
  counts the bytes of live tensor storages op by op, which is deterministic and compares variants exactly.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT


__all__ = ["MMAP_THRESHOLD_BYTES", "PeakMemory", "TensorPeak", "run_worker", "status_kib"]

# glibc serves allocations at or above this size with mmap, so they are returned to the OS when freed.
MMAP_THRESHOLD_BYTES = 65536


def status_kib(field: str) -> int | None:
    """A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`, `RssFile`, ...), None where there is none."""
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
            self.base = (status_kib("VmRSS") or 0) * 1024
            self.file_base = (status_kib("RssFile") or 0) * 1024
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
        return (status_kib("RssFile") or 0) * 1024 - self.file_base

    def peak_bytes(self) -> int:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = (status_kib("VmHWM") or 0) * 1024
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
