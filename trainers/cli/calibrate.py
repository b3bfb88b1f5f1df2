"""`hf-vlp calibrate MODEL --eval-dir DIR`: fit the model's match probability on held-out pairs, store it in its config.

A front over `trainers.calibration.calibrate_match_probability`: any evaluation source of `hf-vlp evaluate`
(`--eval-dir`, `--eval-file`, `--dataset` with `--eval-split`) gives the pairs. The fit goes into `config.json` of
MODEL (only that file is rewritten) or of `--output-dir` (a full copy), and the report, with the reliability
tables, into `calibration.json` next to it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path


__all__ = ["calibrate_main"]


def calibrate_main(argv: Sequence[str]) -> int:
    """`hf-vlp calibrate MODEL --eval-dir DIR [--output-dir OUT]`: prints ECE before/after and the fitted values."""
    from transformers import HfArgumentParser

    from ..arguments import DataArguments

    parser = HfArgumentParser(DataArguments, prog="hf-vlp calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="folder of a saved hf-vlp model and processor")
    parser.add_argument("--output-dir", "--output_dir", default=None, help="save a calibrated copy here instead")
    parser.add_argument("--negatives-per-image", "--negatives_per_image", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random negatives")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=64)
    data_args, options = parser.parse_args_into_dataclasses(args=list(argv))

    import torch
    from transformers import AutoModel, AutoProcessor

    import hf_vlp  # noqa: F401  (registers the Auto classes)

    from ..calibration import calibrate_match_probability
    from ..evaluation import EvalRuntime
    from .sources import build_eval_sets

    gallery, _ = build_eval_sets(data_args)
    if gallery is None:
        print(
            "hf-vlp calibrate: no evaluation data (--eval-dir, --eval-file or --dataset with --eval-split)",
            file=sys.stderr,
        )
        return 1
    try:
        model = AutoModel.from_pretrained(options.model)
        processor = AutoProcessor.from_pretrained(options.model)
    except (OSError, ValueError) as error:
        print(f"hf-vlp calibrate: cannot load {options.model}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    runtime = EvalRuntime(device=torch.device("cpu"), batch_size=options.batch_size)
    report = calibrate_match_probability(model, gallery, processor, runtime, options.negatives_per_image, options.seed)
    target = Path(options.output_dir or options.model)
    if options.output_dir:
        model.save_pretrained(target)
        processor.save_pretrained(target)
    else:
        model.config.save_pretrained(target)
    (target / "calibration.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(
        f"calibrated {options.model}: scale {report['scale']:.3f}, bias {report['bias']:.3f}; expected calibration "
        f"error on {report['num_held_out_pairs']} held-out pairs {report['ece_before']:.3f} -> {report['ece_after']:.3f}"
        f" (written to {target / 'config.json'})"
    )
    if report["scale"] <= 0:
        print(
            "hf-vlp calibrate: warning: the fitted scale is not positive — on these pairs the model scores "
            "non-matching captions at least as high as matching ones, so the probability does not grow with "
            "similarity; train or fine-tune the model further before thresholding it",
            file=sys.stderr,
        )
    return 0
