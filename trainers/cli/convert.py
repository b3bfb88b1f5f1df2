"""`hf-vlp convert`: a Chinese-CLIP checkpoint -> an hf-vlp dual-encoder folder.

Two sources, told apart by what `SOURCE` is:

* a checkpoint file of Chinese-CLIP's own training script (`epoch_latest.pt`), with the model names it was trained
  with: `hf-vlp convert epoch_latest.pt OUT --vision-model ViT-B-16 --text-model RoBERTa-wwm-ext-base-chinese`;
* a transformers `ChineseCLIPModel` folder or Hub id: `hf-vlp convert OFA-Sys/chinese-clip-vit-base-patch16 OUT`.

A thin argparse front over `hf_vlp.convert` (the model side has no argument parsing). Expected failures (a file
that is no checkpoint, wrong model names, cn-clip not installed) are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


__all__ = ["convert_main"]


def convert_main(argv: Sequence[str]) -> int:
    """`hf-vlp convert SOURCE OUTPUT_DIR [--vision-model NAME --text-model NAME]` -> DualEncoderModel folder."""
    parser = argparse.ArgumentParser(
        prog="hf-vlp convert",
        description="Convert a Chinese-CLIP checkpoint into an hf-vlp dual encoder with identical embeddings, saved "
        "as a Hub-ready folder: a checkpoint file of Chinese-CLIP's training script (epoch_latest.pt; give "
        "--vision-model and --text-model, and install cn-clip: pip install --no-deps cn-clip) or a transformers "
        "ChineseCLIPModel (e.g. OFA-Sys/chinese-clip-vit-base-patch16).",
    )
    parser.add_argument(
        "source", help="Chinese-CLIP training checkpoint (.pt), or Hub id / folder of a transformers ChineseCLIPModel"
    )
    parser.add_argument("output_dir", help="folder to write the converted model (and processor) to")
    parser.add_argument("--vision-model", default=None, help="for a .pt checkpoint: cn-clip vision model (ViT-B-16)")
    parser.add_argument(
        "--text-model", default=None, help="for a .pt checkpoint: cn-clip text model (RoBERTa-wwm-ext-base-chinese)"
    )
    parser.add_argument("--revision", default=None, help="Hub revision of the source (pin it for reproducibility)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    args = parser.parse_args(list(argv))

    import torch

    from hf_vlp.cn_clip_assets import CnClipNotInstalledError
    from hf_vlp.convert import ConversionError, convert_chinese_clip, convert_chinese_clip_checkpoint

    dtype = getattr(torch, args.dtype)
    is_checkpoint_file = Path(args.source).is_file()
    if is_checkpoint_file != (args.vision_model is not None and args.text_model is not None):
        reason = (
            "a Chinese-CLIP training checkpoint needs --vision-model and --text-model (e.g. --vision-model ViT-B-16 "
            "--text-model RoBERTa-wwm-ext-base-chinese)"
            if is_checkpoint_file
            else f"--vision-model/--text-model go with a checkpoint file, and {args.source} is not a file"
        )
        print(f"hf-vlp convert: {reason}", file=sys.stderr)
        return 1
    try:
        if is_checkpoint_file:
            model = convert_chinese_clip_checkpoint(
                args.source, args.output_dir, args.vision_model, args.text_model, dtype=dtype
            )
        else:
            hub_kwargs = {"revision": args.revision} if args.revision else {}
            model = convert_chinese_clip(args.source, args.output_dir, dtype=dtype, **hub_kwargs)
    except (ConversionError, CnClipNotInstalledError) as error:
        print(f"hf-vlp convert: {error}", file=sys.stderr)
        return 1
    size = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"converted {args.source} -> {args.output_dir} ({size:.1f}M parameters)")
    return 0
