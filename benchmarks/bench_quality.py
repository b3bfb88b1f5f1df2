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

from benchmarks.common import BENCH_DATE, REPO_ROOT, RESULTS_DIR, fmt_ratio, machine_info, print_table, write_report
from benchmarks.real_data import build_real_data


# One switch per row: name -> extra `hf-vlp pretrain` arguments. `{fusion_config}` and `{fusion_model}` are filled in
# with the fusion model's config and the folder the `fusion_rerank` row trained (the DiDE teacher); `{vit_tower}`
# and `{vit_cls_pooling}` with a transformers ViT of the same size (a sub-config override replaces the whole
# sub-config, so the override spells it out).
ABLATIONS: dict[str, list[str]] = {
    # the trainer defaults, one reverted at a time
    "no_warmup": ["--warmup_steps", "0"],
    "cosine": ["--lr_scheduler_type", "cosine"],
    "stock_decay_groups": ["--stock_weight_decay_groups"],
    "text_cls_pooling": ["--config-overrides", '{"text_pooling": "cls"}'],
    "workers_0": ["--dataloader_num_workers", "0"],
    "max_length_padding": ["--text-padding", "max_length"],
    # a transformers ViT tower (pooled by its own tanh pooler, the default), and pooled by its class token
    "vit_tower": ["--config-overrides", "{vit_tower}"],
    "vit_cls_pooling": ["--config-overrides", "{vit_cls_pooling}"],
    # the papers' recipe, one switch at a time
    "patch_dropout_0.5": ["--config-overrides", '{"vision_patch_dropout": 0.5}'],
    "sigmoid_loss": ["--config-overrides", '{"contrastive_loss": "sigmoid"}'],
    "augmentation": ["--train_augmentation"],
    "filip": ["--config-overrides", '{"similarity": "token_wise"}'],
    "fusion_rerank": ["--model-config", "{fusion_config}"],
    # DiDE's attention and ITC soft labels (its ITM soft labels run the teacher's cross encoder on a batch x batch
    # grid: ~6x the step time at this size, so the row leaves them out)
    "dide_student": ["--distill-teacher", "{fusion_model}", "--distill-itm-weight", "0"],
}
# Rows that only exist once another row has run.
DEPENDS_ON = {"dide_student": "fusion_rerank"}


def model_config(width: int, layers: int, image_size: int, max_length: int) -> dict[str, Any]:
    """A fresh dual encoder: BERT `layers` x `width` + CLIP-ViT `layers` x `width`, patch 8, projection 128, the
    builtin Chinese vocabulary. The issue's size is width 192; the README's run says which it used."""
    from hf_vlp.models.presets import TINY_VOCAB_SIZE

    tower = {
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": 4 * width,
    }
    return {
        "model_type": "hf_vlp_dual_encoder",
        "projection_dim": 128,
        "text_config": {
            "model_type": "bert",
            "vocab_size": TINY_VOCAB_SIZE,
            "max_position_embeddings": max(64, max_length),
            **tower,
        },
        "vision_config": {"model_type": "clip_vision_model", "image_size": image_size, "patch_size": 8, **tower},
    }


def fusion_config(dual: dict[str, Any]) -> dict[str, Any]:
    """An ALBEF-style fusion encoder on the same towers (2 fusion layers): the `fusion_rerank` row and DiDE teacher."""
    return {
        "model_type": "hf_vlp_fusion_encoder",
        "projection_dim": dual["projection_dim"],
        "num_fusion_layers": 2,
        "text_config": dual["text_config"],
        "vision_config": dual["vision_config"],
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


def _log_of(folder: Path) -> Path:
    """The log next to a run's folder (`with_suffix` would eat the `.5` of `patch_dropout_0.5`)."""
    return folder.parent / f"{folder.name}.log"


def _hf_vlp(args_list: list[str], log: Path, pythonpath: str | None = None) -> None:
    """Run `hf-vlp ...` in a subprocess, from this checkout or `pythonpath`'s, its output into `log`."""
    command = [sys.executable, "-m", "trainers.cli", *args_list]
    env = {**os.environ, "PYTHONPATH": str(Path(pythonpath).resolve()) if pythonpath else str(REPO_ROOT)}
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(shlex.join(command) + "\n")
        handle.flush()
        # `python -m` puts the working directory first on sys.path: run from the checkout whose code is meant
        cwd = Path(pythonpath).resolve() if pythonpath else REPO_ROOT
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False, env=env, cwd=cwd)
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
        _log_of(output_dir),
    )
    return json.loads((output_dir / "eval_results.json").read_text())


