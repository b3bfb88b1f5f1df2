"""`hf-vlp export onnx MODEL OUT_DIR`: a thin command over `hf_vlp.export.export_onnx`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import require_modules


__all__ = ["export_main"]


def export_main(argv: Sequence[str], prog: str = "hf-vlp export") -> int:
    """Export a model's image and text encoders to ONNX; an expected failure is one line on stderr, exit status 1."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a model's encoders for serving: image_encoder.onnx and text_encoder.onnx (dynamic batch "
        "and text length, normalised embeddings), onnx_config.json and the tokenizer files.",
    )
    sub = parser.add_subparsers(dest="format", required=True)
    onnx = sub.add_parser("onnx", help="ONNX graphs for ONNX Runtime")
    onnx.add_argument("model", help="saved hf-vlp model folder or Hub id")
    onnx.add_argument("output_dir", help="folder for the graphs, onnx_config.json and the processor")
    onnx.add_argument("--revision", default=None, help="Hub revision of the model")
    onnx.add_argument("--opset", type=int, default=17)
    onnx.add_argument("--quantize", choices=("int8",), default=None, help="also write dynamic-int8 graphs")
    args = parser.parse_args(list(argv))
    require_modules(f"{prog} onnx", ("onnx", "onnxruntime"), "deploy")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars would bury the one-line answer

    from hf_vlp.export import export_onnx

    try:
        result = export_onnx(
            args.model, args.output_dir, revision=args.revision, opset=args.opset, quantize=args.quantize
        )
    except (OSError, ValueError) as error:
        print(f"{prog} onnx: {error}", file=sys.stderr)
        return 1
    files = [result.image_encoder.name, result.text_encoder.name, *result.config.get("quantized", {}).values()]
    print(f"exported {', '.join(f for f in files if f.endswith('.onnx'))} to {result.output_dir}")
    return 0
