"""PEFT on hf-vlp models: default targets per tower, momentum safety, training, merge, save/reload, remote code."""

from __future__ import annotations

import copy
import re
import sys

import pytest
import torch
from PIL import Image


peft = pytest.importorskip("peft")

from hf_vlp import DualEncoderModel  # noqa: E402
from hf_vlp.adapters import (  # noqa: E402
    default_lora_config,
    default_modules_to_save,
    default_target_modules,
    load_adapter,
    merge_adapter,
    momentum_module_names,
    prepare_peft_model,
    require_peft,
)
from tests.trainers.helpers import VISION  # noqa: E402
from tests.utils.isolation import run_isolated  # noqa: E402


CAPTIONS = ["一个红色的圆形", "两个蓝色的三角形", "左边是一个黄色的星形"]


@pytest.fixture
def dual(tiny_dual_config) -> DualEncoderModel:
    torch.manual_seed(0)
    return DualEncoderModel(tiny_dual_config).eval()


def _targets(model, peft_model) -> set[str]:
    """Names (relative to the base model) of the modules PEFT put an adapter on."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = peft_model.get_base_model()
    return {name for name, module in base.named_modules() if isinstance(module, BaseTunerLayer)}


def _train(peft_model, batch, steps: int = 3) -> None:
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = peft_model(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()


def _outputs(model, batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    return {"text": out.text_embeds, "image": out.image_embeds, "logits": out.logits_per_image}


def _match(pattern: str, name: str) -> bool:
    """PEFT's rule for a string `target_modules`: a regex full match of the module name."""
    return re.fullmatch(pattern, name) is not None


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol), (key, (a[key] - b[key]).abs().max())


def test_default_targets_are_read_from_each_towers_module_names(dual):
    pattern = default_target_modules(dual)
    matched = {name for name, _ in dual.named_modules() if _match(pattern, name)}
    assert matched == {
        f"text_model.encoder.layer.{i}.attention.self.{leaf}" for i in (0, 1) for leaf in ("query", "value")
    } | {f"vision_model.encoder.layers.{i}.self_attn.{leaf}" for i in (0, 1) for leaf in ("q_proj", "v_proj")}
    attention = {
        name for name, _ in dual.named_modules() if _match(default_target_modules(dual, target="attention"), name)
    }
    assert "text_model.encoder.layer.0.attention.output.dense" in attention
    assert "vision_model.encoder.layers.1.self_attn.out_proj" in attention
    assert not any("mlp" in name or "intermediate" in name for name in attention)
    vision_only = {
        name
        for name, _ in dual.named_modules()
        if _match(default_target_modules(dual, ("vision",), "all_linear"), name)
    }
    assert vision_only and all(name.startswith("vision_model.encoder.layers.") for name in vision_only)
    assert any(name.endswith("mlp.fc1") for name in vision_only)
    assert default_modules_to_save(dual) == ["text_projection", "visual_projection"]


def test_targets_follow_other_tower_architectures(tiny_dual_config):
    vit = {**VISION, "model_type": "vit"}
    config = type(tiny_dual_config)(text_config=tiny_dual_config.text_config, vision_config=vit, projection_dim=16)
    model = DualEncoderModel(config)
    vision = {name for name, _ in model.named_modules() if _match(default_target_modules(model, ("vision",)), name)}
    assert vision == {f"vision_model.layers.{i}.attention.{leaf}" for i in (0, 1) for leaf in ("q_proj", "v_proj")}


def test_momentum_copies_are_never_adapted(dual):
    # A momentum (EMA) tower, as fusion models keep one: same module names plus the `_m` suffix on the attribute.
    dual.text_model_m = copy.deepcopy(dual.text_model).requires_grad_(False)
    assert momentum_module_names(dual) == ["text_model_m"]
    with pytest.raises(ValueError, match="momentum"):
        prepare_peft_model(dual, peft.LoraConfig(target_modules=["query", "value"]))  # suffix match reaches `_m`
    peft_model = prepare_peft_model(dual, default_lora_config(dual))
    assert _targets(dual, peft_model) and not any("_m." in name for name in _targets(dual, peft_model))
    assert not any(p.requires_grad for name, p in peft_model.named_parameters() if "text_model_m" in name)


