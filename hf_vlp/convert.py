"""Convert Chinese-CLIP (OFA-Sys) checkpoints into `DualEncoderModel`s, weight for weight.

Two sources:

* transformers `ChineseCLIPModel` folders / Hub ids (`convert_chinese_clip`);
* checkpoints of Chinese-CLIP's own training script (`epoch_latest.pt`, `epoch5.pt`: `{"epoch", "step", "name",
  "state_dict", "optimizer"}` with DDP's `module.` prefixes, fp16 or fp32) plus the model names it was trained
  with (`convert_chinese_clip_checkpoint`). The architecture JSONs and the 21,128-token vocabulary come from the
  installed `cn-clip` package at run time; the output has cn-clip's tokenizer and image preprocessing.

The public Chinese-CLIP weights are the strongest open Chinese image-text models, and most Chinese users fine-tune
them with its scripts; converting lets them continue with LoRA, FILIP/LiT or fusion pre-training here. The text
tower becomes a plain `BertModel` (RoBERTa-wwm checkpoints are BERT-shaped) and the vision tower a
`CLIPVisionModel`; both map one-to-one, so text and image embeddings are identical before and after.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, ChineseCLIPModel, CLIPVisionConfig
from transformers.utils import cached_file

from .cn_clip_assets import cn_clip_model_config, cn_clip_model_names
from .models import DualEncoderConfig, DualEncoderModel, VLPImageProcessor, VLPProcessor
from .tokenization import BERT_BASE_CHINESE, build_chinese_tokenizer


__all__ = [
    "CHINESE_CLIP_CONTEXT_LENGTH",
    "ConversionError",
    "chinese_clip_checkpoint_config",
    "chinese_clip_processor",
    "chinese_clip_to_dual_encoder",
    "convert_chinese_clip",
    "convert_chinese_clip_checkpoint",
    "load_chinese_clip_state_dict",
    "map_chinese_clip_state_dict",
    "save_chinese_clip_checkpoint",
    "to_chinese_clip_state_dict",
]

# Text length of every Chinese-CLIP model (`cn_clip.clip.tokenize(context_length=52)`).
CHINESE_CLIP_CONTEXT_LENGTH = 52

# Fields of the Chinese-CLIP sub-configs that describe architecture; the rest (ids, dtype) stay default.
_TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)
_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly (unexpected or missing weights)."""


def _pick(config, fields: tuple[str, ...]) -> dict:
    return {name: getattr(config, name) for name in fields if hasattr(config, name)}


def chinese_clip_to_dual_encoder(source: ChineseCLIPModel) -> DualEncoderModel:
    """Build a `DualEncoderModel` with exactly the weights of an in-memory `ChineseCLIPModel`."""
    config = DualEncoderConfig(
        text_config=BertConfig(**_pick(source.config.text_config, _TEXT_FIELDS)),
        vision_config=CLIPVisionConfig(**_pick(source.config.vision_config, _VISION_FIELDS)),
        projection_dim=source.config.projection_dim,
        logit_scale_init_value=source.config.logit_scale_init_value,
        text_pooling="cls",
        vision_pooling="pooler",
    )
    target = DualEncoderModel(config)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("text_model.pooler.")}
    result = target.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(
            f"Chinese-CLIP weights do not map one-to-one: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return target.to(dtype=next(source.parameters()).dtype)


def convert_chinese_clip(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    **hub_kwargs,
) -> DualEncoderModel:
    """Convert a Chinese-CLIP checkpoint (Hub id such as `OFA-Sys/chinese-clip-vit-base-patch16`, or folder).

    Writes a Hub-ready folder: weights, config with `auto_map`, the model code and, when the source has
    them, its tokenizer and a matching `VLPProcessor`. Returns the converted model.
    """
    model = chinese_clip_to_dual_encoder(ChineseCLIPModel.from_pretrained(source, dtype=dtype, **hub_kwargs))
    model.save_pretrained(output_dir)
    has_tokenizer = any(
        cached_file(source, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs) is not None
        for name in ("tokenizer_config.json", "tokenizer.json", "vocab.txt")
    )
    # A weights-only source gets no processor rather than a made-up tokenizer; pair it with one later.
    tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs) if has_tokenizer else None
    if tokenizer is not None:
        size = model.config.vision_config.image_size
        processor = VLPProcessor(VLPImageProcessor(size={"height": size, "width": size}), tokenizer)
        processor.save_pretrained(output_dir)
    return model


