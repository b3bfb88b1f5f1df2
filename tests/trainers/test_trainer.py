"""VLPTrainer's training loop: loss scaling under gradient accumulation, per-term logging, momentum updates once
per optimizer step, LiT freezing, skipped bad samples, the collator's image ids reaching the loss, and the per-epoch
caption draw reaching persistent DataLoader workers."""

from __future__ import annotations

import torch

from tests.trainers.helpers import (
    MomentumDualEncoder,
    Regression,
    RegressionData,
    small_config,
    small_model,
    train_on_demo,
    training_args,
)
from trainers import VLPTrainer
from trainers.data import ImageTextDataset, demo_records


def _train_logs(trainer: VLPTrainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """One optimizer step on 8 samples = two accumulated micro-batches of 4 (per-sample loss, SGD)."""
    updates, logs = [], []
    initial = Regression().linear.weight.detach().clone()
    for batch, accumulation in ((8, 1), (4, 2)):
        model = Regression()
        args = training_args(
            tmp_path / f"b{batch}",
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            train_sampling_strategy="sequential",
        )
        trainer = VLPTrainer(model=model, args=args, train_dataset=RegressionData(8))
        trainer.train()
        updates.append(model.linear.weight.detach().clone())
        logs.append(_train_logs(trainer)[0])
    assert not torch.allclose(updates[0], initial)
    torch.testing.assert_close(updates[0], updates[1], rtol=0, atol=1e-6)
    # The logged loss and its terms keep the per-batch magnitude: not divided by the accumulation steps.
    for key in ("loss", "mse_loss", "penalty_loss"):
        assert abs(logs[0][key] - logs[1][key]) < 1e-5, key
    assert abs(logs[0]["loss"] - (logs[0]["mse_loss"] + logs[0]["penalty_loss"])) < 1e-5


def test_momentum_update_runs_once_per_optimizer_step(tmp_path):
    model = Regression()
    args = training_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3)
    VLPTrainer(model=model, args=args, train_dataset=RegressionData(12)).train()
    assert model.forward_calls == 6
    assert model.momentum_updates == 3


def test_momentum_model_updates_its_ema_and_logs_every_loss_term(tmp_path, small_processor):
    torch.manual_seed(0)
    model = MomentumDualEncoder(small_config())
    before = model.text_head_m.weight.detach().clone()
    trainer = train_on_demo(
        model, small_processor, tmp_path, 16, max_steps=2, gradient_accumulation_steps=2, learning_rate=0.05
    )
    assert model.momentum_updates == 2
    assert not torch.equal(before, model.text_head_m.weight)
    log = _train_logs(trainer)[0]
    assert {"itc_loss", "queue_loss", "dropout_loss", "num_skipped_samples"} <= log.keys()


def test_lit_trains_the_text_side_and_leaves_the_locked_vision_tower_alone(tmp_path, small_processor):
    model = small_model(lock_vision=True)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    train_on_demo(model, small_processor, tmp_path, max_steps=2, learning_rate=0.05)
    changed = {name for name, param in model.named_parameters() if not torch.equal(before[name], param)}
    vision = {name for name in before if name.startswith("vision_model.")}
    assert vision and not changed & vision
    assert any(name.startswith("text_model.") for name in changed)
    assert {"text_projection.weight", "visual_projection.weight", "logit_scale"} <= changed


def test_bad_samples_are_skipped_and_counted(tmp_path, small_processor):
    records = demo_records(8, image_size=32)
    records[1]["image"] = str(tmp_path / "missing.png")
    records[6]["text"] = ["  "]
    args = training_args(tmp_path, max_steps=2, logging_steps=2, train_sampling_strategy="sequential")
    trainer = VLPTrainer(
        model=small_model(), args=args, train_dataset=ImageTextDataset(records), processing_class=small_processor
    )
    trainer.train()
    assert _train_logs(trainer)[-1]["num_skipped_samples"] == 2


def test_collator_image_hash_reaches_the_model_as_image_ids(tmp_path, small_processor):
    """Two captions of one picture share an id in the loss (positives, not negatives); side channels never reach
    `forward`. With `use_image_ids=False` no ids are passed."""
    record = demo_records(3, image_size=32)
    items = [dict(record[0], text=record[0]["text"][0]), dict(record[0], text=record[0]["text"][1])]
    items += [dict(record[i], text=record[i]["text"][0]) for i in (1, 2)]
    model = small_model()
    seen = {}

    def spy(module, args, kwargs):
        seen.update(kwargs)

    model.register_forward_pre_hook(spy, with_kwargs=True)
    for use_image_ids in (True, False):
        seen.clear()
        trainer = VLPTrainer(
            model=model, args=training_args(tmp_path, use_image_ids=use_image_ids), processing_class=small_processor
        )
        loss = trainer.compute_loss(model, trainer.data_collator(items))
        assert loss.ndim == 0 and seen["return_loss"] is True
        assert not {"image_hash", "image_index", "num_skipped_samples"} & seen.keys()
        if use_image_ids:
            ids = seen["image_ids"].tolist()
            assert ids[0] == ids[1] and len(set(ids)) == 3
        else:
            assert "image_ids" not in seen


def test_persistent_workers_draw_each_epochs_captions(tmp_path, small_processor):
    """The CLI keeps DataLoader workers across epochs; the captions they feed must still change per epoch, exactly
    as when the main process decodes (no workers)."""

    def texts_per_step(num_workers: int) -> list[list[int]]:
        model = small_model()
        seen = []
        model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["input_ids"][:, :6].tolist()), with_kwargs=True
        )
        VLPTrainer(
            model=model,
            args=training_args(
                tmp_path / str(num_workers),
                max_steps=-1,
                num_train_epochs=3,
                dataloader_num_workers=num_workers,
                dataloader_persistent_workers=True,
            ),
            train_dataset=ImageTextDataset(demo_records(8, image_size=32)),
            processing_class=small_processor,
        ).train()
        return seen

    in_process, persistent = texts_per_step(0), texts_per_step(1)
    assert persistent == in_process and len(persistent) == 6
    epochs = [sorted(map(tuple, persistent[i] + persistent[i + 1])) for i in (0, 2, 4)]
    assert epochs[0] != epochs[1] != epochs[2]


def test_fusion_pretraining_logs_every_objective_and_ramps_distillation(tmp_path):
    from transformers import AutoModelForPreTraining

    from hf_vlp import config_for_preset, processor_for_preset

    torch.manual_seed(0)
    model = AutoModelForPreTraining.from_config(config_for_preset("tiny-fusion"))
    alphas = []
    model.register_forward_pre_hook(lambda module, args, kwargs: alphas.append(kwargs.get("alpha")), with_kwargs=True)
    processor = processor_for_preset("tiny-fusion")
    trainer = train_on_demo(model, processor, tmp_path, max_steps=2, learning_rate=1e-3, distill_warmup_steps=4)
    target = model.config.distill_alpha
    assert alphas == [0.0, target / 4]
    assert {"itc_loss", "itm_loss", "mlm_loss"} <= _train_logs(trainer)[0].keys()
