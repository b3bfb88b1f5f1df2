"""Where does FLIP patch dropout's time go? A training step of bench_quality's model, split into its parts, with
`vision_patch_dropout` 0 and 0.5, measured in the same process.

`bench_quality.py --timing patch_dropout_0.5` says how much shorter an epoch of `hf-vlp pretrain` gets; this says why
not shorter still: it times, per setting, the whole step (forward, contrastive loss, backward, AdamW), the vision
tower alone (image features, forward + backward), the text tower alone, and the optimizer step, on one fixed batch
(random token ids, all `--max-length` long, and random pixels). Patch dropout can only shrink the vision tower's
share; the rest is the floor of the ratio.

    python benchmarks/bench_patch_dropout.py --width 192 --rounds 6
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import model_config
from benchmarks.common import (
    add_run_arguments,
    benchmark_parser,
    count_flops,
    fmt_ratio,
    interleaved_rates,
    output_path,
    print_table,
    report_head,
    torch_threads,
    write_report,
)


RATES = (0.0, 0.5)
PARTS = ("step", "vision", "text", "optimizer")


def _forward_backward(batch: dict[str, Any]) -> dict[str, Callable[[Any], None]]:
    """Forward and backward of the whole model and of each tower, on `batch`, for any model passed in."""

    def backward_of(features) -> None:
        getattr(features, "pooler_output", features).sum().backward()

    return {
        "step": lambda model: model(**batch, return_loss=True).loss.backward(),
        "vision": lambda model: backward_of(model.get_image_features(pixel_values=batch["pixel_values"])),
        "text": lambda model: backward_of(
            model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        ),
    }


def _parts(model, optimizer, batch: dict[str, Any]) -> dict[str, Callable[[], int]]:
    """One callable per part; each runs it once and returns 1 (one step's worth of work). The step includes AdamW."""
    passes = _forward_backward(batch)

    def step() -> int:
        passes["step"](model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return 1

    def tower(name: str) -> Callable[[], int]:
        def run() -> int:
            passes[name](model)
            model.zero_grad(set_to_none=True)
            return 1

        return run

    def optimizer_step() -> int:
        for parameter in model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return 1

    return {"step": step, "vision": tower("vision"), "text": tower("text"), "optimizer": optimizer_step}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (ABBA) per part")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (bench_quality trains on 1)")
    add_run_arguments(parser, "tiny towers and batch, 2 rounds; numbers mean nothing", "patch_dropout")
    args = parser.parse_args(argv)
    if args.smoke:
        args.width, args.layers, args.image_size, args.batch, args.rounds = 32, 1, 32, 8, 2

    from hf_vlp import DualEncoderConfig, DualEncoderModel

    config = model_config(args.width, args.layers, args.image_size, args.max_length)
    values = {key: value for key, value in config.items() if key != "model_type"}
    generator = torch.Generator().manual_seed(args.seed)
    vocab = config["text_config"]["vocab_size"]
    batch = {
        "input_ids": torch.randint(5, vocab, (args.batch, args.max_length), generator=generator),
        "attention_mask": torch.ones(args.batch, args.max_length, dtype=torch.long),
        "pixel_values": torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator),
    }
    variants, flops = {}, {}
    for rate in RATES:
        torch.manual_seed(args.seed)
        model = DualEncoderModel(DualEncoderConfig(**values, vision_patch_dropout=rate)).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for part, run in _parts(model, optimizer, batch).items():
            variants[f"{part}@{rate}"] = run
        for part, forward_backward in _forward_backward(batch).items():
            flops[f"{part}@{rate}"] = count_flops(model, forward_backward)
    with torch_threads(args.threads):
        for run in variants.values():  # warm-up: first calls allocate
            run()
        rates = interleaved_rates(variants, args.rounds)
    seconds = {name: 1.0 / summary["median"] for name, summary in rates.items()}
    ratios = {part: seconds[f"{part}@0.5"] / seconds[f"{part}@0.0"] for part in PARTS}
    flop_ratios = {part: flops[f"{part}@0.5"] / flops[f"{part}@0.0"] for part in PARTS if f"{part}@0.0" in flops}
    report = {
        **report_head("patch_dropout", "cpu"),
        "command": " ".join(
            ["python", "benchmarks/bench_patch_dropout.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "config": {**vars(args), "model_config": config},
        "seconds": seconds,
        "ratio_dropout_over_full": ratios,
        "flops": flops,
        "flop_ratio_dropout_over_full": flop_ratios,
        "rates": rates,
    }
    print_table(
        f"One training step and its parts, batch {args.batch}, towers {args.layers} x {args.width}, "
        f"{args.image_size} px, {args.max_length} tokens, {args.threads} thread(s), median of {args.rounds} rounds",
        ["part", "s (patch dropout 0)", "s (patch dropout 0.5)", "0.5 / 0", "FLOPs 0.5 / 0"],
        [
            [
                part,
                f"{seconds[f'{part}@0.0']:.3f}",
                f"{seconds[f'{part}@0.5']:.3f}",
                fmt_ratio(ratios[part]),
                fmt_ratio(flop_ratios[part]) if part in flop_ratios else "-",
            ]
            for part in PARTS
        ],
    )
    write_report(output_path(args, "patch_dropout"), report)
    return report


if __name__ == "__main__":
    main()
