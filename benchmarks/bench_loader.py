"""Is the data loader ever the bottleneck of `hf-vlp pretrain`? Step time on the real benchmark against a cached-batch
loop, measured in the same run.

Three variants of one job, built from the same `hf-vlp pretrain` arguments by the CLI's own code (same model, seed,
data, collator, optimizer and parameter groups):

* **pretrain**: `trainer.train()` as the CLI runs it — images decoded, resized and collated by the DataLoader with its
  default worker count while the model trains; seconds per step from the Trainer's `train_runtime`;
* **trainer_cached**: the same `trainer.train()`, fed an epoch of batches collated *before* the clock starts (the
  same batches every epoch): everything but the loading;
* **cached**: those batches in a bare loop of `trainer.compute_loss` + backward + gradient clipping at the same
  `max_grad_norm` + `optimizer.step()`: the compute a step cannot avoid.

pretrain / trainer_cached is what loading costs (target: within 1.1x, "the loader is never the bottleneck");
pretrain / cached adds the Trainer's own per-step and per-run bookkeeping. Each variant runs in a fresh process;
rounds are interleaved (ABC, CBA, ...) so that the background load of a shared machine hits all alike, and each ratio
is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import _pretrain_command, model_config
from benchmarks.common import BENCH_DATE, REPO_ROOT, RESULTS_DIR, fmt_ratio, machine_info, print_table, write_report
from benchmarks.real_data import build_real_data


VARIANTS = ("pretrain", "trainer_cached", "cached")


def pretrain_arguments(args, config_path: Path, data, output_dir: Path) -> list[str]:
    """The `hf-vlp pretrain` arguments all variants are built from: bench_quality's, without the progress bar."""
    return _pretrain_command(args, config_path, data, output_dir, args.epochs)[1:] + ["--disable_tqdm", "true"]


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def run_variant(variant: str, pretrain_argv: list[str]) -> dict[str, Any]:
    """In this (fresh) process: build the job as `hf-vlp pretrain` does, then time one variant."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import set_seed

    from trainers.cli.building import build_model_and_processor
    from trainers.cli.jobs import build_trainer, prepare_job

    model_args, data_args, training_args, _ = prepare_job(pretrain_argv, "bench_loader", __doc__)
    set_seed(training_args.seed)
    model, processor = build_model_and_processor(model_args, pretraining=True)
    trainer, _, _ = build_trainer(model, processor, data_args, training_args)
    if variant == "pretrain":
        result = trainer.train()
        return {"steps": result.global_step, "seconds": result.metrics["train_runtime"]}

    epoch = list(trainer.get_train_dataloader())
    if variant == "trainer_cached":
        # `batch_size=None` hands each cached batch over as it is; one process, nothing to decode
        trainer.get_train_dataloader = lambda: DataLoader(epoch, batch_size=None, collate_fn=_as_is)
        result = trainer.train()
        return {"steps": result.global_step, "seconds": result.metrics["train_runtime"]}

    batches = epoch * int(training_args.num_train_epochs)
    trainer.create_optimizer()
    optimizer = trainer.optimizer
    model.train()
    start = time.perf_counter()
    for batch in batches:
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        if training_args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), training_args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"steps": len(batches), "seconds": time.perf_counter() - start}


def _child(variant: str, pretrain_argv: list[str], log: Path) -> dict[str, Any]:
    """Run one variant in a fresh process (so neither inherits the other's warm caches or worker processes)."""
    result_file = log.with_name(log.name + ".json")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--result", str(result_file), "--"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w", encoding="utf-8") as handle:
        subprocess.run(command + pretrain_argv, stdout=handle, stderr=subprocess.STDOUT, check=True, env=env)
    return json.loads(result_file.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (ABBA)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--wd", type=float, default=0.05)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI; numbers mean nothing")
    parser.add_argument("--deb", default=None, help="a downloaded tuxpaint-stamps-default .deb")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=str(RESULTS_DIR / "loader_real_data.json"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("pretrain_argv", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        Path(args.result).write_text(json.dumps(run_variant(args.child, args.pretrain_argv)))
        return {}
    if args.smoke:
        args.epochs, args.rounds, args.batch, args.width, args.layers, args.image_size = 1, 1, 32, 32, 1, 32

    data = build_real_data(deb=args.deb)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_loader-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = model_config(args.width, args.layers, args.image_size, args.max_length)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    seconds_per_step: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_index in range(args.rounds):
        order = VARIANTS if round_index % 2 == 0 else tuple(reversed(VARIANTS))
        for variant in order:
            output = workdir / f"{variant}_{round_index}"
            pretrain_argv = pretrain_arguments(args, config_path, data, output)
            result = _child(variant, pretrain_argv, workdir / f"{variant}_{round_index}.log")
            seconds_per_step[variant].append(result["seconds"] / result["steps"])
            print(f"round {round_index} {variant}: {seconds_per_step[variant][-1]:.3f} s/step", flush=True)

    def ratio_to(baseline: str) -> dict[str, Any]:
        rounds = [p / b for p, b in zip(seconds_per_step["pretrain"], seconds_per_step[baseline])]
        return {"median": statistics.median(rounds), "rounds": rounds}

    report = {
        "date": BENCH_DATE,
        "command": " ".join(["python", "benchmarks/bench_loader.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info("cpu"),
        "data": data.stats,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "child", "result", "pretrain_argv")},
        "model_config": config,
        "seconds_per_step": seconds_per_step,
        "pretrain_to_trainer_cached": ratio_to("trainer_cached"),
        "pretrain_to_cached": ratio_to("cached"),
    }
    labels = {
        "pretrain": "hf-vlp pretrain (DataLoader, default workers)",
        "trainer_cached": "the same Trainer on cached batches",
        "cached": "bare loop on cached batches",
    }
    print_table(
        f"Step time on the real benchmark ({args.rounds} interleaved rounds of {args.epochs} epochs, batch {args.batch}, "
        f"towers {args.layers} x {args.width}, {args.image_size} px, 1 torch thread)",
        ["variant", "s/step (median)", "pretrain / variant (median of rounds)"],
        [
            [labels[name], f"{statistics.median(seconds_per_step[name]):.3f}", fmt_ratio(ratio_to(name)["median"])]
            for name in VARIANTS
        ],
    )
    write_report(args.output, report)
    return report


if __name__ == "__main__":
    main()