# ------------------------------------------------------------------------------ Chinese-CLIP training checkpoints
def chinese_clip_checkpoint_config(vision_model: str, text_model: str) -> DualEncoderConfig:
    """The `DualEncoderConfig` of cn-clip's `vision_model@text_model` (names of its `model_configs/*.json`).

    ResNet vision models (RN50) are refused: their attention-pooled ModifiedResNet has no transformers tower.
    """
    vision_names, text_names = cn_clip_model_names()
    if vision_model not in vision_names:
        raise ConversionError(f"--vision-model {vision_model!r} is not a cn-clip vision model; one of {vision_names}")
    if text_model not in text_names:
        raise ConversionError(f"--text-model {text_model!r} is not a cn-clip text model; one of {text_names}")
    vision, text = cn_clip_model_config(vision_model), cn_clip_model_config(text_model)
    if not isinstance(vision["vision_layers"], int):
        raise ConversionError(
            f"{vision_model} is a ResNet (ModifiedResNet) model, which has no transformers vision tower to convert "
            "into; convert a ViT model (" + ", ".join(name for name in vision_names if name.startswith("ViT")) + ")"
        )
    width = vision["vision_width"]
    vision_config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=vision["vision_layers"],
        num_attention_heads=width // vision.get("vision_head_width", 64),
        image_size=vision["image_resolution"],
        patch_size=vision["vision_patch_size"],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=vision["embed_dim"],
    )
    text_config = BertConfig(
        vocab_size=text["vocab_size"],
        hidden_size=text["text_hidden_size"],
        num_hidden_layers=text["text_num_hidden_layers"],
        num_attention_heads=text["text_num_attention_heads"],
        intermediate_size=text["text_intermediate_size"],
        hidden_act=text["text_hidden_act"],
        hidden_dropout_prob=text["text_hidden_dropout_prob"],
        attention_probs_dropout_prob=text["text_attention_probs_dropout_prob"],
        max_position_embeddings=text["text_max_position_embeddings"],
        type_vocab_size=text["text_type_vocab_size"],
        initializer_range=text["text_initializer_range"],
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )
    return DualEncoderConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=vision["embed_dim"],
        logit_scale_init_value=math.log(1 / 0.07),
        text_pooling="cls",
        vision_pooling="pooler",
    )


