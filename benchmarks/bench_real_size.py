"""Real-size CPU inference: Chinese-CLIP ViT-B/16 + RoBERTa-wwm-ext-base in transformers' `ChineseCLIPModel` and
in ours, with the same weights.

One run: a seeded random `ChineseCLIPModel` at the published ViT-B/16 size (188M parameters) is saved, converted
with `hf_vlp.convert.convert_chinese_clip` (exact, weight for weight) and saved as ours. Then:

* **latency** of image encoding (224 px) and text encoding (52 tokens, Chinese-CLIP's length) at batch 1 and 32,
  both models in this process, timed alternately (ABBA) under `torch.inference_mode`; the ratio is per round,
  median over rounds (ours / reference time: below 1.00x is faster), in wall time and in this process's CPU time
  (on a shared machine the CPU-time ratio is the one preemption by other jobs does not distort);
* **load time** (`from_pretrained` of the saved folder) and **peak memory** (resident set after loading, and the
  peak above it while encoding one batch of 32 images and 32 texts), each model in a fresh worker process.

Both run as users get them (default attention implementation, float32), with `--threads` torch threads.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, memory


CONTEXT_LENGTH = 52
IMAGE_SIZE = 224


def reference_config(layers: int = 12):
    """transformers' config of OFA-Sys/chinese-clip-vit-base-patch16 (its published sizes; `layers` per tower)."""
    from transformers import ChineseCLIPConfig

    return ChineseCLIPConfig(
        text_config={
            "vocab_size": 21128,
            "hidden_size": 768,
            "num_hidden_layers": layers,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
        },
        vision_config={
            "hidden_size": 768,
            "num_hidden_layers": layers,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
        },
        projection_dim=512,
    )


def load(kind: str, folder: str):
    from transformers import AutoModel, ChineseCLIPModel

    import hf_vlp  # noqa: F401  (registers the Auto classes)

    model_class = ChineseCLIPModel if kind == "reference" else AutoModel
    return model_class.from_pretrained(folder).eval()


