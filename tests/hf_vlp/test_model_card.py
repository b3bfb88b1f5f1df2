"""Model cards: Hub metadata, `model-index` round trip, family / adapter templates, no secrets, packaged templates."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import TrainingArguments

from hf_vlp import DualEncoderModel
from hf_vlp.model_card import CITATIONS, render_model_card, write_model_card


RESULTS = {
    "eval_i2t_R@1": 12.5,
    "eval_i2t_R@5": 40.0,
    "eval_i2t_R@10": 60.25,
    "eval_t2i_R@1": 10.0,
    "eval_t2i_R@5": 33.333333333333336,
    "eval_t2i_R@10": 55.0,
    "eval_i2t_mean": 37.583333333333336,
    "eval_t2i_mean": 32.77777777777778,
    "eval_mean_recall": 35.18055555555556,
    "eval_zero_shot_top1": 41.0,
    "eval_loss": 1.25,
    "eval_runtime": 3.2,
    "epoch": 3.0,
}


@pytest.fixture
def saved(tiny_dual_config, tiny_processor, tmp_path):
    torch.manual_seed(0)
    DualEncoderModel(tiny_dual_config).save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    (tmp_path / "all_results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    return tmp_path


def test_model_index_round_trips_to_the_trainers_numbers(saved):
    path = write_model_card(saved, datasets=["hf-vlp/demo-shapes"], repo_id="user/tiny-demo")
    card = ModelCard.load(path)
    measured = {key.removeprefix("eval_"): value for key, value in RESULTS.items()}
    for key in ("loss", "runtime", "epoch"):
        measured.pop(key)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == measured
    assert {r.dataset_type for r in card.data.eval_results} == {"hf-vlp/demo-shapes"}
    assert {r.task_type for r in card.data.eval_results} == {"image-text-retrieval", "zero-shot-image-classification"}
    assert card.data.model_name == "tiny-demo"
    assert "| image→text R@1 (`i2t_R@1`) | validation | 12.50 |" in card.text


def test_metadata_and_sections(saved):
    card = render_model_card(
        saved, datasets=["hf-vlp/demo-shapes"], base_model="OFA-Sys/chinese-clip-vit-base-patch16"
    )
    data = card.data
    assert data.language == "zh" and data.license == "apache-2.0"
    assert data.library_name == "transformers" and data.pipeline_tag == "zero-shot-image-classification"
    assert {"custom_code", "hf-vlp", "chinese", "clip", "dual-encoder"} <= set(data.tags)
    assert data.datasets == ["hf-vlp/demo-shapes"] and data.base_model == "OFA-Sys/chinese-clip-vit-base-patch16"
    text = card.text
    for heading in ("## Intended uses and limits", "## How to use", "## Evaluation", "## Framework versions"):
        assert heading in text
    assert "AutoModel.from_pretrained(repo, trust_remote_code=True)" in text
    assert 'hypothesis_template="一张{}的照片。"' in text
    assert "transformers " in text and CITATIONS["chinese_clip"] in text
    assert CITATIONS["filip"] not in text and CITATIONS["lora"] not in text


def test_methods_decide_tags_and_citations(tiny_dual_config):
    tiny_dual_config.similarity = "token_wise"
    tiny_dual_config.lock_vision = True
    card = render_model_card(DualEncoderModel(tiny_dual_config))
    assert {"filip", "wukong"} <= set(card.data.tags)
    for key in ("filip", "wukong", "lit"):
        assert CITATIONS[key] in card.text
    assert card.data.eval_results is None and "No evaluation results" in card.text


def test_training_arguments_show_hyperparameters_never_secrets_or_paths(saved, tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path / "private-run-dir"), learning_rate=3e-5, hub_token="hf_do_not_print", seed=7
    )
    text = str(render_model_card(saved, training_args=args))
    assert "| `learning_rate` | 3e-05 |" in text and "| `seed` | 7 |" in text
    assert "hf_do_not_print" not in text and "private-run-dir" not in text
    custom = {"itm_weight": 0.5, "api_key": "sk-xyz", "cache_dir": "/home/me/.cache", "learning_rate": 1e-4}
    text = str(render_model_card(saved, training_args=custom))
    assert "| `itm_weight` | 0.5 |" in text and "sk-xyz" not in text and "/home/me" not in text


def test_adapter_card(saved, tmp_path):
    peft = pytest.importorskip("peft")
    from hf_vlp.adapters import default_lora_config, prepare_peft_model

    model = DualEncoderModel.from_pretrained(saved)
    peft_model = prepare_peft_model(model, default_lora_config(model, use_dora=True))
    peft_model.save_pretrained(tmp_path / "adapter")
    assert peft.PeftConfig.from_pretrained(tmp_path / "adapter").base_model_name_or_path == str(saved)

    card = render_model_card(tmp_path / "adapter", repo_id="user/tiny-lora", results={"eval_mean_recall": 50.0})
    assert card.data.library_name == "peft" and "peft" in card.data.tags
    assert card.data.base_model is None  # a local path is not a Hub id: kept out of the metadata
    assert str(saved) not in card.text
    assert CITATIONS["lora"] in card.text and CITATIONS["dora"] in card.text
    assert 'PeftModel.from_pretrained(base, "user/tiny-lora")' in card.text
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"mean_recall": 50.0}

    in_memory = render_model_card(peft_model, base_model="user/tiny-base")
    assert in_memory.data.base_model == "user/tiny-base" and 'base_repo = "user/tiny-base"' in in_memory.text


def test_fusion_card(tiny_dual_config):
    from hf_vlp.models.configuration_fusion_encoder import FusionEncoderConfig
    from hf_vlp.models.modeling_fusion_encoder import FusionEncoderForRetrieval

    config = FusionEncoderConfig(
        text_config=tiny_dual_config.text_config,
        vision_config=tiny_dual_config.vision_config,
        projection_dim=16,
        num_fusion_layers=1,
        fusion_mode="two_way",
    )
    card = render_model_card(FusionEncoderForRetrieval(config), results={"eval_rerank_t2i_R@1": 20.0})
    assert {"fusion-encoder", "albef", "r2d2"} <= set(card.data.tags)
    assert CITATIONS["albef"] in card.text and CITATIONS["r2d2"] in card.text
    assert "model.rank(queries, gallery" in card.text
    assert {r.metric_type for r in card.data.eval_results} == {"rerank_t2i_R@1"}


def test_templates_ship_as_package_data():
    names = {entry.name for entry in files("model_cards").iterdir()}
    assert {"dual_encoder.md.j2", "fusion_encoder.md.j2", "adapter.md.j2", "_sections.md.j2"} <= names
