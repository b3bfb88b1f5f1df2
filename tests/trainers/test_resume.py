"""A run stopped mid-epoch and resumed from its last checkpoint ends exactly where an uninterrupted run ends:
parameters, the EMA copy, the queue buffers, the optimizer and scheduler, the RNG (dropout) and the GRIT groups."""

from __future__ import annotations

import os

import torch

from tests.trainers.helpers import MomentumDualEncoder, StopAtStep, small_config, training_args
from trainers import VLPTrainer
from trainers.data import ImageTextDataset, demo_records
from trainers.grit import GRIT_STATE_NAME


def _trainer(output_dir, processor, records, callbacks=()):
    torch.manual_seed(0)
    model = MomentumDualEncoder(small_config())
    args = training_args(
        output_dir,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # 32 pairs -> 4 optimizer steps per epoch
        max_steps=10,
        optim="adamw_torch",
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        save_strategy="steps",
        save_steps=3,
        grit_sampling=True,
    )
    dataset = ImageTextDataset(records, caption_strategy="sample")
    return VLPTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=processor, callbacks=list(callbacks)
    )


def test_resumed_run_reaches_the_uninterrupted_state(tmp_path, small_processor):
    records = demo_records(32, image_size=32)

    full = _trainer(tmp_path / "full", small_processor, records)
    full.train()

    interrupted = _trainer(tmp_path / "run", small_processor, records, [StopAtStep(7)])
    interrupted.train()
    assert interrupted.state.global_step == 7
    checkpoint = tmp_path / "run" / "checkpoint-6"  # mid-epoch 1 (steps 5-8), after the first GRIT refresh
    assert os.path.isfile(checkpoint / GRIT_STATE_NAME)

    resumed = _trainer(tmp_path / "run", small_processor, records)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 10
    assert resumed.model.momentum_updates == 4

    expected = full.model.state_dict()
    actual = resumed.model.state_dict()
    assert expected.keys() == actual.keys() and {"queue", "queue_ptr", "text_head_m.weight"} <= expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)
    assert int(expected["queue_ptr"]) == 10 * 2 * 4
    # not trivially equal: training moved the weights and the stopped run had not got there
    assert not torch.equal(interrupted.model.text_head_m.weight, expected["text_head_m.weight"])
