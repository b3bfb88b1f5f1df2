"""Publishing from the training side, against the loopback Hub: `hf-vlp push DIR --repo-id ...` and
`VLPTrainer.push_to_hub` (which must upload hf-vlp's card with the trainer's measured results, not the generic one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard, snapshot_download

from hf_vlp.adapters import default_lora_config
from tests.trainers.helpers import small_model, training_args
from tests.utils.hub_server import LocalHub
from trainers import VLPTrainer, cli
from trainers.data import ImageTextDataset, build_eval_gallery, demo_records


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return demo_records(8, image_size=32)


def _trainer(output_dir: Path, processor, records, peft: bool = False, **overrides) -> VLPTrainer:
    model = small_model()
    return VLPTrainer(
        model=model,
        args=training_args(output_dir, max_steps=1, **overrides),
        train_dataset=ImageTextDataset(records, caption_strategy="first"),
        eval_dataset=build_eval_gallery(records),
        processing_class=processor,
        peft_config=default_lora_config(model, dropout=0.0) if peft else None,
    )


def _card_metrics(card: ModelCard) -> dict[str, float]:
    """`model-index` results of a card as `eval_<metric_type>` -> value, the trainer's own key names."""
    return {f"eval_{result.metric_type}": result.metric_value for result in card.data.eval_results or []}


def _recall_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if "_R@" in key or key.endswith(("_mean", "_mean_recall"))}


def test_push_command_publishes_a_folder_and_reports_failures_in_one_line(
    local_hub: LocalHub, tmp_path, small_processor, records, capsys
):
    folder = tmp_path / "model"
    trainer = _trainer(folder, small_processor, records)
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.save_metrics("eval", metrics)  # eval_results.json + all_results.json in the folder: the card's results

    assert cli.main(["push", str(folder), "--repo-id", "user/tiny", "--commit-message", "first release"]) == 0
    commit_url = capsys.readouterr().out.strip().splitlines()[-1]
    assert commit_url.startswith(local_hub.endpoint) and commit_url.endswith(local_hub.repo("user/tiny").head().oid)
    local = Path(snapshot_download("user/tiny"))
    files = {path.name for path in local.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_dual_encoder.py", "processor_config.json"} <= files
    assert "training_args.bin" not in files  # pickles are never published
    card = ModelCard.load(local / "README.md")
    assert card.data.library_name == "transformers" and "hf-vlp" in card.data.tags
    assert _card_metrics(card) == _recall_metrics(metrics) and metrics["eval_mean_recall"] > 0

    assert cli.main(["push", str(folder), "--repo-id", "user/branch", "--revision", "dev", "--private"]) == 0
    branched = local_hub.repo("user/branch")
    assert branched.private and "README.md" in branched.files("dev") and "README.md" not in branched.files("main")

    local_hub.fail_next("commit", status=500, message="storage quota exceeded")
    assert cli.main(["push", str(folder), "--repo-id", "user/failed"]) == 1
    err = capsys.readouterr().err
    assert "step 'commit'" in err and "storage quota exceeded" in err and "Traceback" not in err
    assert set(local_hub.repo("user/failed").files()) == {".gitattributes"}  # all-or-nothing: nothing landed

    (tmp_path / "empty").mkdir()
    assert cli.main(["push", str(tmp_path / "empty"), "--repo-id", "user/other"]) == 1
    err = capsys.readouterr().err
    assert "step 'validate'" in err and "Traceback" not in err


@pytest.mark.parametrize("peft", [False, True], ids=["model", "adapter"])
def test_trainer_push_to_hub_uploads_our_card_with_the_measured_results(
    local_hub: LocalHub, tmp_path, small_processor, records, peft
):
    trainer = _trainer(tmp_path / "run", small_processor, records, peft=peft, hub_model_id="user/pushed")
    trainer.train()
    trainer.evaluate()  # a stale result, superseded by the next evaluation
    measured = trainer.evaluate(build_eval_gallery(records[:4]))
    trainer.push_to_hub(commit_message="End of training")

    files = local_hub.repo("user/pushed").files()
    weights = "adapter_model.safetensors" if peft else "model.safetensors"
    assert weights in files and ("adapter_config.json" in files) == peft
    local = Path(snapshot_download("user/pushed"))
    card = ModelCard.load(local / "README.md")
    assert card.data.library_name == ("peft" if peft else "transformers")
    assert "hf-vlp" in card.data.tags and card.data.model_name == "pushed"
    assert _card_metrics(card) == _recall_metrics(measured)
    assert '"user/pushed"' in card.text  # the usage snippet loads this repo


def test_trainer_push_to_hub_keeps_the_generic_card_for_other_models(local_hub: LocalHub, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    tower = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": 99}, vision_config={**tower, "image_size": 32, "patch_size": 8}
    )
    args = training_args(tmp_path / "run", hub_model_id="user/clip")
    VLPTrainer(model=CLIPModel(config), args=args).push_to_hub()
    card = ModelCard(local_hub.repo("user/clip").files()["README.md"].decode("utf-8"))
    assert "generated_from_trainer" in card.data.tags and "hf-vlp" not in card.data.tags
