"""DualEncoderModel: outputs, loss, pooling, any tower, SDPA, gradient checkpointing, pretrained towers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    ViTConfig,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf_vlp import DualEncoderConfig, DualEncoderModel, DualEncoderOutput


def test_forward_returns_clip_fields_and_symmetric_loss(tiny_dual_config, tiny_batch):
    torch.manual_seed(0)
    model = DualEncoderModel(tiny_dual_config).eval()
    out = model(**tiny_batch, return_loss=True)
    assert isinstance(out, DualEncoderOutput)
    assert out.logits_per_image.shape == (4, 4)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    labels = torch.arange(4)
    expected = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
    torch.testing.assert_close(out.loss, expected)
    assert out.itc_loss is out.loss
    assert model(**tiny_batch).loss is None


def test_features_are_projected_unnormalised_model_outputs(tiny_dual_config, tiny_batch):
    model = DualEncoderModel(tiny_dual_config).eval()
    text = model.get_text_features(tiny_batch["input_ids"], tiny_batch["attention_mask"])
    image = model.get_image_features(tiny_batch["pixel_values"])
    assert isinstance(text, BaseModelOutputWithPooling) and isinstance(image, BaseModelOutputWithPooling)
    assert text.pooler_output.shape == image.pooler_output.shape == (4, 16)
    assert not torch.allclose(text.pooler_output.norm(dim=-1), torch.ones(4))
    out = model(**tiny_batch)
    torch.testing.assert_close(out.text_embeds, F.normalize(text.pooler_output, dim=-1))


def test_logit_scale_is_clamped_like_clip(tiny_dual_config):
    model = DualEncoderModel(tiny_dual_config)
    assert model.get_logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-3)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.get_logit_scale().item() == pytest.approx(100.0)


def test_shared_image_ids_make_pairs_positives(tiny_dual_config, tiny_batch):
    torch.manual_seed(0)
    model = DualEncoderModel(tiny_dual_config).eval()
    image_ids = torch.tensor([0, 0, 1, 2])
    out = model(**tiny_batch, return_loss=True, image_ids=image_ids)
    targets = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    manual = -(F.log_softmax(out.logits_per_image, 1) * targets).sum(1).mean()
    manual = (manual - (F.log_softmax(out.logits_per_text, 1) * targets).sum(1).mean()) / 2
    torch.testing.assert_close(out.loss, manual)


def test_mean_text_pooling_ignores_padding(tiny_dual_config, tiny_batch):
    tiny_dual_config.text_pooling = "mean"
    model = DualEncoderModel(tiny_dual_config).eval()
    ids, mask = tiny_batch["input_ids"][:1], tiny_batch["attention_mask"][:1]
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=mask.dtype)], dim=1)
    a = model.get_text_features(ids, mask).pooler_output
    b = model.get_text_features(padded_ids, padded_mask).pooler_output
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_any_vision_tower_vit(tiny_batch):
    config = DualEncoderConfig(
        text_config=BertConfig(
            vocab_size=7581, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37
        ),
        vision_config=ViTConfig(
            hidden_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
        vision_pooling="cls",
    )
    model = DualEncoderModel(config)
    assert type(model.vision_model).__name__ == "ViTModel"
    assert model.vision_model.pooler is None  # unused pooler not built (DDP would flag it)
    out = model(**tiny_batch, return_loss=True)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="similarity"):
        DualEncoderConfig(similarity="dot")
    with pytest.raises(ValueError, match="learned"):
        DualEncoderConfig(similarity="token_wise", token_reduction="learned", image_tokens_kept=4)


def test_sdpa_matches_eager(tiny_dual_config, tiny_batch, tmp_path):
    torch.manual_seed(0)
    DualEncoderModel(tiny_dual_config).save_pretrained(tmp_path)
    sdpa = DualEncoderModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    eager = DualEncoderModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert sdpa.text_model.config._attn_implementation == "sdpa"
    assert eager.vision_model.config._attn_implementation == "eager"
    torch.testing.assert_close(sdpa(**tiny_batch).logits_per_image, eager(**tiny_batch).logits_per_image)


def test_gradient_checkpointing_gives_same_gradients(tiny_dual_config, tiny_batch):
    torch.manual_seed(0)
    model = DualEncoderModel(tiny_dual_config).train()
    model(**tiny_batch, return_loss=True).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.text_model.encoder.layer[0].gradient_checkpointing
    assert model.vision_model.encoder.layers[0].gradient_checkpointing
    model(**tiny_batch, return_loss=True).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], msg=name)


def test_from_vision_text_pretrained_loads_real_towers(tmp_path, tiny_batch):
    torch.manual_seed(0)
    text = BertModel(
        BertConfig(vocab_size=7581, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    )
    clip = CLIPModel(
        CLIPConfig(
            text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 37},
            vision_config={
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "intermediate_size": 37,
                "image_size": 32,
                "patch_size": 8,
            },
        )
    )
    text.save_pretrained(tmp_path / "text")
    clip.save_pretrained(tmp_path / "clip")  # a whole CLIP: only its vision tower is used
    model = DualEncoderModel.from_vision_text_pretrained(
        str(tmp_path / "clip"), str(tmp_path / "text"), projection_dim=16, lock_vision=True
    )
    torch.testing.assert_close(
        model.text_model.embeddings.word_embeddings.weight, text.embeddings.word_embeddings.weight
    )
    vision_weights = dict(model.vision_model.named_parameters())
    for name, param in clip.vision_model.named_parameters():
        torch.testing.assert_close(vision_weights[name], param, msg=name)
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    assert model.config.vision_config.model_type == "clip_vision_model"
    out = model(**tiny_batch, return_loss=True)
    assert math.isfinite(out.loss.item())
