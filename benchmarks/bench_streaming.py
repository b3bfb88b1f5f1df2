"""Benchmark: data loading scales with the work, and is never the bottleneck of the demo recipe.

Two questions, one run:

1. **Scaling with work.** Webdataset tar shards of rendered demo scenes (distinct 64 px PNGs with Chinese captions,
   `--shard-size` pairs per shard) are read for one epoch by `trainers.data.StreamingImageTextDataset` through a
   `DataLoader` with `ImageTextCollator` and the tiny preset's processor, for each dataset size (default 1k, 2k, 4k,
   8k pairs). Reported per size: epoch time, time to the first batch, seconds per 1000 pairs. The reference figure
   is the linear extrapolation of the smallest size (`t(N) = t(N0) * N / N0`); the ratio measured / linear must stay
   near 1, and the time to first batch must not grow with N (no start-up work proportional to the data). The sizes
   are measured in alternating order over `--repeats` passes and the medians reported (shared machine).
2. **Loader vs train step.** At the demo recipe's settings (batch 64, `dataloader_num_workers: 1`,
   `torch_threads: 1`, tiny preset): pairs/s of the loaders alone (the streaming one, and the demo recipe's own
   map-style `ImageTextDataset` over the rendered demo image folder) against pairs/s of the train step alone (the
   reference figure), and a train loop fed by each loader against the same loop on one cached batch, interleaved.
   A loader is not the bottleneck when the fed loop runs at the cached loop's speed. Loading always runs on the
   CPU; the train step runs on `--device` (with `--dtype`, `--compile`, as the other benchmarks).

    python benchmarks/bench_streaming.py
    python benchmarks/bench_streaming.py --smoke
    python benchmarks/bench_streaming.py --sizes 1000,10000,100000 --data-dir /tmp/hfvlp-shards
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # run as a file: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


__all__ = ["main", "write_shards", "epoch_timing"]

DEMO_BATCH = 64  # trainers/recipes/demo.yaml: per_device_train_batch_size
DEMO_WORKERS = 1  # trainers/recipes/demo.yaml: dataloader_num_workers
DEMO_MAX_LENGTH = 32  # the tiny preset's processor


def write_shards(directory: Path, num_pairs: int, shard_size: int, image_size: int = 64, seed: int = 0) -> list[str]:
    """Write `num_pairs` distinct rendered scenes as webdataset tar shards (`key.png` + `key.txt`); return paths.

    Reuses shards already there (same arguments give the same bytes), so repeated runs skip the rendering.
    """
    from trainers.data import all_demo_scenes, caption_variants, render_scene

    directory.mkdir(parents=True, exist_ok=True)
    singles, pairs = all_demo_scenes()
    scenes = singles + pairs
    paths = []
    for shard_index, start in enumerate(range(0, num_pairs, shard_size)):
        path = directory / f"shard-{shard_index:05d}-{shard_size}-{image_size}px-seed{seed}.tar"
        paths.append(str(path))
        if path.exists():
            continue
        partial = path.with_suffix(".tar.partial")
        with tarfile.open(partial, "w") as tar:
            for index in range(start, min(start + shard_size, num_pairs)):
                spec = scenes[(index * 7919) % len(scenes)]
                buffer = io.BytesIO()
                render_scene(spec, image_size, seed=f"{seed}:{index}").save(buffer, format="PNG", compress_level=1)
                for suffix, payload in (("png", buffer.getvalue()), ("txt", caption_variants(spec)[0].encode())):
                    info = tarfile.TarInfo(f"{index:08d}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        os.replace(partial, path)
    return paths


def make_loader(dataset, processor, num_workers: int, batch_size: int = DEMO_BATCH, shuffle: bool = False):
    """A DataLoader as the trainer builds it: the collator runs the processor in the workers."""
    from torch.utils.data import DataLoader

    from trainers.data import ImageTextCollator

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=ImageTextCollator(processor, max_length=DEMO_MAX_LENGTH),
    )


def streaming_dataset(shards: list[str], shuffle_buffer: int, seed: int = 0):
    from trainers.data import StreamingImageTextDataset

    return StreamingImageTextDataset(shards, shuffle_buffer=shuffle_buffer, seed=seed)


def epoch_timing(loader) -> tuple[float, float, int]:
    """(time to first batch, epoch time, pairs) of one pass over `loader`, workers started inside the timing."""
    start = time.perf_counter()
    first = None
    pairs = 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        pairs += len(batch["image_ids"])
    return first or 0.0, time.perf_counter() - start, pairs


# ---------------------------------------------------------------------------------------------------- parts


def measure_scaling(args, shards: list[str], processor) -> list[dict[str, Any]]:
    """Epoch time and time to first batch per dataset size, sizes alternating over the repeats."""
    per_size: dict[int, list[tuple[float, float, int]]] = {size: [] for size in args.sizes}
    for repeat in range(args.repeats):
        order = args.sizes if repeat % 2 == 0 else args.sizes[::-1]
        for size in order:
            dataset = streaming_dataset(shards[: -(-size // args.shard_size)], args.shuffle_buffer, seed=repeat)
            per_size[size].append(epoch_timing(make_loader(dataset, processor, args.workers)))
    smallest = min(args.sizes)
    rows = []
    for size in args.sizes:
        firsts, epochs, counts = zip(*per_size[size])
        rows.append(
            {
                "pairs": size,
                "pairs_read": counts[0],
                "epoch_s": statistics.median(epochs),
                "epoch_s_all": list(epochs),
                "first_batch_s": statistics.median(firsts),
                "first_batch_s_all": list(firsts),
            }
        )
    base = next(row for row in rows if row["pairs"] == smallest)
    for row in rows:
        row["linear_reference_s"] = base["epoch_s"] * row["pairs"] / smallest
        row["ratio_to_linear"] = row["epoch_s"] / row["linear_reference_s"]
        row["s_per_1k_pairs"] = 1000 * row["epoch_s"] / row["pairs"]
        row["first_batch_ratio_to_smallest"] = row["first_batch_s"] / base["first_batch_s"]
    return rows


def linear_fit(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares `epoch_s = intercept + slope * pairs`, and R^2."""
    xs = [row["pairs"] for row in rows]
    ys = [row["epoch_s"] for row in rows]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"slope_s_per_pair": slope, "intercept_s": intercept, "r2": 1 - residual / total if total else 1.0}


