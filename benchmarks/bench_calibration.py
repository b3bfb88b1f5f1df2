"""Is `hf-vlp calibrate`'s match probability right as often as it says, on real data nobody here wrote?

One run: a dual encoder is trained by `hf-vlp pretrain` on the Tux Paint Chinese set's training split
(`benchmarks/real_data.py`; the model size and budget of `bench_quality.py`), then `hf-vlp calibrate` fits the
temperature and bias on the held-out evaluation split. The pairs are every (image, caption) positive and, per
image, hard (most similar) and random negatives; even-numbered images fit, odd ones measure. The table is the
expected calibration error (10 equal-width bins) on the measuring half before (the cosine read as a probability,
what users threshold today) and after, with both reliability tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.bench_quality import _hf_vlp, model_config, run_ours
from benchmarks.real_data import build_real_data
from trainers.cli.pretrain import FINAL_MODEL_SUBDIR


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
    parser.add_argument("--negatives-per-image", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI; numbers mean nothing")
    parser.add_argument("--deb", default=None, help="a downloaded tuxpaint-stamps-default .deb")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=str(common.RESULTS_DIR / "calibration_real_data.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.max_train_samples, args.batch = 1, 64, 32

    data = build_real_data(deb=args.deb)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_calibration-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(model_config(args.max_length, args.image_size), indent=2))
    trained = run_ours(args, config_path, data, workdir / "ours", [])
    model_dir = workdir / "ours" / FINAL_MODEL_SUBDIR
    _hf_vlp(
        ["calibrate", str(model_dir), "--eval-dir", str(data.eval_dir), "--negatives-per-image",
         str(args.negatives_per_image), "--seed", str(args.seed)],
        workdir / "calibrate.log",
    )  # fmt: skip
    calibration = json.loads((model_dir / "calibration.json").read_text())

    common.print_table(
        f"Match-probability calibration (Tux Paint zh: trained on {data.stats['train_images']} images, "
        f"fitted on {calibration['num_fit_pairs']} / measured on {calibration['num_held_out_pairs']} held-out pairs; "
        f"retrieval mean recall {trained['metrics']['eval_mean_recall']:.1f})",
        ["", "ECE", "scale", "bias"],
        [
            ["before (cosine as probability)", f"{calibration['ece_before']:.3f}", "-", "-"],
            ["after (hf-vlp calibrate)", f"{calibration['ece_after']:.3f}", f"{calibration['scale']:.2f}",
             f"{calibration['bias']:.2f}"],
        ],
    )  # fmt: skip
    for name in ("before", "after"):
        common.print_table(
            f"Reliability {name}",
            ["bin", "pairs", "mean probability", "match rate"],
            [
                [row["bin"], row["count"], f"{row['confidence']:.3f}", f"{row['accuracy']:.3f}"]
                for row in calibration[f"reliability_{name}"]
            ],
        )
    report = {
        "machine": common.machine_info("cpu"),
        "data": data.stats,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "training": trained,
        "calibration": calibration,
    }
    common.write_report(args.output, report)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
