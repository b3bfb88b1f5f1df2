"""Chinese-CLIP -> DualEncoderModel conversion gives identical embeddings."""

from __future__ import annotations

import pytest
import torch
from transformers import ChineseCLIPConfig, ChineseCLIPModel

from hf_vlp import DualEncoderModel, VLPProcessor, build_chinese_tokenizer
from hf_vlp.convert import ConversionError, chinese_clip_to_dual_encoder, convert_chinese_clip
from tests.trainers.helpers import VISION


def _tiny_chinese_clip() -> ChineseCLIPModel:
    torch.manual_seed(0)
    config = ChineseCLIPConfig(
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "vocab_size": 7581,
        },
        vision_config={k: v for k, v in VISION.items() if k != "model_type"},
        projection_dim=16,
    )
    return ChineseCLIPModel(config).eval()


def test_conversion_gives_identical_embeddings(tmp_path):
    source = _tiny_chinese_clip()
    source.save_pretrained(tmp_path / "source")
    build_chinese_tokenizer().save_pretrained(tmp_path / "source")
    converted = convert_chinese_clip(tmp_path / "source", tmp_path / "converted").eval()
    reloaded = DualEncoderModel.from_pretrained(tmp_path / "converted").eval()
    processor = VLPProcessor.from_pretrained(tmp_path / "converted")
    torch.manual_seed(1)
    batch = processor(text=["一个红色的圆形", "两个蓝色的三角形在右边"])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for model in (converted, reloaded):
            text_ref = source.get_text_features(**batch).pooler_output
            image_ref = source.get_image_features(pixel_values=pixels).pooler_output
            assert torch.equal(model.get_text_features(**batch).pooler_output, text_ref)
            assert torch.equal(model.get_image_features(pixels).pooler_output, image_ref)
            ref = source(**batch, pixel_values=pixels).logits_per_image
            torch.testing.assert_close(model(**batch, pixel_values=pixels).logits_per_image, ref)


def test_weights_only_source_gets_no_made_up_tokenizer(tmp_path):
    _tiny_chinese_clip().save_pretrained(tmp_path / "source")
    convert_chinese_clip(tmp_path / "source", tmp_path / "converted")
    assert not (tmp_path / "converted" / "tokenizer.json").exists()
    assert (tmp_path / "converted" / "model.safetensors").exists()


def test_unexpected_weights_are_refused():
    source = _tiny_chinese_clip()
    source.register_buffer("extra_head", torch.zeros(1))
    with pytest.raises(ConversionError, match="extra_head"):
        chinese_clip_to_dual_encoder(source)


def test_convert_command_line(tmp_path):
    from trainers.cli import main

    source = _tiny_chinese_clip()
    source.save_pretrained(tmp_path / "source")
    build_chinese_tokenizer().save_pretrained(tmp_path / "source")
    assert main(["convert", str(tmp_path / "source"), str(tmp_path / "out")]) == 0
    converted = DualEncoderModel.from_pretrained(tmp_path / "out").eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            converted.get_image_features(pixels).pooler_output,
            source.get_image_features(pixel_values=pixels).pooler_output,
        )
