"""Hub-native behaviour: Auto classes, saved code, fresh-process remote-code reload, zero-shot pipeline."""

from __future__ import annotations

import json
import re

import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor, pipeline

import hf_vlp
from hf_vlp import DualEncoderConfig, DualEncoderModel, VLPProcessor
from tests.utils.isolation import run_isolated


CAPTIONS = ["一个红色的圆形", "两个蓝色的三角形"]


def _save_tiny(tmp_path, config, processor):
    torch.manual_seed(0)
    model = DualEncoderModel(config).eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return model


def test_auto_classes_in_process(tmp_path, tiny_dual_config, small_processor):
    _save_tiny(tmp_path, tiny_dual_config, small_processor)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DualEncoderConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), DualEncoderModel)
    assert isinstance(AutoModelForZeroShotImageClassification.from_pretrained(tmp_path), DualEncoderModel)
    assert isinstance(AutoProcessor.from_pretrained(tmp_path), VLPProcessor)


def test_saved_folder_holds_code_and_auto_map(tmp_path, tiny_dual_config, small_processor):
    _save_tiny(tmp_path, tiny_dual_config, small_processor)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_dual_encoder.DualEncoderConfig",
        "AutoModel": "modeling_dual_encoder.DualEncoderModel",
        "AutoModelForZeroShotImageClassification": "modeling_dual_encoder.DualEncoderModel",
    }
    for name in ("modeling_dual_encoder.py", "contrastive.py", "towers.py", "processing_vlp.py"):
        code_lines = (tmp_path / name).read_text().splitlines()
        assert not [line for line in code_lines if re.match(r"\s*(from|import)\s+(hf_vlp|trainers)\b", line)], name


def test_fresh_process_without_hf_vlp_gives_same_embeddings(tmp_path, tiny_dual_config, small_processor):
    tiny_dual_config.similarity = "token_wise"
    tiny_dual_config.token_reduction = "norm"
    tiny_dual_config.image_tokens_kept = 5
    model = _save_tiny(tmp_path, tiny_dual_config, small_processor)
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    image.save(tmp_path / "probe.png")
    batch = small_processor(text=CAPTIONS, images=[image, image])
    with torch.no_grad():
        expected = model(**batch)
    result = run_isolated(
        f"""
        import json, torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        image = Image.open({str(tmp_path / "probe.png")!r})
        batch = processor(text={CAPTIONS!r}, images=[image, image])
        with torch.no_grad():
            out = model(**batch)
        print(json.dumps({{
            "module": type(model).__module__,
            "text": out.text_embeds.tolist(),
            "image": out.image_embeds.tolist(),
            "logits": out.logits_per_image.tolist(),
        }}))
        """,
        cwd=tmp_path,
    )
    assert result["module"].startswith("transformers_modules.")
    for key, tensor in (("text", expected.text_embeds), ("image", expected.image_embeds)):
        assert (torch.tensor(result[key]) - tensor).abs().max() <= 1e-5
    assert (torch.tensor(result["logits"]) - expected.logits_per_image).abs().max() <= 1e-4


def test_zero_shot_pipeline_with_chinese_labels(tmp_path, tiny_dual_config, small_processor):
    model = _save_tiny(tmp_path, tiny_dual_config, small_processor)
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    labels = ["圆形", "正方形", "三角形"]
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path), trust_remote_code=True)
    predictions = classifier(image, candidate_labels=labels, hypothesis_template="一张{}的照片。")
    assert sorted(p["label"] for p in predictions) == sorted(labels)
    assert abs(sum(p["score"] for p in predictions) - 1.0) < 1e-5
    # The pipeline's scores are the model's own softmax over the prompts.
    batch = small_processor(text=[f"一张{label}的照片。" for label in labels], images=[image])
    with torch.no_grad():
        probs = model(**batch).logits_per_image.softmax(dim=-1)[0]
    by_label = {p["label"]: p["score"] for p in predictions}
    for label, prob in zip(labels, probs.tolist()):
        assert abs(by_label[label] - prob) < 1e-4


def test_presets_build_offline():
    names = hf_vlp.list_presets()
    assert {"tiny", "tiny-filip", "chinese-clip-vit-base-patch16", "wukong-vit-large-filip"} <= set(names)
    for name in hf_vlp.list_presets("dual_encoder"):
        config = DualEncoderConfig.from_preset(name)
        with torch.device("meta"):  # the architecture builds without allocating ViT-L weights
            model = DualEncoderModel(config)
        assert model.visual_projection.out_features == config.projection_dim
    big = DualEncoderConfig.from_preset("chinese-clip-vit-base-patch16")
    assert big.vision_config.patch_size == 16 and big.text_config.vocab_size == 21128
    assert hf_vlp.preset_info("wukong-vit-large-filip")["config"]["lock_vision"] is True
