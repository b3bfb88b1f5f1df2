"""Does a fresh model trained by `hf-vlp pretrain` learn as well as the reference, on real data nobody here wrote?

The data is the Tux Paint Chinese set (`benchmarks/real_data.py`). In one run, at equal model size, data, epochs,
batch size and learning rate:

* **reference**: transformers' `ChineseCLIPModel`, freshly initialised, trained by a plain AdamW loop (constant
  learning rate, no clipping, no schedule) on pre-processed tensors — what a researcher writes in 30 lines;
* **ours**: `hf-vlp pretrain --model-config cfg.json --train-dir ... --eval-dir ...` through the CLI with its
  defaults, only the shared budget given on the command line;

both evaluated by the same code (`hf-vlp evaluate` on the held-out split; the reference is converted with
`hf_vlp.convert.chinese_clip_to_dual_encoder`, which is exact). Then an ablation table: each row is ours with one
switch changed (`--ablations`), from the same run, so every row is comparable to the two above.

The reference samples one caption per image per epoch, as `hf-vlp pretrain`'s default `caption_strategy=sample`
does, with the same tokenizer and image preprocessing, so the data is equal. Both use one torch thread (the machine
has 2 shared cores; ours spends the other on its DataLoader worker, the reference needs none: its tensors are
prepared before the clock starts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, fmt_ratio, machine_info, print_table, write_report
from benchmarks.real_data import build_real_data


# One switch per row: (name, extra `hf-vlp pretrain` arguments, what it shows).
ABLATIONS: dict[str, tuple[list[str], str]] = {
    "no_warmup": (["--warmup_steps", "0"], "no learning-rate warm-up"),
    "linear_decay": (["--lr_scheduler_type", "linear"], "the stock Trainer's linear decay instead of cosine"),
    "decay_all_params": (
        ["--no_decay_exempt"],
        "weight decay on logit_scale, norms, biases and embeddings too (the stock Trainer's groups)",
    ),
    "vit_tower": (
        ["--config-overrides", '{"vision_config": {"model_type": "vit"}}'],
        "a transformers ViT vision tower instead of CLIP's (tanh pooler skipped by default)",
    ),
    "vit_tanh_pooler": (
        ["--config-overrides", '{"vision_config": {"model_type": "vit"}, "vision_pooling": "pooler"}'],
        "ViT tower pooled by its tanh pooler",
    ),
    "workers_0": (["--dataloader_num_workers", "0"], "images decoded in the training process"),
}


def model_config(max_length: int, image_size: int) -> dict[str, Any]:
    """The issue's size: BERT 4 x 192 + ViT 4 x 192, 64 px, patch 8, projection 128 (the builtin vocabulary)."""
    from hf_vlp.models.presets import TINY_VOCAB_SIZE

    return {
        "model_type": "hf_vlp_dual_encoder",
        "projection_dim": 128,
        "text_config": {
            "model_type": "bert",
            "vocab_size": TINY_VOCAB_SIZE,
            "hidden_size": 192,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 768,
            "max_position_embeddings": max(64, max_length),
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 192,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 768,
            "image_size": image_size,
            "patch_size": 8,
        },
    }


def _reference_model(config: dict[str, Any]):
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    text = {k: v for k, v in config["text_config"].items() if k != "model_type"}
    vision = {k: v for k, v in config["vision_config"].items() if k != "model_type"}
    return ChineseCLIPModel(
        ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=config["projection_dim"])
    )