def _pretrain_command(args, config_path: Path, data, output_dir: Path, epochs: int) -> list[str]:
    return [
        "pretrain",
        "--model-config",
        str(config_path),
        "--train-dir",
        str(data.train_dir),
        "--num_train_epochs",
        str(epochs),
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
    ] + (["--max-train-samples", str(args.max_train_samples)] if args.max_train_samples else [])


def time_epochs(args, config_path: Path, data, workdir: Path, rows: dict[str, list[str]]) -> dict[str, Any]:
    """Seconds per training epoch of ours and of each row, interleaved (ABBA rounds) so that the background load of a
    shared machine hits every variant alike; the ratio is the median of the per-round ratios to ours."""
    import statistics

    variants = {"ours": [], **rows}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.timing_rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            output = workdir / f"timing_{name}_{round_index}"
            command = _pretrain_command(args, config_path, data, output, args.timing_epochs) + variants[name]
            _hf_vlp(command, _log_of(output))
            runtime = json.loads((output / "train_results.json").read_text())["train_runtime"]
            seconds[name].append(runtime / args.timing_epochs)
    return {
        name: {
            "seconds_per_epoch": statistics.median(values),
            "ratio_to_ours": statistics.median(v / o for v, o in zip(values, seconds["ours"])),
            "rounds": values,
        }
        for name, values in seconds.items()
    }


def run_ours(
    args, config_path: Path, data, output_dir: Path, extra: list[str], pythonpath: str | None = None
) -> dict[str, Any]:
    """`hf-vlp pretrain` with its defaults and the shared budget; `extra` is the ablation's switch."""
    command = _pretrain_command(args, config_path, data, output_dir, args.epochs) + ["--eval-dir", str(data.eval_dir)]
    if (output_dir / "eval_results.json").is_file() and args.reuse:
        print(f"reusing {output_dir}", flush=True)
    else:
        _hf_vlp(command + extra, _log_of(output_dir), pythonpath)
    train = json.loads((output_dir / "train_results.json").read_text())
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    return {
        "seconds_per_epoch": train["train_runtime"] / args.epochs,
        "last_loss": train.get("train_loss"),
        "metrics": metrics,
    }


