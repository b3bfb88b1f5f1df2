"""DiDE wired into training: `hf-vlp pretrain --distill-teacher FUSION_DIR` trains a dual student against a frozen
fusion teacher, logging each distillation term; the student learns, the teacher never moves."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_vlp import (
    DualEncoderConfig,
    DualEncoderModel,
    FusionEncoderConfig,
    FusionEncoderForRetrieval,
    processor_for_preset,
)
from tests.trainers.helpers import training_args
from trainers import VLPTrainer, cli
from trainers.data import ImageTextDataset, demo_records


DISTILL_TERMS = {"attention_distill_loss", "itc_distill_loss", "itm_distill_loss", "distill_loss", "itc_loss"}


def save_teacher(folder) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    teacher = FusionEncoderForRetrieval(FusionEncoderConfig.from_preset("tiny-fusion"))
    teacher.save_pretrained(folder)
    return load_file(folder / "model.safetensors")


def tiny_student(**overrides) -> DualEncoderModel:
    torch.manual_seed(0)
    return DualEncoderModel(DualEncoderConfig.from_preset("tiny", **overrides))


def test_trainer_distils_into_the_student_and_leaves_the_teacher_frozen(tmp_path):
    save_teacher(tmp_path / "teacher")
    student = tiny_student()
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    args = training_args(tmp_path / "run", distill_teacher=str(tmp_path / "teacher"), distill_weight=0.5)
    trainer = VLPTrainer(
        model=student,
        args=args,
        train_dataset=ImageTextDataset(demo_records(8, image_size=64)),
        processing_class=processor_for_preset("tiny"),
    )
    teacher = trainer._distill_teacher
    teacher_before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and logged[0].keys() >= DISTILL_TERMS
    first = logged[0]
    assert first["distill_loss"] == pytest.approx(
        0.5 * (first["attention_distill_loss"] + first["itc_distill_loss"] + first["itm_distill_loss"]), rel=1e-4
    )
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(p, teacher_before[name]) for name, p in teacher.named_parameters())
    assert any(not torch.equal(p, before[name]) for name, p in student.named_parameters())


def test_the_itm_soft_labels_can_be_weighted_alone_or_skipped(tmp_path):
    save_teacher(tmp_path / "teacher")
    args = training_args(tmp_path / "run", distill_teacher=str(tmp_path / "teacher"), distill_itm_weight=0.0)
    trainer = VLPTrainer(
        model=tiny_student(),
        args=args,
        train_dataset=ImageTextDataset(demo_records(8, image_size=64)),
        processing_class=processor_for_preset("tiny"),
    )
    trainer.train()
    first = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert "itm_distill_loss" not in first  # no batch^2 teacher passes
    assert first["distill_loss"] == pytest.approx(
        first["attention_distill_loss"] + first["itc_distill_loss"], rel=1e-4
    )


def test_distillation_refuses_what_cannot_work(tmp_path):
    save_teacher(tmp_path / "teacher")
    DualEncoderModel(DualEncoderConfig.from_preset("tiny")).save_pretrained(tmp_path / "dual")
    dataset = ImageTextDataset(demo_records(4, image_size=64))

    def trainer(model, **overrides):
        args = training_args(tmp_path / "run", **overrides)
        return VLPTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor_for_preset("tiny"))

    with pytest.raises(ValueError, match="not a fusion encoder"):
        trainer(tiny_student(), distill_teacher=str(tmp_path / "dual"))
    with pytest.raises(ValueError, match="vision_patch_dropout=0"):
        trainer(tiny_student(vision_patch_dropout=0.5), distill_teacher=str(tmp_path / "teacher"))
    with pytest.raises(ValueError, match="grad_cache_chunk_size"):
        trainer(tiny_student(), distill_teacher=str(tmp_path / "teacher"), grad_cache_chunk_size=2)


def test_pretrain_cli_with_a_teacher_folder_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_VLP_CACHE", str(tmp_path / "cache"))
    teacher_state = save_teacher(tmp_path / "teacher")
    student_dir = tmp_path / "student"
    tiny_student().save_pretrained(student_dir)
    processor_for_preset("tiny").save_pretrained(student_dir)
    out = tmp_path / "run"
    code = cli.main(
        [
            "pretrain", "--model", str(student_dir), "--distill-teacher", str(tmp_path / "teacher"),
            "--distill-weight", "1.0", "--distill-temperature", "2.0", "--demo", "--demo_num_train", "16",
            "--demo_num_eval", "8", "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--learning_rate", "1e-3", "--use_cpu", "true", "--torch_threads", "1", "--dataloader_num_workers", "0",
        ]
    )  # fmt: skip
    assert code == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert len(steps) == 3 and all(entry.keys() >= DISTILL_TERMS for entry in steps)
    assert all(entry["distill_loss"] > 0 for entry in steps)
    trained = load_file(out / "model" / "model.safetensors")
    initial = load_file(student_dir / "model.safetensors")
    assert trained.keys() == initial.keys()  # the student alone is saved, no teacher weights
    assert any(not torch.equal(trained[key], initial[key]) for key in initial)
    teacher_after = load_file(tmp_path / "teacher" / "model.safetensors")
    assert all(torch.equal(teacher_after[key], value) for key, value in teacher_state.items() if key in teacher_after)