def measure_bottleneck(args, settings: dict, shards: list[str], demo_train_dir: str, processor) -> dict[str, Any]:
    """Loaders alone, train step alone, and train loops fed by each loader vs on a cached batch (interleaved)."""
    import torch

    from hf_vlp.models import DualEncoderConfig, DualEncoderModel
    from trainers.data import SIDE_CHANNEL_KEYS, ImageTextDataset, read_image_folder

    loaders = {
        "streaming": lambda: make_loader(
            streaming_dataset(shards, args.shuffle_buffer), processor, DEMO_WORKERS, args.batch
        ),
        "demo_map_style": lambda: make_loader(
            ImageTextDataset(list(read_image_folder(demo_train_dir))), processor, DEMO_WORKERS, args.batch, True
        ),
    }
    torch.manual_seed(args.seed)
    device = settings["device"]
    model = DualEncoderModel(DualEncoderConfig.from_preset("tiny")).to(device)
    common.set_attention(model, settings["attn_implementation"])
    if settings["compile"]:
        common.compile_towers(model)
    model.train()
    optimizer = common.build_optimizer(model, settings["fused_adamw"], lr=1e-3)

    def model_inputs(batch: dict) -> dict:
        return {key: value.to(device) for key, value in batch.items() if key not in SIDE_CHANNEL_KEYS}

    cached = model_inputs(next(iter(loaders["streaming"]())))

    def train(inputs: dict) -> None:
        with common.autocast(device, settings["dtype"]):
            loss = model(**inputs, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up
        train(cached)

    # Long-lived iterators over repeated epochs, so that worker start-up is paid once, as in training.
    def endless(name: str):
        while True:
            yield from loaders[name]()

    streams = {name: endless(name) for name in loaders}

    def drain(name: str):
        """Take the batches the workers prefetched while another variant was timed (at most prefetch_factor=2
        per worker), so that a fed round does not start with a head start."""

        def run() -> None:
            for _ in range(2 * DEMO_WORKERS):
                next(streams[name])

        return run

    def train_cached() -> float:
        for _ in range(args.bottleneck_steps):
            train(cached)
        return float(args.bottleneck_steps * args.batch)

    waits: dict[str, list[float]] = {name: [] for name in loaders}

    def train_fed(name: str):
        def run() -> float:
            pairs, waited, start = 0, 0.0, time.perf_counter()
            for _ in range(args.bottleneck_steps):
                before = time.perf_counter()
                batch = next(streams[name])
                waited += time.perf_counter() - before
                pairs += len(batch["image_ids"])
                train(model_inputs(batch))
            waits[name].append(waited / (time.perf_counter() - start))
            return float(pairs)

        return run

    for name in loaders:  # start the workers before timing
        next(streams[name])
    variants = {"train_cached": train_cached}
    variants.update({f"train_fed_{name}": train_fed(name) for name in loaders})
    before = {f"train_fed_{name}": drain(name) for name in loaders}
    fed = common.interleaved_rates(variants, args.rounds, device, reference="train_cached", before=before)
    for name in loaders:
        fed[f"train_fed_{name}"]["data_wait_fraction"] = statistics.median(waits[name])

    # Loaders alone: whole epochs from a fresh DataLoader (worker start-up included), nothing else running.
    alone: dict[str, list[float]] = {name: [] for name in loaders}
    for repeat in range(args.repeats):
        for name in loaders if repeat % 2 == 0 else list(loaders)[::-1]:
            _, seconds, pairs = epoch_timing(loaders[name]())
            alone[name].append(pairs / seconds)
    train_rate = fed["train_cached"]["median"]
    loaders_alone = {
        name: {
            "rates": rates,
            "median": statistics.median(rates),
            "ratio_to_train": statistics.median(rates) / train_rate,
        }
        for name, rates in alone.items()
    }
    return {"fed": fed, "loaders_alone": loaders_alone}


# ---------------------------------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> dict:
    parser = common.benchmark_parser(__doc__)
    parser.add_argument("--sizes", default="1000,2000,4000,8000", help="comma-separated dataset sizes (pairs)")
    parser.add_argument("--shard-size", type=int, default=500, help="pairs per tar shard")
    parser.add_argument("--shuffle-buffer", type=int, default=1000, help="streaming shuffle buffer (CLI default)")
    parser.add_argument("--workers", type=int, default=DEMO_WORKERS, help="DataLoader workers of the scaling runs")
    parser.add_argument("--batch", type=int, default=DEMO_BATCH, help="batch size (demo recipe: 64)")
    parser.add_argument("--repeats", type=int, default=3, help="epochs per size (alternating order)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the bottleneck comparison")
    parser.add_argument("--bottleneck-steps", type=int, default=8, help="batches per bottleneck round")
    parser.add_argument("--demo-train", type=int, default=2000, help="demo images (demo recipe: 2000)")
    parser.add_argument("--data-dir", default=None, help="where shards and the demo set go (default: a temp dir)")
    common.add_run_arguments(parser, "seconds-long CI run: sizes 64,128, batch 16", "streaming")
    common.add_device_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.shard_size, args.batch, args.repeats = "64,128", 32, 16, 1
        args.rounds, args.bottleneck_steps, args.demo_train, args.shuffle_buffer = 1, 2, 48, 32
    args.sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    args.output = common.output_path(args, "streaming")
    settings = common.device_settings(args)

    import hf_vlp
    from trainers.data import generate_demo_dataset

    with tempfile.TemporaryDirectory(prefix="hfvlp-bench-") as scratch, common.torch_threads(settings["threads"]):
        root = Path(args.data_dir or scratch)
        start = time.perf_counter()
        shards = write_shards(root / "shards", max(args.sizes), args.shard_size, seed=args.seed)
        demo_dir = root / f"demo-{args.demo_train}"
        if not (demo_dir / "train" / "metadata.jsonl").exists():
            generate_demo_dataset(demo_dir, num_train=args.demo_train, num_eval=0, seed=args.seed, overwrite=True)
        print(f"data ready in {time.perf_counter() - start:.1f}s under {root}")
        processor = hf_vlp.processor_for_preset("tiny")
        print(
            f"sizes={args.sizes} shard_size={args.shard_size} workers={args.workers} batch={args.batch} "
            f"shuffle_buffer={args.shuffle_buffer} threads={settings['threads']} repeats={args.repeats}"
        )
        scaling = measure_scaling(args, shards, processor)
        fit = linear_fit(scaling)
        bottleneck = measure_bottleneck(args, settings, shards, str(demo_dir / "train"), processor)

    common.print_table(
        "Streaming epoch time vs dataset size (reference: linear extrapolation of the smallest size)",
        ["pairs", "epoch s", "linear ref s", "ours/ref", "s / 1k pairs", "first batch s", "vs smallest"],
        [
            [
                row["pairs"],
                f"{row['epoch_s']:.2f}",
                f"{row['linear_reference_s']:.2f}",
                common.fmt_ratio(row["ratio_to_linear"]),
                f"{row['s_per_1k_pairs']:.2f}",
                f"{row['first_batch_s']:.2f}",
                common.fmt_ratio(row["first_batch_ratio_to_smallest"]),
            ]
            for row in scaling
        ],
    )
    print(
        f"linear fit: {1000 * fit['slope_s_per_pair']:.3f} s per 1k pairs + {fit['intercept_s']:.2f} s, "
        f"R^2 = {fit['r2']:.4f}"
    )
    train_rate = bottleneck["fed"]["train_cached"]["median"]
    rows = [
        [
            f"{name} loader alone",
            f"{entry['median']:.0f}",
            f"{train_rate:.0f}",
            common.fmt_ratio(entry["ratio_to_train"]),
            "whole epochs / train step alone (> 1: the loader keeps up)",
        ]
        for name, entry in bottleneck["loaders_alone"].items()
    ]
    rows += [
        [
            f"train fed by {name[len('train_fed_') :]}",
            f"{entry['median']:.0f}",
            f"{train_rate:.0f}",
            common.fmt_ratio(entry["ratio_to_reference"]),
            f"fed loop / cached-batch loop; {entry['data_wait_fraction']:.1%} of it waiting for batches",
        ]
        for name, entry in bottleneck["fed"].items()
        if name != "train_cached"
    ]
    common.print_table(
        f"Loader vs train step at the demo recipe's settings (batch {args.batch}, {DEMO_WORKERS} worker, "
        f"{settings['threads']} torch thread); reference: train step on one cached batch",
        ["variant", "pairs/s", "reference pairs/s", "ratio", "meaning"],
        rows,
    )
    print(
        "A fed loop that waits ~0% for batches is not limited by the loader; if it is still slower than the cached "
        "loop, the loader's worker is taking CPU from the trainer (fewer free cores than processes)."
    )
    report = {
        **common.report_head(
            "streaming reader: epoch time vs dataset size; loader vs train step at the demo recipe", settings["device"]
        ),
        "config": {
            "sizes": args.sizes,
            "shard_size": args.shard_size,
            "shuffle_buffer": args.shuffle_buffer,
            "workers": args.workers,
            "batch": args.batch,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "bottleneck_steps": args.bottleneck_steps,
            "demo_train": args.demo_train,
            "smoke": args.smoke,
            **settings,
        },
        "scaling": scaling,
        "linear_fit": fit,
        "bottleneck": bottleneck,
    }
    common.write_report(args.output, report)
    return report


if __name__ == "__main__":
    main()
