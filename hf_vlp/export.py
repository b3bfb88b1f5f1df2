"""ONNX export of a model's two encoders, for serving with ONNX Runtime (or TensorRT and friends) without PyTorch.

Why: what users put in production is the encoder, called by a search service at batch 1 (a query) and at large
batches (indexing). Chinese-CLIP's deployment docs export at a fixed batch of 1; here both graphs take any batch and
the text graph any length up to the model's maximum, and `onnx_config.json` tells a client everything it needs to
feed them (input names, image size, mean / std, maximum text length, embedding size, output names).

Each graph returns what `encode_image` / `encode_text` return: the projected, L2-normalised global embedding, and for
token-wise (FILIP) models also the token embeddings and their mask. For a fusion model, the graphs are its contrastive
towers (the first retrieval stage); the cross encoder stays in PyTorch.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


__all__ = ["ONNX_CONFIG_FILE", "OnnxExport", "export_onnx", "quantize_onnx"]

ONNX_CONFIG_FILE = "onnx_config.json"
IMAGE_ENCODER_FILE = "image_encoder.onnx"
TEXT_ENCODER_FILE = "text_encoder.onnx"
DEFAULT_OPSET = 17


@dataclass
class OnnxExport:
    """Where the export went and what `onnx_config.json` says."""

    output_dir: Path
    image_encoder: Path
    text_encoder: Path
    config: dict[str, Any]


class _Encoder(nn.Module):
    """`encode_image` or `encode_text` as a graph with plain tensor outputs (global; + tokens and mask if token-wise)."""

    def __init__(self, model: nn.Module, modality: str, token_wise: bool) -> None:
        super().__init__()
        self.model = model
        self.modality = modality
        self.token_wise = token_wise

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.modality == "image":
            out = self.model.encode_image(inputs[0])
        else:
            out = self.model.encode_text(input_ids=inputs[0], attention_mask=inputs[1])
        if not self.token_wise:
            return (out.embeds,)
        return out.embeds, out.token_embeds, out.token_mask.to(torch.int64)


def _is_token_wise(model: nn.Module) -> bool:
    return getattr(model.config, "similarity", "global") == "token_wise"


def _output_names(token_wise: bool) -> list[str]:
    return ["embeds", "token_embeds", "token_mask"] if token_wise else ["embeds"]


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_axes: dict, token_wise: bool, opset):
    outputs = _output_names(token_wise)
    axes = dict(input_axes)
    axes["embeds"] = {0: "batch"}
    if token_wise:
        axes["token_embeds"] = {0: "batch", 1: "tokens"}
        axes["token_mask"] = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=list(input_axes),
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=opset,
        dynamo=False,  # the TorchScript exporter: no onnxscript dependency, dynamic axes as named above
        do_constant_folding=True,
    )


def _check_text_graph(model: nn.Module) -> None:
    config = model.config
    norm_reduced = getattr(config, "token_reduction", "none") == "norm"
    if _is_token_wise(model) and norm_reduced and getattr(config, "text_tokens_kept", None) is not None:
        raise ValueError(
            "token_reduction='norm' keeps a fixed number of text tokens only when the text is longer than that "
            "(a data-dependent branch ONNX tracing cannot keep); export a model with token_reduction "
            "'learned' or 'none'"
        )


def export_onnx(
    model: str | os.PathLike | nn.Module,
    output_dir: str | os.PathLike,
    processor: Any = None,
    *,
    revision: str | None = None,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    trust_remote_code: bool = False,
) -> OnnxExport:
    """Export `image_encoder.onnx`, `text_encoder.onnx`, `onnx_config.json` and the processor into `output_dir`.

    Args:
        model: a saved hf-vlp folder or Hub id, or a loaded dual / fusion model (then pass its `processor`).
        processor: the model's `VLPProcessor` (loaded with the model when `model` is a path).
        opset: ONNX opset.
        quantize: `"int8"` additionally writes `*_int8.onnx` with dynamic int8 weight quantisation (ONNX Runtime's
            `quantize_dynamic`), listed under `"quantized"` in the config.

    Inputs: `pixel_values` [batch, 3, H, W] float32; `input_ids`, `attention_mask` [batch, length] int64 (length up
    to `max_length`, any batch). Outputs: `embeds` [batch, D]; token-wise models also `token_embeds`
    [batch, tokens, D] and `token_mask` [batch, tokens].
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if isinstance(model, str | os.PathLike):
        from .index import load_model_and_processor

        model, loaded_processor = load_model_and_processor(os.fspath(model), revision, trust_remote_code)
        processor = processor or loaded_processor
    if processor is None:
        raise ValueError("pass the model's processor (export_onnx(model, out, processor))")
    _check_text_graph(model)
    was_training = model.training
    model = model.eval()
    token_wise = _is_token_wise(model)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    image_processor = processor.image_processor
    size = image_processor.size
    height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    max_length = int(processor.max_length)
    # Trace with a batch of 2 and padding in the second text: a padded row keeps the attention-mask path in the
    # graph (an all-ones mask may be optimised away by the attention implementation).
    pixel_values = torch.randn(2, 3, height, width)
    input_ids = torch.randint(5, 100, (2, min(8, max_length)))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about every Python-level shape check; the equality tests (batch 1/7/64, two lengths) are
        # what shows the graphs generalise.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The wrappers are built in eval mode: the exporter puts every module back into the wrapper's mode after
        # tracing, and a fresh nn.Module is in training mode (that would switch dropout on in the user's model).
        _export(
            _Encoder(model, "image", token_wise).eval(),
            (pixel_values,),
            output_dir / IMAGE_ENCODER_FILE,
            {"pixel_values": {0: "batch"}},
            token_wise,
            opset,
        )
        _export(
            _Encoder(model, "text", token_wise).eval(),
            (input_ids, attention_mask),
            output_dir / TEXT_ENCODER_FILE,
            {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
            token_wise,
            opset,
        )
    model.train(was_training)
    processor.save_pretrained(output_dir)  # the tokenizer files a client needs, next to the graphs
    config = {
        "model_class": type(model).__name__,
        "model_type": model.config.model_type,
        "similarity": "token_wise" if token_wise else "global",
        "embedding_dim": int(model.config.projection_dim),
        "opset": opset,
        "image_encoder": {
            "file": IMAGE_ENCODER_FILE,
            "inputs": {"pixel_values": ["batch", 3, height, width]},
            "outputs": _output_names(token_wise),
        },
        "text_encoder": {
            "file": TEXT_ENCODER_FILE,
            "inputs": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]},
            "outputs": _output_names(token_wise),
        },
        "image_size": [height, width],
        "image_mean": list(map(float, image_processor.image_mean)),
        "image_std": list(map(float, image_processor.image_std)),
        "resample": "bicubic",
        "rescale_factor": float(getattr(image_processor, "rescale_factor", 1 / 255)),
        "max_length": max_length,
        "tokenizer": "tokenizer files in this folder (AutoTokenizer.from_pretrained(this_folder))",
        "normalized": True,
    }
    if quantize == "int8":
        config["quantized"] = {
            "image_encoder": quantize_onnx(output_dir / IMAGE_ENCODER_FILE).name,
            "text_encoder": quantize_onnx(output_dir / TEXT_ENCODER_FILE).name,
            "method": "onnxruntime.quantization.quantize_dynamic, QInt8 weights",
        }
    (output_dir / ONNX_CONFIG_FILE).write_text(json.dumps(config, indent=1))
    return OnnxExport(output_dir, output_dir / IMAGE_ENCODER_FILE, output_dir / TEXT_ENCODER_FILE, config)


def quantize_onnx(path: str | os.PathLike) -> Path:
    """Dynamic int8 quantisation of a graph's weights (activations stay float): `name.onnx` -> `name_int8.onnx`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    target = path.with_name(f"{path.stem}_int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a static-quantisation hint on the root logger that does not apply
    try:
        quantize_dynamic(str(path), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return target