def _records(folder: Path) -> list[dict]:
    with open(folder / "metadata.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def run_reference(args, config: dict[str, Any], data, workdir: Path) -> dict[str, Any]:
    """The plain loop; returns its timing and the folder of the converted model."""
    import torch
    from PIL import Image

    from hf_vlp import VLPImageProcessor, VLPProcessor, build_chinese_tokenizer
    from hf_vlp.convert import chinese_clip_to_dual_encoder

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    size = config["vision_config"]["image_size"]
    processor = VLPProcessor(VLPImageProcessor(size={"height": size, "width": size}), build_chinese_tokenizer())
    records = _records(data.train_dir)
    if args.max_train_samples:
        records = records[: args.max_train_samples]
    images = [Image.open(data.train_dir / r["file_name"]).convert("RGB") for r in records]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    captions = [r["captions"] for r in records]

    model = _reference_model(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    generator = torch.Generator().manual_seed(args.seed)
    losses, epoch_seconds = [], []
    for _ in range(args.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(records), generator=generator).tolist()
        for begin in range(0, len(order), args.batch):
            batch = order[begin : begin + args.batch]
            texts = [captions[i][int(torch.randint(len(captions[i]), (1,), generator=generator))] for i in batch]
            tokens = processor.tokenizer(
                texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"
            )
            loss = model(**tokens, pixel_values=pixel_values[batch], return_loss=True).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch_seconds.append(time.perf_counter() - start)
    converted = chinese_clip_to_dual_encoder(model.eval())
    folder = workdir / "reference_model"
    converted.save_pretrained(folder)
    processor.max_length = args.max_length
    processor.save_pretrained(folder)
    return {
        "model_dir": str(folder),
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
        "first_loss": losses[0],
        "last_loss": sum(losses[-5:]) / len(losses[-5:]),
    }


def _hf_vlp(args_list: list[str], log: Path) -> None:
    command = [sys.executable, "-m", "trainers.cli", *args_list]
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(shlex.join(command) + "\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log.read_text(encoding="utf-8").splitlines()[-15:]
        raise RuntimeError(f"hf-vlp failed ({result.returncode}), log {log}:\n" + "\n".join(tail))


def evaluate_folder(model_dir: str, data, args, output_dir: Path) -> dict[str, float]:
    _hf_vlp(
        [
            "evaluate",
            "--model",
            model_dir,
            "--eval-dir",
            str(data.eval_dir),
            "--max-length",
            str(args.max_length),
            "--output_dir",
            str(output_dir),
            "--report_to",
            "none",
            "--torch-threads",
            "1",
        ],
        output_dir.with_suffix(".log"),
    )
    return json.loads((output_dir / "eval_results.json").read_text())


def run_ours(args, config_path: Path, data, output_dir: Path, extra: list[str]) -> dict[str, Any]:
    """`hf-vlp pretrain` with its defaults and the shared budget; `extra` is the ablation's switch."""
    command = [
        "pretrain",
        "--model-config",
        str(config_path),
        "--train-dir",
        str(data.train_dir),
        "--eval-dir",
        str(data.eval_dir),
        "--num_train_epochs",
        str(args.epochs),
        "--per_device_train_batch_size",
        str(args.batch),
        "--learning_rate",
        str(args.lr),
        "--weight_decay",
        str(args.wd),
        "--max-length",
        str(args.max_length),
        "--seed",
        str(args.seed),
        "--output_dir",
        str(output_dir),
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--torch-threads",
        "1",
    ]
    if args.max_train_samples:
        command += ["--max-train-samples", str(args.max_train_samples)]
    _hf_vlp(command + extra, output_dir.with_suffix(".log"))
    train = json.loads((output_dir / "train_results.json").read_text())
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    return {
        "seconds_per_epoch": train["train_runtime"] / args.epochs,
        "last_loss": train.get("train_loss"),
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--wd", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument(
        "--ablations",
        default="all",
        help=f"comma-separated rows ({', '.join(ABLATIONS)}), 'all' or 'none'",
    )
    parser.add_argument("--recipe", action="append", default=[], help="NAME=ARGS: an extra row (a recipe)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI; numbers mean nothing")
    parser.add_argument("--deb", default=None, help="a downloaded tuxpaint-stamps-default .deb")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=str(RESULTS_DIR / "quality_real_data.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.max_train_samples, args.ablations = 1, 64, "none"
        args.batch = min(args.batch, 32)

    data = build_real_data(deb=args.deb)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_quality-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = model_config(args.max_length, args.image_size)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    chance = 100.0 * sum(min(k, data.stats["eval_images"]) for k in (1, 5, 10)) / 3 / data.stats["eval_images"]

    rows: list[list[Any]] = []
    report: dict[str, Any] = {
        "machine": machine_info("cpu"),
        "data": data.stats,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "model_config": config,
        "random_ranking_mean_recall_approx": chance,
    }
    reference = None
    if not args.skip_reference:
        reference = run_reference(args, config, data, workdir)
        reference["metrics"] = evaluate_folder(reference["model_dir"], data, args, workdir / "reference_eval")
        report["reference"] = reference
        rows.append(["reference (ChineseCLIPModel, plain loop)", reference["metrics"]["eval_mean_recall"], "1.00x"])
        rows[-1].append(f"{reference['seconds_per_epoch']:.1f}")
    ours = run_ours(args, config_path, data, workdir / "ours", [])
    report["ours"] = ours
    ref_recall = reference["metrics"]["eval_mean_recall"] if reference else None

    def ratio(recall: float) -> str:
        return fmt_ratio(recall / ref_recall) if ref_recall else "-"

    rows.append(
        ["hf-vlp pretrain (defaults)", ours["metrics"]["eval_mean_recall"], ratio(ours["metrics"]["eval_mean_recall"])]
    )
    rows[-1].append(f"{ours['seconds_per_epoch']:.1f}")

    names = (
        [] if args.ablations == "none" else list(ABLATIONS) if args.ablations == "all" else args.ablations.split(",")
    )
    extra_rows = [(name, ABLATIONS[name][0]) for name in names]
    extra_rows += [(spec.split("=", 1)[0], shlex.split(spec.split("=", 1)[1])) for spec in args.recipe]
    report["ablations"] = {}
    for name, extra in extra_rows:
        result = run_ours(args, config_path, data, workdir / f"ablation_{name}", extra)
        report["ablations"][name] = {"args": extra, **result}
        recall = result["metrics"]["eval_mean_recall"]
        rows.append([f"  {name}: {shlex.join(extra)}", recall, ratio(recall), f"{result['seconds_per_epoch']:.1f}"])
        print(f"{name}: mean recall {recall:.1f}", flush=True)

    print_table(
        f"Real-data quality (Tux Paint zh, {data.stats['train_images']} train / {data.stats['eval_images']} eval "
        f"images; random ranking ~{chance:.1f}; {args.epochs} epochs, batch {args.batch}, lr {args.lr})",
        ["run", "mean recall", "vs reference", "s/epoch"],
        [[r[0], f"{r[1]:.1f}", *r[2:]] for r in rows],
    )
    write_report(args.output, report)
    if not math.isfinite(ours["metrics"]["eval_mean_recall"]):
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