def test_bare_parameter_and_task_type_are_refused(dual):
    with pytest.raises(ValueError, match="bare parameters"):
        prepare_peft_model(dual, default_lora_config(dual, modules_to_save=["text_projection", "logit_scale"]))
    with pytest.raises(ValueError, match="task_type=None"):
        prepare_peft_model(dual, default_lora_config(dual, task_type="FEATURE_EXTRACTION"))


def test_only_adapter_and_head_parameters_change(dual, tiny_batch):
    peft_model = prepare_peft_model(dual, default_lora_config(dual, dropout=0.0))
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    _train(peft_model, tiny_batch)
    changed = {name for name, p in peft_model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trainable
    assert all(".lora_" in name or ".modules_to_save." in name for name in changed)
    assert any("text_projection.modules_to_save" in name for name in changed)
    assert not peft_model.get_base_model().logit_scale.requires_grad  # bare parameter: stays pretrained
    assert "base_model.model.logit_scale" not in changed


def test_merged_model_matches_adapted_model(dual, tiny_batch):
    peft_model = prepare_peft_model(dual, default_lora_config(dual, dropout=0.0))
    _train(peft_model, tiny_batch)
    adapted = _outputs(peft_model, tiny_batch)
    merged = merge_adapter(peft_model)
    assert type(merged) is DualEncoderModel
    assert not any("lora_" in name or "modules_to_save" in name for name, _ in merged.named_parameters())
    assert all(p.requires_grad for p in merged.parameters())  # a plain model again, as from_pretrained gives it
    _assert_close(adapted, _outputs(merged.eval(), tiny_batch))


def test_adapter_reload_gives_equal_outputs(dual, tiny_batch, tmp_path):
    dual.save_pretrained(tmp_path / "base")
    peft_model = prepare_peft_model(dual, default_lora_config(dual, dropout=0.0))
    _train(peft_model, tiny_batch)
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = load_adapter(str(tmp_path / "base"), tmp_path / "adapter")
    assert not any(p.requires_grad for p in reloaded.parameters())
    _assert_close(_outputs(peft_model, tiny_batch), _outputs(reloaded, tiny_batch))
    trainable = load_adapter(
        DualEncoderModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter", is_trainable=True
    )
    assert any(p.requires_grad for name, p in trainable.named_parameters() if ".lora_" in name)


def test_other_linear_peft_methods_use_the_same_targets(dual, tiny_batch, tmp_path):
    dual.save_pretrained(tmp_path / "base")
    config = peft.LoHaConfig(r=2, alpha=4, target_modules=default_target_modules(dual, target="attention"))
    peft_model = prepare_peft_model(dual, config)
    _train(peft_model, tiny_batch, steps=2)
    peft_model.save_pretrained(tmp_path / "loha")
    reloaded = load_adapter(str(tmp_path / "base"), tmp_path / "loha")
    _assert_close(_outputs(peft_model, tiny_batch), _outputs(reloaded, tiny_batch))


def test_gradient_checkpointing_reaches_the_adapters(dual, tiny_batch):
    dual.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    peft_model = prepare_peft_model(dual, default_lora_config(dual, dropout=0.0))
    peft_model.train()
    peft_model(**tiny_batch, return_loss=True).loss.backward()
    grads = {name: p.grad for name, p in peft_model.named_parameters() if "lora_B" in name}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


@pytest.fixture
def fusion(tiny_dual_config):
    """A two-way (R2D2) fusion pre-training model with its momentum copy and queue, one fusion layer."""
    from hf_vlp.models.configuration_fusion_encoder import FusionEncoderConfig
    from hf_vlp.models.modeling_fusion_encoder import FusionEncoderForPreTraining

    config = FusionEncoderConfig(
        text_config=tiny_dual_config.text_config,
        vision_config=tiny_dual_config.vision_config,
        projection_dim=16,
        num_fusion_layers=1,
        fusion_mode="two_way",
        queue_size=8,
        target_distill_weight=0.5,
        fusion_hidden_dropout_prob=0.0,
        fusion_attention_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return FusionEncoderForPreTraining(config)


def test_fusion_defaults_cover_both_cross_encoders_and_skip_the_momentum_model(fusion):
    pattern = default_target_modules(fusion)
    matched = {name for name, _ in fusion.named_modules() if _match(pattern, name)}
    for encoder in ("text_fusion", "image_fusion"):
        for block in ("self_attention", "cross_attention"):
            assert {f"{encoder}.layers.0.{block}.q_proj", f"{encoder}.layers.0.{block}.v_proj"} <= matched
    assert "text_model.encoder.layer.1.attention.self.query" in matched
    assert not any("_m." in name for name in matched)
    assert momentum_module_names(fusion)  # the momentum model is there, and untouched by the pattern
    # The MLM head is tied to the word embeddings: a saved copy would untie it, so it is not a default.
    assert default_modules_to_save(fusion) == [
        "text_projection",
        "visual_projection",
        "text_fusion.itm_head",
        "image_fusion.itm_head",
    ]


def test_fusion_peft_run_switches_momentum_off_and_merge_restores_it(fusion, tiny_batch):
    momentum_before = {n: p.detach().clone() for n, p in fusion.named_parameters() if "_m." in n}
    peft_model = prepare_peft_model(fusion, default_lora_config(fusion, dropout=0.0))
    assert fusion.config.use_momentum_encoder is False and fusion.config.target_distill_weight == 0.0
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("itm_head.modules_to_save" in name for name in trainable)
    _train(peft_model, tiny_batch, steps=2)
    changed = {name for name, p in peft_model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trainable and not any("_m." in name for name in changed)
    assert all(torch.equal(p, momentum_before[n]) for n, p in fusion.named_parameters() if "_m." in n)

    merged = merge_adapter(peft_model)
    assert merged.config.use_momentum_encoder is True and merged.config.target_distill_weight == 0.5
    online = merged.get_parameter("text_fusion.layers.0.cross_attention.q_proj.weight")
    assert torch.equal(merged.get_parameter("text_fusion_m.layers.0.cross_attention.q_proj.weight"), online)
    assert not any(p.requires_grad for n, p in merged.named_parameters() if "_m." in n)


def test_missing_peft_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"hf-vlp\[train\]"):
        require_peft()


@pytest.mark.slow
def test_adapter_on_remote_code_base_in_fresh_process(dual, tiny_batch, tiny_processor, tmp_path):
    """The user path without hf-vlp: base from its folder's own code, adapter on top with `PeftModel`."""
    dual.save_pretrained(tmp_path / "base")
    peft_model = prepare_peft_model(dual, default_lora_config(dual, dropout=0.0))
    _train(peft_model, tiny_batch)
    peft_model.save_pretrained(tmp_path / "adapter")
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    image.save(tmp_path / "probe.png")
    from hf_vlp import VLPImageProcessor, VLPProcessor

    processor = VLPProcessor(VLPImageProcessor(size={"height": 32, "width": 32}), tiny_processor.tokenizer)
    processor.save_pretrained(tmp_path / "base")
    batch = processor(text=CAPTIONS, images=[image, image, image])
    expected = _outputs(peft_model, batch)
    result = run_isolated(
        f"""
        import json, torch
        from PIL import Image
        from peft import PeftModel
        from transformers import AutoModel, AutoProcessor
        base = AutoModel.from_pretrained({str(tmp_path / "base")!r}, trust_remote_code=True)
        model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r}).eval()
        processor = AutoProcessor.from_pretrained({str(tmp_path / "base")!r}, trust_remote_code=True)
        image = Image.open({str(tmp_path / "probe.png")!r})
        batch = processor(text={CAPTIONS!r}, images=[image, image, image])
        with torch.no_grad():
            out = model(**batch)
            merged = model.merge_and_unload()(**batch)
        print(json.dumps({{
            "module": type(base).__module__,
            "text": out.text_embeds.tolist(),
            "image": out.image_embeds.tolist(),
            "logits": out.logits_per_image.tolist(),
            "merged_logits": merged.logits_per_image.tolist(),
        }}))
        """,
        cwd=tmp_path,
    )
    assert result["module"].startswith("transformers_modules.")
    got = {key: torch.tensor(result[key]) for key in ("text", "image", "logits")}
    _assert_close(expected, got)
    assert torch.allclose(torch.tensor(result["merged_logits"]), expected["logits"], atol=1e-4)