def _row_arguments(name: str, workdir: Path, config: dict[str, Any]) -> list[str]:
    """A row's arguments with its placeholders (a whole argument `{name}`) filled in."""
    vit = {**config["vision_config"], "model_type": "vit"}
    values = {
        "fusion_config": str(workdir / "fusion_config.json"),
        "fusion_model": str(workdir / "ablation_fusion_rerank" / "model"),
        "vit_tower": json.dumps({"vision_config": vit}),
        "vit_cls_pooling": json.dumps({"vision_config": vit, "vision_pooling": "cls"}),
    }
    return [
        values.get(arg[1:-1], arg) if arg.startswith("{") and arg.endswith("}") else arg for arg in ABLATIONS[name]
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--wd", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument(
        "--ablations", default="all", help=f"comma-separated rows ({', '.join(ABLATIONS)}), 'all', 'none'"
    )
    parser.add_argument("--recipe", action="append", default=[], help="NAME=ARGS: an extra row (e.g. the best recipe)")
    parser.add_argument(
        "--compare-checkout", default=None, help="another checkout of hf-vlp (e.g. before a change): one more row"
    )
    parser.add_argument(
        "--timing", default=None, help="rows whose seconds per epoch are compared with ours in interleaved runs"
    )
    parser.add_argument(
        "--timing-epochs",
        type=int,
        default=None,
        help="epochs per timed run (default: --epochs, the budget; a run's fixed start-up cost weighs on short runs)",
    )
    parser.add_argument("--timing-rounds", type=int, default=2)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--ablations-only",
        action="store_true",
        help="only the ablation rows (with --reuse: a second process filling in rows of the same run)",
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI; numbers mean nothing")
    parser.add_argument("--deb", default=None, help="a downloaded tuxpaint-stamps-default .deb")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the rows a previous run left in --workdir (same settings): add rows to a run without redoing it",
    )
    parser.add_argument("--output", default=str(RESULTS_DIR / "quality_real_data.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.max_train_samples, args.ablations = 1, 64, "none"
        args.batch, args.width, args.layers, args.image_size = 32, 32, 1, 32
    args.timing_epochs = args.timing_epochs or args.epochs

    data = build_real_data(deb=args.deb)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_quality-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = model_config(args.width, args.layers, args.image_size, args.max_length)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    (workdir / "fusion_config.json").write_text(json.dumps(fusion_config(config), indent=2))
    chance = 100.0 * sum(min(k, data.stats["eval_images"]) for k in (1, 5, 10)) / 3 / data.stats["eval_images"]
    report: dict[str, Any] = {
        "date": BENCH_DATE,
        "command": shlex.join(
            ["python", "benchmarks/bench_quality.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine_info("cpu"),
        "data": data.stats,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "model_config": config,
        "random_ranking_mean_recall_approx": chance,
        "rows": {},
    }
    rows: list[list[str]] = []
    ref_recall = None

    def add_row(name: str, label: str, result: dict[str, Any]) -> None:
        nonlocal ref_recall
        recall = result["metrics"]["eval_mean_recall"]
        ref_recall = recall if ref_recall is None and name == "reference" else ref_recall
        report["rows"][name] = result
        ratio = fmt_ratio(recall / ref_recall) if ref_recall else "-"
        rows.append([label, f"{recall:.1f}", ratio, f"{result['seconds_per_epoch']:.1f}"])
        print(f"{name}: mean recall {recall:.1f} ({ratio} the reference)", flush=True)

    if not args.skip_reference:
        saved = workdir / "reference.json"
        if args.reuse and saved.is_file():
            reference = json.loads(saved.read_text())
        else:
            reference = run_reference(args, config, data, workdir)
            reference["metrics"] = evaluate_folder(reference["model_dir"], data, args, workdir / "reference_eval")
            saved.write_text(json.dumps(reference, indent=2))
        add_row("reference", "reference: ChineseCLIPModel, plain AdamW loop", reference)
    if not args.ablations_only:
        add_row("ours", "hf-vlp pretrain, defaults", run_ours(args, config_path, data, workdir / "ours", []))
    if args.compare_checkout:
        result = run_ours(args, config_path, data, workdir / "compare", [], pythonpath=args.compare_checkout)
        add_row("compare_checkout", f"hf-vlp pretrain, defaults, at {args.compare_checkout}", result)

    names = (
        [] if args.ablations == "none" else list(ABLATIONS) if args.ablations == "all" else args.ablations.split(",")
    )
    unknown = [name for name in names if name not in ABLATIONS]
    if unknown:
        raise SystemExit(f"bench_quality: unknown ablation rows {unknown}; known: {', '.join(ABLATIONS)}")
    extra_rows = [
        (name, _row_arguments(name, workdir, config)) for name in names if DEPENDS_ON.get(name, name) in names
    ]
    extra_rows += [(spec.split("=", 1)[0], shlex.split(spec.split("=", 1)[1])) for spec in args.recipe]
    for name, extra in extra_rows:
        result = run_ours(args, config_path, data, workdir / f"ablation_{name}", extra)
        add_row(name, f"  {name}: {shlex.join(extra).replace(str(workdir) + '/', '')}", {"args": extra, **result})

    if args.timing:
        timing = time_epochs(
            args, config_path, data, workdir, {n: _row_arguments(n, workdir, config) for n in args.timing.split(",")}
        )
        report["timing"] = timing
        print_table(
            f"Seconds per epoch, {args.timing_rounds} interleaved rounds of {args.timing_epochs} epochs",
            ["variant", "s/epoch (median)", "vs ours (median of rounds)"],
            [[name, f"{t['seconds_per_epoch']:.1f}", fmt_ratio(t["ratio_to_ours"])] for name, t in timing.items()],
        )

    print_table(
        f"Real-data quality (Tux Paint zh: {data.stats['train_images']} train / {data.stats['eval_images']} eval "
        f"images; random ranking ~{chance:.1f}; {args.epochs} epochs, batch {args.batch}, lr {args.lr}, "
        f"towers {args.layers} x {args.width}, {args.image_size} px)",
        ["run", "mean recall", "vs reference", "s/epoch"],
        rows,
    )
    write_report(args.output, report)
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = main()["rows"].values()
    sys.exit(0 if all(math.isfinite(row["metrics"]["eval_mean_recall"]) for row in rows) else 1)
