"""`hf-vlp convert`: a transformers ChineseCLIPModel checkpoint -> an hf-vlp dual-encoder folder.

A thin argparse front over `hf_vlp.convert.convert_chinese_clip` (the model side has no argument parsing).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


__all__ = ["convert_main"]


def convert_main(argv: Sequence[str]) -> int:
    """`hf-vlp convert SOURCE OUTPUT_DIR`: a transformers ChineseCLIPModel checkpoint -> DualEncoderModel folder."""
    parser = argparse.ArgumentParser(
        prog="hf-vlp convert",
        description="Convert a Chinese-CLIP checkpoint (e.g. OFA-Sys/chinese-clip-vit-base-patch16) into an hf-vlp "
        "dual encoder with identical embeddings, saved as a Hub-ready folder.",
    )
    parser.add_argument("source", help="Hub id or local folder of a transformers ChineseCLIPModel checkpoint")
    parser.add_argument("output_dir", help="folder to write the converted model (and processor) to")
    parser.add_argument("--revision", default=None, help="Hub revision of the source (pin it for reproducibility)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    args = parser.parse_args(list(argv))

    import torch

    from hf_vlp.convert import convert_chinese_clip

    hub_kwargs = {"revision": args.revision} if args.revision else {}
    model = convert_chinese_clip(args.source, args.output_dir, dtype=getattr(torch, args.dtype), **hub_kwargs)
    size = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"converted {args.source} -> {args.output_dir} ({size:.1f}M parameters)")
    return 0
