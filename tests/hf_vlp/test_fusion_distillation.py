"""Cross-modal attention distillation (DiDE) of a fusion teacher into a dual encoder student."""

import math

import pytest
import torch

from hf_vlp import DualEncoderConfig, DualEncoderModel, FusionEncoderConfig, FusionEncoderForRetrieval
from hf_vlp.distillation import attention_kl, cross_modal_attention_log_probs, distillation_loss


IMAGE = 32


def tiny(config_class, preset, patch_size: int = 8, **overrides):
    vision = {
        **config_class.from_preset(preset).vision_config.to_dict(),
        "image_size": IMAGE,
        "patch_size": patch_size,
    }
    return config_class.from_preset(preset, vision_config=vision, **overrides)


def student_and_teacher(fusion_mode: str = "two_way"):
    torch.manual_seed(0)
    student = DualEncoderModel(tiny(DualEncoderConfig, "tiny")).train()
    teacher = FusionEncoderForRetrieval(tiny(FusionEncoderConfig, "tiny-fusion", fusion_mode=fusion_mode)).eval()
    teacher.requires_grad_(False)
    return student, teacher


def batch(size: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 7000, (size, 7), generator=generator)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    ids[0, -2:], mask[0, -2:] = 0, 0  # a padded caption
    ids[0, -3] = 3
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.randn(size, 3, IMAGE, IMAGE, generator=generator),
        "image_ids": torch.arange(size),
    }


def test_student_attention_is_a_softmax_of_scaled_dot_products_over_real_keys():
    queries = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    keys = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])
    log_probs = cross_modal_attention_log_probs(queries, keys, key_mask=torch.tensor([[1, 1, 0]]))
    scores = torch.tensor([[1.0, 2.0], [2.0, 0.0]]) / math.sqrt(2)
    assert torch.allclose(log_probs.exp()[0, :, :2], scores.softmax(-1), atol=1e-6)
    assert (log_probs.exp()[0, :, 2] == 0).all()


def test_attention_kl_is_zero_for_equal_maps_and_ignores_padded_queries():
    probs = torch.tensor([[[0.5, 0.5, 0.0], [0.9, 0.1, 0.0]]])
    assert attention_kl(probs, cross_modal_attention_log_probs(torch.zeros(1, 2, 2), torch.zeros(1, 3, 2))) > 0
    log_probs = torch.log(probs.clamp(min=1e-30))
    assert attention_kl(probs, log_probs).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((1, 2, 3), -math.log(3))
    only_first = attention_kl(probs, uniform, query_mask=torch.tensor([[1, 0]]))
    assert only_first.item() == pytest.approx(0.5 * math.log(0.5 / (1 / 3)) * 2)


@pytest.mark.parametrize("fusion_mode", ["albef", "two_way"])
def test_distillation_loss_terms_flow_into_the_student_only(fusion_mode):
    student, teacher = student_and_teacher(fusion_mode)
    losses = distillation_loss(student, teacher, batch())
    names = {"attention_distill_loss", "itc_distill_loss", "itm_distill_loss", "contrastive_loss"}
    assert set(losses) == names | {"loss"}
    assert all(torch.isfinite(value) for value in losses.values())
    assert torch.allclose(losses["loss"], sum(losses[name] for name in names))
    losses["loss"].backward()
    assert (
        student.text_projection.weight.grad is not None
        and student.vision_model.embeddings.patch_embedding.weight.grad is not None
    )
    assert all(p.grad is None for p in teacher.parameters())


def test_switched_off_terms_are_absent_and_token_mismatch_is_refused():
    student, teacher = student_and_teacher()
    losses = distillation_loss(student, teacher, batch(), itm_weight=0.0, contrastive_weight=0.0)
    assert set(losses) == {"attention_distill_loss", "itc_distill_loss", "loss"}
    coarser = FusionEncoderForRetrieval(tiny(FusionEncoderConfig, "tiny-fusion", patch_size=16)).eval()
    with pytest.raises(ValueError, match="image tokens"):
        distillation_loss(student, coarser, batch())


def test_a_few_steps_bring_the_student_attention_towards_the_teacher():
    student, teacher = student_and_teacher()
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    inputs = batch()
    history = []
    for _ in range(15):
        losses = distillation_loss(student, teacher, inputs, itc_weight=0.0, itm_weight=0.0, contrastive_weight=0.0)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append(losses["attention_distill_loss"].item())
    assert history[-1] < 0.5 * history[0], history