def inputs(batch: int, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """`batch` random 224 px images and `batch` texts of 52 real tokens ([CLS] ... [SEP])."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    ids = torch.randint(672, 8000, (batch, CONTEXT_LENGTH), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    return pixels, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def encode(model, modality: str, pixels, text) -> None:
    import torch

    with torch.inference_mode():
        if modality == "image":
            model.get_image_features(pixel_values=pixels)
        else:
            model.get_text_features(**text)


def _timed(model, modality: str, pixels, text, batch: int):
    """One measurement for `interleaved_rates`: encode the batch, return its size (the work done)."""

    def run() -> int:
        encode(model, modality, pixels, text)
        return batch

    return run


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load time, resident set after loading, peak above it while encoding a batch of 32."""
    import torch

    torch.set_num_threads(spec["threads"])
    import hf_vlp  # noqa: F401  (import cost is not load time)

    pixels, text = inputs(spec["batch"])
    small_pixels, small_text = inputs(1)
    rss_before = (memory.status_kib("VmRSS") or 0) * 1024
    start = time.perf_counter()
    model = load(spec["kind"], spec["folder"])
    load_seconds = time.perf_counter() - start
    gc.collect()
    loaded_rss = (memory.status_kib("VmRSS") or 0) * 1024 - rss_before
    for modality in ("image", "text"):  # code pages resident before the peak is taken
        encode(model, modality, small_pixels, small_text)
    meter = memory.PeakMemory("cpu")
    meter.start()
    for modality in ("image", "text"):
        encode(model, modality, pixels, text)
    return {
        "load_seconds": load_seconds,
        "loaded_rss_bytes": loaded_rss,
        "encode_peak_bytes": meter.peak_bytes(),
        "file_backed_growth_bytes": meter.file_backed_growth(),
        "method": meter.method,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per batch size (batch 32: half, >= 2)")
    parser.add_argument("--batch", type=int, default=32, help="the large batch size (the small one is 1)")
    parser.add_argument("--layers", type=int, default=12, help="layers per tower (12: the published size)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI; numbers mean nothing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=str(common.RESULTS_DIR / "real_size.json"))
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        print(json.dumps(worker(json.loads(args._worker))))
        return 0
    if args.smoke:
        args.layers, args.rounds, args.batch = 1, 1, 2

    import torch
    from transformers import ChineseCLIPModel

    from hf_vlp.convert import convert_chinese_clip

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_real_size-"))
    folders = {"reference": workdir / "reference", "ours": workdir / "ours"}
    if not (folders["ours"] / "config.json").exists():
        torch.manual_seed(args.seed)
        ChineseCLIPModel(reference_config(args.layers)).save_pretrained(folders["reference"])
        convert_chinese_clip(folders["reference"], folders["ours"])
    report: dict[str, Any] = {
        "machine": common.machine_info("cpu"),
        "settings": vars(args) | {"workdir": str(workdir)},
    }

    models = {kind: load(kind, str(folder)) for kind, folder in folders.items()}
    report["attention"] = {kind: model.config._attn_implementation for kind, model in models.items()}
    rows, latency = [], {}
    for modality in ("image", "text"):
        for batch in (1, args.batch):
            pixels, text = inputs(batch)
            for model in models.values():
                encode(model, modality, *inputs(1))  # warm-up
            rounds = args.rounds if batch == 1 else max(2, args.rounds // 2)
            summary = common.interleaved_rates(
                {kind: _timed(model, modality, pixels, text, batch) for kind, model in models.items()},
                rounds,
                reference="reference",
            )
            seconds = {kind: batch / summary[kind]["median"] for kind in models}
            ratio = 1.0 / summary["ours"]["ratio_to_reference"]  # time ratio = inverse rate ratio
            cpu_ratio = 1.0 / summary["ours"]["cpu_ratio_to_reference"]
            latency[f"{modality}_b{batch}"] = {
                **summary, "seconds": seconds, "time_ratio": ratio, "cpu_time_ratio": cpu_ratio
            }  # fmt: skip
            rows.append(
                [f"{modality} encode, batch {batch}", f"{seconds['reference'] * 1e3:.0f} ms",
                 f"{seconds['ours'] * 1e3:.0f} ms", common.fmt_ratio(ratio), common.fmt_ratio(cpu_ratio)]
            )  # fmt: skip
            print(rows[-1], flush=True)
    report["latency"] = latency
    del models
    gc.collect()

    workers = {
        kind: memory.run_worker(
            Path(__file__).resolve(),
            {"kind": kind, "folder": str(folder), "batch": args.batch, "threads": args.threads},
        )
        for kind, folder in folders.items()
    }
    report["workers"] = workers
    for key, label, fmt in (
        ("load_seconds", "load (from_pretrained)", lambda v: f"{v:.2f} s"),
        ("loaded_rss_bytes", "memory after load", common.fmt_bytes),
        ("encode_peak_bytes", f"peak above it, encoding {args.batch}+{args.batch}", common.fmt_bytes),
    ):
        ref, ours = workers["reference"][key], workers["ours"][key]
        rows.append([label, fmt(ref), fmt(ours), common.fmt_ratio(ours / ref if ref else None), ""])
    common.print_table(
        f"Real-size CPU inference, ViT-B/16 + RoBERTa-wwm-ext-base ({args.layers} layers), same weights "
        f"({args.threads} threads; "
        f"attention {report['attention']})",
        ["", "ChineseCLIPModel", "ours", "ours / reference", "CPU time ours / reference"],
        rows,
    )
    report["time_ratio_median"] = statistics.median(v["time_ratio"] for v in latency.values())
    report["cpu_time_ratio_median"] = statistics.median(v["cpu_time_ratio"] for v in latency.values())
    common.write_report(args.output, report)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
