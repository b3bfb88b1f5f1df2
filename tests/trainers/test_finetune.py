"""Fine-tuning with PEFT: `VLPTrainer(peft_config=...)` and `hf-vlp finetune`.

Trainer: only adapter / head parameters move, checkpoints hold only the adapter and resume exactly, gradient
checkpointing gives the same update, evaluation and the momentum callback work through a `PeftModel`. CLI: the job
writes the adapter with its card, both result sets and a merged model; and (slow) a LoRA fine-tune of a model
pre-trained on the "plain" demo domain beats the zero-shot model on the held-out "night" domain.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


peft = pytest.importorskip("peft")

from huggingface_hub import ModelCard  # noqa: E402
from PIL import Image, ImageStat  # noqa: E402
from transformers import AutoModel  # noqa: E402

from hf_vlp.adapters import default_lora_config, load_adapter, merge_adapter  # noqa: E402
from hf_vlp.hub import push_model_folder, validate_model_folder  # noqa: E402
from tests.trainers.helpers import StopAtStep, small_config, small_model, training_args  # noqa: E402
from trainers import VLPTrainer, cli  # noqa: E402
from trainers.callbacks import MomentumUpdateCallback  # noqa: E402
from trainers.cli.finetune import FinetuneArguments, build_peft_config  # noqa: E402
from trainers.data import ImageTextDataset, build_eval_gallery, demo_records  # noqa: E402


RECALL_KEYS = ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "mean_recall")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return demo_records(16, image_size=32)


def _peft_trainer(output_dir, processor, records, model=None, callbacks=(), **overrides) -> VLPTrainer:
    model = model if model is not None else small_model()
    values = {"max_steps": 2, "optim": "adamw_torch", "learning_rate": 1e-2, **overrides}
    return VLPTrainer(
        model=model,
        args=training_args(output_dir, **values),
        train_dataset=ImageTextDataset(records, caption_strategy="first"),
        eval_dataset=build_eval_gallery(records),
        processing_class=processor,
        peft_config=default_lora_config(model, dropout=0.0),
        callbacks=list(callbacks),
    )


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_only_adapter_and_head_parameters_train_and_are_saved(tmp_path, small_processor, records):
    trainer = _peft_trainer(tmp_path, small_processor, records, save_strategy="steps", save_steps=2)
    assert not any(isinstance(c, MomentumUpdateCallback) for c in trainer.callback_handler.callbacks)
    before = _snapshot(trainer.model)
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trainable
    assert all(".lora_" in name or ".modules_to_save." in name for name in changed)
    assert any("vision_model" in name for name in changed) and any("text_model" in name for name in changed)

    for folder in (tmp_path / "checkpoint-2", tmp_path / "saved"):
        if folder.name == "saved":
            trainer.save_model(str(folder))
        files = {path.name for path in folder.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert "model.safetensors" not in files


def test_peft_run_resumes_from_an_adapter_checkpoint(tmp_path, small_processor, records):
    settings = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "lr_scheduler_type": "linear"}
    full = _peft_trainer(tmp_path / "full", small_processor, records, **settings)
    full.train()
    _peft_trainer(tmp_path / "run", small_processor, records, callbacks=[StopAtStep(3)], **settings).train()
    resumed = _peft_trainer(tmp_path / "run", small_processor, records, **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    expected, actual = _snapshot(full.model), _snapshot(resumed.model)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_gives_the_same_adapter_update(tmp_path, small_processor, records):
    plain = _peft_trainer(tmp_path / "plain", small_processor, records)
    plain.train()
    checkpointed = _peft_trainer(
        tmp_path / "gc",
        small_processor,
        records,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},  # the variant that needs inputs requiring grad
    )
    checkpointed.train()
    base = checkpointed.model.get_base_model()
    assert any(getattr(module, "gradient_checkpointing", False) for module in base.vision_model.modules())
    assert any(getattr(module, "gradient_checkpointing", False) for module in base.text_model.modules())
    expected, actual = _snapshot(plain.model), _snapshot(checkpointed.model)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)


def _tiny_fusion():
    from hf_vlp.models.configuration_fusion_encoder import FusionEncoderConfig
    from hf_vlp.models.modeling_fusion_encoder import FusionEncoderForPreTraining

    config = small_config()
    torch.manual_seed(0)
    return FusionEncoderForPreTraining(
        FusionEncoderConfig(
            text_config=config.text_config,
            vision_config=config.vision_config,
            projection_dim=16,
            num_fusion_layers=1,
            queue_size=8,
            fusion_hidden_dropout_prob=0.0,
            fusion_attention_dropout_prob=0.0,
        )
    )


def test_fusion_peft_run_keeps_the_momentum_model_and_evaluates_through_the_adapters(
    tmp_path, small_processor, records
):
    model = _tiny_fusion()
    momentum = {name: p.detach().clone() for name, p in model.named_parameters() if "_m." in name}
    trainer = _peft_trainer(tmp_path, small_processor, records, model=model, rerank=True, retrieval_topk=4)
    trainer.train()
    # The momentum model is off for the adapter run: no EMA step moves its (frozen, unsaved) weights.
    assert momentum and all(torch.equal(p, momentum[name]) for name, p in model.named_parameters() if "_m." in name)

    peft_model = trainer.model.eval()
    batch = small_processor(text=[r["text"][0] for r in records[:4]], images=[r["image"] for r in records[:4]])
    with torch.no_grad():
        image = peft_model.encode_image(pixel_values=batch["pixel_values"])  # PeftModel -> base model's method
        text = peft_model.encode_text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        adapted = peft_model.rerank_scores(image, text)
        with peft_model.disable_adapter():
            base = peft_model.rerank_scores(
                peft_model.encode_image(pixel_values=batch["pixel_values"]),
                peft_model.encode_text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]),
            )
    assert not torch.allclose(adapted, base)  # the LoRA layers are active through the attribute pass-through
    adapted_metrics = trainer.evaluate()
    assert "eval_mean_recall" in adapted_metrics

    merged = merge_adapter(peft_model)  # the plain model the adapters amount to must score the same
    merged_metrics = VLPTrainer(
        model=merged.eval(),
        args=training_args(tmp_path / "merged", rerank=True, retrieval_topk=4),
        eval_dataset=build_eval_gallery(records),
        processing_class=small_processor,
    ).evaluate()
    assert {k: adapted_metrics[f"eval_{k}"] for k in RECALL_KEYS} == {
        k: merged_metrics[f"eval_{k}"] for k in RECALL_KEYS
    }


def test_peft_arguments_build_the_requested_method():
    model = small_model()
    lora = build_peft_config(model, FinetuneArguments(lora_towers="vision", lora_target="attention"), revision="v1")
    assert lora.peft_type.value == "LORA" and lora.r == 8 and lora.lora_dropout == 0.05 and lora.revision == "v1"
    assert "vision_model" in lora.target_modules and "text_model" not in lora.target_modules
    dora = build_peft_config(model, FinetuneArguments(peft="dora", lora_r=4, lora_train_heads=False))
    assert dora.use_dora and dora.r == 4 and not dora.modules_to_save
    assert build_peft_config(model, FinetuneArguments(peft="loha")).peft_type.value == "LOHA"
    with pytest.raises(ValueError, match="LoRA and DoRA"):
        FinetuneArguments(peft="lokr", lora_dropout=0.1)
    with pytest.raises(ValueError, match="lora-towers"):
        FinetuneArguments(lora_towers="text,audio")


# ---------------------------------------------------------------------------------------------- hf-vlp finetune
_QUIET = ["--report_to", "none", "--torch_threads", "1", "--disable_tqdm", "true", "--use_cpu", "true"]


def _results(path: Path, prefix: str = "eval_") -> dict[str, float]:
    """The retrieval numbers of a results file, keyed without `prefix` so that result sets compare directly."""
    values = json.loads(path.read_text(encoding="utf-8"))
    return {key: values[prefix + key] for key in RECALL_KEYS}


def test_finetune_command_writes_the_adapter_with_its_card_both_results_and_a_merged_model(
    local_hub, tmp_path, small_processor
):
    base = tmp_path / "base"
    small_model().save_pretrained(base)
    small_processor.save_pretrained(base)
    push_model_folder(base, "user/tiny-base")  # fine-tuned from a Hub id: the card must link the base there
    demo = ["--demo", "--demo_dir", str(tmp_path / "night"), "--demo_num_train", "24", "--demo_num_eval", "12"]
    out = tmp_path / "run"
    argv = ["finetune", "--model", "user/tiny-base", "--output_dir", str(out), "--max_steps", "2", "--lora-r", "4"]
    argv += ["--per_device_train_batch_size", "8", "--save_strategy", "no", "--merge", *demo, *_QUIET]
    argv += ["--learning_rate", "1e-2", "--hub_model_id", "user/tiny-night-lora"]  # the repo named in the card
    assert cli.main(argv) == 0

    rendered = Image.open(tmp_path / "night" / "train" / "000000.png").convert("L")
    assert ImageStat.Stat(rendered).mean[0] < 100  # --demo renders the "night" look (dark) unless told otherwise

    adapter = out / "adapter"
    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4
    assert adapter_config["base_model_name_or_path"] == "user/tiny-base"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    assert not (adapter / "training_args.bin").exists(), "the Hub-ready adapter folder must hold no pickle"
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "user/tiny-base"
    assert card.data.model_name == "tiny-night-lora" and '"user/tiny-night-lora"' in card.text
    card_metrics = {result.metric_type: result.metric_value for result in card.data.eval_results}

    base_results, adapted = _results(out / "base_eval_results.json", "eval_base_"), _results(out / "eval_results.json")
    assert {f"base_{key}": value for key, value in base_results.items()} | adapted == {
        key: card_metrics[key] for key in [f"base_{k}" for k in RECALL_KEYS] + list(RECALL_KEYS)
    }
    assert json.loads((out / "all_results.json").read_text())["eval_base_mean_recall"] == base_results["mean_recall"]
    night_eval = str(tmp_path / "night" / "eval")
    for index, (model, expected) in enumerate((("user/tiny-base", base_results), (str(out / "merged"), adapted))):
        evaluated = tmp_path / f"evaluate-{index}"
        argv = ["evaluate", "--model", model, "--eval-dir", night_eval, "--output_dir", str(evaluated), *_QUIET]
        assert cli.main(argv) == 0
        assert _results(evaluated / "eval_results.json") == expected  # zero-shot = the base; merged = the adapter
    assert validate_model_folder(out / "merged") == "model"

    # Publish the adapter, then load it from the Hub onto the base it names: the merged model's outputs.
    assert cli.main(["push", str(adapter), "--repo-id", "user/tiny-night-lora"]) == 0
    from_hub = load_adapter(None, "user/tiny-night-lora")
    merged = AutoModel.from_pretrained(out / "merged").eval()
    pixels = small_processor(images=[Image.new("RGB", (40, 30), (200, 30, 30))])["pixel_values"]
    with torch.no_grad():
        adapted_embeds = from_hub.encode_image(pixels).embeds
        torch.testing.assert_close(adapted_embeds, merged.encode_image(pixels).embeds)
        assert not torch.allclose(adapted_embeds, AutoModel.from_pretrained(base).encode_image(pixels).embeds)


@pytest.mark.slow
def test_lora_on_a_held_out_domain_beats_the_zero_shot_model(tmp_path):
    """Pre-train the tiny model on the "plain" demo look, then LoRA-fine-tune it on "night" (the `demo` and
    `demo-lora` recipes, scaled down): the adapted model must retrieve better on night's held-out scenes."""
    data = ["--demo_num_train", "320", "--demo_num_eval", "64", "--per_device_train_batch_size", "32", *_QUIET]
    pretrained = tmp_path / "pretrain"
    argv = ["pretrain", "--recipe", "demo", "--output_dir", str(pretrained), "--demo_dir", str(tmp_path / "plain")]
    assert cli.main([*argv, "--max_steps", "200", "--save_strategy", "no", *data]) == 0
    out = tmp_path / "lora"
    argv = ["finetune", "--recipe", "demo-lora", "--model", str(pretrained / "model"), "--output_dir", str(out)]
    assert (
        cli.main([*argv, "--demo_dir", str(tmp_path / "night"), "--max_steps", "80", "--save_strategy", "no", *data])
        == 0
    )

    base = _results(out / "base_eval_results.json", "eval_base_")
    adapted = _results(out / "eval_results.json")
    assert adapted["mean_recall"] > base["mean_recall"]
    assert adapted["i2t_R@5"] > base["i2t_R@5"] and adapted["t2i_R@5"] > base["t2i_R@5"]
