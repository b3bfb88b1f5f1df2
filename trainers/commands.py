"""Small `hf-vlp` subcommands: `convert` (Chinese-CLIP -> hf-vlp) and `demo` (the Gradio Space).

They live on the training side because the model side (`hf_vlp`) has no argument parsing; each is a thin
argparse front over a public function.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path


__all__ = ["SPACE_APP", "convert_main", "demo_main"]

SPACE_APP = Path(__file__).resolve().parent.parent / "spaces" / "app.py"


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


def demo_main(argv: Sequence[str]) -> int:
    """`hf-vlp demo`: the Gradio Space of this checkout, loaded by file path.

    By path, not by import: Hugging Face Spaces have a `spaces` module of their own, so our `spaces/` folder is
    deliberately not a package.
    """
    if not SPACE_APP.is_file():
        print(f"hf-vlp demo: {SPACE_APP} not found; run it from a source checkout of hf-vlp", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("hf_vlp_space_app", SPACE_APP)
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    return app.main(list(argv), prog="hf-vlp demo")