def load_chinese_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights of a Chinese-CLIP training checkpoint, without DDP's `module.` prefix.

    Read with `torch.load(weights_only=True)`: a checkpoint is a pickle, and only tensors and plain containers
    are accepted from it. A bare state dict (no `"state_dict"` key) is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"{path} is not a loadable PyTorch checkpoint: {first_line}") from error
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConversionError(f"{path} holds no model state dict (expected Chinese-CLIP's {{'state_dict': ...}})")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _vision_key_map(num_layers: int) -> dict[str, str]:
    """cn-clip `VisualTransformer` names -> `CLIPVisionModel` names (attention in-projections are split apart)."""
    names = {
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for kind in ("weight", "bias"):
            names[f"visual.{theirs}.{kind}"] = f"vision_model.{ours}.{kind}"
    for layer in range(num_layers):
        source, target = f"visual.transformer.resblocks.{layer}.", f"vision_model.encoder.layers.{layer}."
        for theirs, ours in (
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            for kind in ("weight", "bias"):
                names[f"{source}{theirs}.{kind}"] = f"{target}{ours}.{kind}"
    return names


def map_chinese_clip_state_dict(state: dict[str, torch.Tensor], config: DualEncoderConfig) -> dict[str, torch.Tensor]:
    """Rename (and split / transpose) cn-clip `CLIP` weights into `DualEncoderModel` weights.

    The BERT pooler is dropped (cn-clip drops it too: CLS pooling never uses it). A weight left over, missing
    or of the wrong shape raises `ConversionError` naming it, so a checkpoint of another architecture (wrong
    `--vision-model` / `--text-model`) fails with the reason instead of converting silently wrong.
    """
    num_layers = config.vision_config.num_hidden_layers
    names = _vision_key_map(num_layers)
    mapped, leftover = {}, []
    for key, value in state.items():
        if key.startswith("bert.pooler."):
            continue
        if key in names:
            mapped[names[key]] = value
        elif key.startswith("bert."):
            mapped["text_model." + key.removeprefix("bert.")] = value
        elif key == "visual.proj":
            mapped["visual_projection.weight"] = value.t()
        elif key == "text_projection":
            mapped["text_projection.weight"] = value.t()
        elif key == "logit_scale":
            mapped[key] = value.reshape(1)  # cn-clip's 0-d scalar as the model holds it (see scalar_parameters.py)
        elif key.endswith(("attn.in_proj_weight", "attn.in_proj_bias")) and key.startswith("visual.transformer."):
            layer = key.split(".")[3]
            kind = "weight" if key.endswith("weight") else "bias"
            for part, tensor in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                mapped[f"vision_model.encoder.layers.{layer}.self_attn.{part}.{kind}"] = tensor
        else:
            leftover.append(key)
    with torch.device("meta"):
        expected = {key: tensor.shape for key, tensor in DualEncoderModel(config).state_dict().items()}
    missing = [key for key in expected if key not in mapped]
    unexpected = leftover + [key for key in mapped if key not in expected]
    wrong_shape = [
        f"{key} {tuple(value.shape)} (expected {tuple(expected[key])})"
        for key, value in mapped.items()
        if key in expected and value.shape != expected[key]
    ]
    if missing or unexpected or wrong_shape:
        raise ConversionError(
            "the checkpoint does not match the named Chinese-CLIP models (check --vision-model / --text-model): "
            + "; ".join(
                f"{label} {items[:3]}" + (f" and {len(items) - 3} more" if len(items) > 3 else "")
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                if items
            )
        )
    return mapped


def to_chinese_clip_state_dict(model: DualEncoderModel) -> dict[str, torch.Tensor]:
    """The inverse of `map_chinese_clip_state_dict`: a converted (or fine-tuned) model's weights under cn-clip's
    `CLIP` names, for Chinese-CLIP's own tools (its ONNX / TensorRT export, its evaluation scripts)."""
    state = model.state_dict()
    names = {ours: theirs for theirs, ours in _vision_key_map(model.config.vision_config.num_hidden_layers).items()}
    result = {}
    for key, value in state.items():
        if key in names:
            result[names[key]] = value
        elif key.startswith("text_model."):
            result["bert." + key.removeprefix("text_model.")] = value
        elif key in ("visual_projection.weight", "text_projection.weight"):
            result["visual.proj" if key.startswith("visual") else "text_projection"] = value.t()
        elif key == "logit_scale":
            result[key] = value.reshape(())  # cn-clip's `CLIP.logit_scale` is 0-d
        elif ".self_attn.q_proj." in key:
            layer, kind = key.split(".")[3], key.rsplit(".", 1)[1]
            parts = [state[key.replace("q_proj", part)] for part in ("q_proj", "k_proj", "v_proj")]
            result[f"visual.transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        elif not (".self_attn.k_proj." in key or ".self_attn.v_proj." in key):
            raise ConversionError(f"{key} has no Chinese-CLIP counterpart (only plain converted models go back)")
    return result


def save_chinese_clip_checkpoint(
    model: DualEncoderModel, path: str | os.PathLike, epoch: int = 0, step: int = 0, name: str = "hf-vlp"
) -> None:
    """Save `model` as Chinese-CLIP's training script saves a checkpoint (`{"epoch", "step", "name",
    "state_dict"}`, DDP `module.` prefixes), loadable by cn-clip and by `convert_chinese_clip_checkpoint`."""
    state = {"module." + key: value.contiguous() for key, value in to_chinese_clip_state_dict(model).items()}
    torch.save({"epoch": epoch, "step": step, "name": name, "state_dict": state}, path)


def chinese_clip_processor(image_size: int) -> VLPProcessor:
    """Chinese-CLIP's preprocessing: bicubic resize to `image_size` squared (no crop), OpenAI CLIP mean/std (which
    `VLPImageProcessor` uses), and the bert-base-chinese tokenizer from cn-clip at 52 tokens."""
    image_processor = VLPImageProcessor(size={"height": image_size, "width": image_size})
    tokenizer = build_chinese_tokenizer(BERT_BASE_CHINESE, model_max_length=CHINESE_CLIP_CONTEXT_LENGTH)
    return VLPProcessor(image_processor, tokenizer, max_length=CHINESE_CLIP_CONTEXT_LENGTH)


def convert_chinese_clip_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    vision_model: str,
    text_model: str,
    dtype: torch.dtype = torch.float32,
) -> DualEncoderModel:
    """Convert a checkpoint of Chinese-CLIP's training script into a Hub-ready `DualEncoderModel` folder.

    `vision_model` / `text_model` are the names it was trained with (`--vision-model ViT-B-16 --text-model
    RoBERTa-wwm-ext-base-chinese`). The folder gets the weights (in `dtype`; fp16 checkpoints are upcast to
    float32 by default), the config with `auto_map`, the model code and a `VLPProcessor` that tokenises and
    preprocesses images exactly as cn-clip does. Returns the converted model.
    """
    config = chinese_clip_checkpoint_config(vision_model, text_model)
    state = map_chinese_clip_state_dict(load_chinese_clip_state_dict(checkpoint), config)
    state = {key: value.to(dtype) for key, value in state.items()}
    # Built on the meta device and filled from `state` by transformers' loader: no random init of a model
    # that is overwritten anyway, and non-persistent buffers (position ids) are set up as on any load.
    model = DualEncoderModel.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
    model.save_pretrained(output_dir)
    chinese_clip_processor(config.vision_config.image_size).save_pretrained(output_dir)
    return model
