"""The models, batches and train step the training benchmarks share (`bench_train_step`, `bench_grad_cache`,
`bench_gpu_suite`, `bench_retrieval`): the reference `ChineseCLIPModel` at a preset's tower sizes, our dual encoder
converted from it (same weights), the fusion encoder on the same towers, random padded batches, one AdamW step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import common


__all__ = [
    "FUSION_MODULE",
    "SIZES",
    "build_fusion_model",
    "build_models",
    "check_same_function",
    "fusion_available",
    "make_batch",
    "reference_model",
    "train_step",
]

# Tower sizes come from the presets, so "tiny" and "base" are the shapes the package actually ships.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"preset": "tiny", "fusion_preset": "tiny-fusion", "batch": 64, "seq_len": 32},
    "base": {
        "preset": "chinese-clip-vit-base-patch16",
        "fusion_preset": "albef-base-chinese",
        "batch": 128,
        "seq_len": 52,
    },
}
FUSION_MODULE = Path(__file__).resolve().parents[1] / "hf_vlp" / "models" / "modeling_fusion_encoder.py"


def _tower_dicts(size: str) -> tuple[dict, dict, int]:
    from hf_vlp.models.presets import preset_config_dict

    config = preset_config_dict(SIZES[size]["preset"])
    text = {k: v for k, v in config["text_config"].items() if k != "model_type"}
    vision = {k: v for k, v in config["vision_config"].items() if k != "model_type"}
    return text, vision, config["projection_dim"]


def reference_model(size: str, seed: int):
    """transformers' `ChineseCLIPModel` with the preset's tower sizes, random weights from `seed`."""
    import torch
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    text, vision, projection_dim = _tower_dicts(size)
    torch.manual_seed(seed)
    return ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))


def build_models(size: str, seed: int):
    """(reference, ours): the reference and our dual encoder converted from it (same weights)."""
    from hf_vlp.convert import chinese_clip_to_dual_encoder

    reference = reference_model(size, seed)
    return reference, chinese_clip_to_dual_encoder(reference)


def fusion_available() -> bool:
    """Whether the fusion encoder's model file exists yet (it is written alongside these benchmarks)."""
    return FUSION_MODULE.exists()


def build_fusion_model(size: str, seed: int):
    """`FusionEncoderForPreTraining` (ALBEF: ITC with momentum queue, ITM with hard negatives, MLM) whose towers are
    exactly the dual encoder's, so the comparison prices what fusion adds on top of the same towers.

    The fusion part comes from the presets: "tiny-fusion" (2 fusion layers, queue 256) for `tiny`,
    "albef-base-chinese" (6 fusion layers, queue 65,536) for `base`, whose 6-layer text tower is replaced here
    by the dual encoder's 12-layer one.
    """
    import torch

    from hf_vlp.models.configuration_fusion_encoder import FusionEncoderConfig
    from hf_vlp.models.modeling_fusion_encoder import FusionEncoderForPreTraining

    text, vision, projection_dim = _tower_dicts(size)
    config = FusionEncoderConfig.from_preset(
        SIZES[size]["fusion_preset"],
        text_config={"model_type": "bert", **text},
        vision_config={"model_type": "clip_vision_model", **vision},
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    return FusionEncoderForPreTraining(config)


def make_batch(size: str, batch: int, seq_len: int, device: str, seed: int = 0) -> dict:
    """Random token ids (CLS first, SEP last, lengths between half and all of `seq_len`, zero padding) and
    pixels, so the attention mask matters as it does on real captions."""
    import torch

    text, vision, _ = _tower_dicts(size)
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=generator)
    positions = torch.arange(seq_len)[None, :]
    attention_mask = (positions < lengths[:, None]).long()
    input_ids = torch.randint(1000, text["vocab_size"], (batch, seq_len), generator=generator)
    input_ids[:, 0] = 101
    input_ids[torch.arange(batch), lengths - 1] = 102
    input_ids = input_ids * attention_mask
    image = vision["image_size"]
    pixel_values = torch.randn(batch, 3, image, image, generator=generator)
    tensors = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "pixel_values": pixel_values,
    }
    return {key: value.to(device) for key, value in tensors.items()}


def check_same_function(reference, ours, batch: dict) -> float:
    """Assert our converted model gives the reference's logits and loss; return the largest logit difference."""
    import torch

    reference.eval()
    ours.eval()
    with torch.no_grad():
        expected = reference(**batch, return_loss=True)
        actual = ours(**batch, return_loss=True)
    torch.testing.assert_close(actual.logits_per_image, expected.logits_per_image, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-4, atol=1e-4)
    return float((actual.logits_per_image - expected.logits_per_image).abs().max())


def train_step(model, optimizer, batch: dict, settings: dict) -> None:
    """One optimisation step: forward with the loss, backward, AdamW update (and ALBEF's momentum update)."""
    with common.autocast(settings["device"], settings["dtype"]):
        loss = model(**batch, return_loss=True).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    momentum_update = getattr(model, "momentum_update", None)
    if callable(momentum_update):
        momentum_update()
