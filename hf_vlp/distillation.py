"""Distil a fusion encoder into a dual encoder (DiDE: cross-modal attention distillation).

A fusion teacher scores pairs well but needs a cross-encoder pass per pair; a dual encoder student embeds each
side once. DiDE (Wang et al., 2022) makes the student imitate the teacher's *cross-modal attention*: the student
has no cross-attention, so its text-to-image "attention" is computed from its own last-layer token embeddings
(softmax over the image tokens of `q . k / sqrt(d)`) and matched (KL) to the teacher's last-fusion-layer
cross-attention averaged over heads; image-to-text likewise where the teacher has an image-query cross encoder
(R2D2's two-way mode). Soft targets of the teacher's similarity distributions (ITC) and match scores (ITM)
complete the loss.

Model side, not shipped with saved models (it is a training objective, not needed at inference): the trainer
(`hf-vlp pretrain --distill-teacher FUSION_DIR`) loads the teacher with `load_distillation_teacher` and calls
`distillation_loss(student, teacher, batch, student_output=...)` on the student's own forward output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .models import DualEncoderModel, FusionEncoderForRetrieval


__all__ = ["attention_kl", "cross_modal_attention_log_probs", "distillation_loss", "load_distillation_teacher"]


def cross_modal_attention_log_probs(
    queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Log of `softmax_k(q . k / sqrt(d))` for every query token over the other modality's tokens.

    Args:
        queries: (B, Lq, d) token embeddings of the query modality.
        keys: (B, Lk, d) token embeddings of the other modality.
        key_mask: (B, Lk) 1 for real tokens; padding gets (practically) zero probability.

    Returns:
        (B, Lq, Lk) log-probabilities. A finite fill (not -inf) masks padding so that `0 * log p` stays 0.
    """
    scores = queries @ keys.transpose(1, 2) / math.sqrt(queries.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(key_mask[:, None, :] == 0, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores.float(), dim=-1)


def attention_kl(
    teacher_probs: torch.Tensor, student_log_probs: torch.Tensor, query_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over real query tokens of `KL(teacher || student)` between (B, Lq, Lk) attention distributions."""
    per_query = (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * student_log_probs).sum(dim=-1)
    if query_mask is None:
        return per_query.mean()
    mask = query_mask.to(per_query.dtype)
    return (per_query * mask).sum() / mask.sum().clamp(min=1)


def _soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD term: `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over rows."""
    return (
        F.kl_div(
            F.log_softmax(student_logits.float() / temperature, dim=-1),
            F.log_softmax(teacher_logits.float() / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )


@torch.no_grad()
def _teacher_itm_grid(teacher: FusionEncoderForRetrieval, image, text, chunk_size: int) -> torch.Tensor:
    """(images, texts) matrix of the teacher's ITM log-odds for every in-batch pair."""
    num_images, num_texts = image.embeds.shape[0], text.embeds.shape[0]
    rows = torch.arange(num_images, device=image.embeds.device).repeat_interleave(num_texts)
    cols = torch.arange(num_texts, device=text.embeds.device).repeat(num_images)
    scores = [
        teacher.rerank_scores(
            image.select(rows[start : start + chunk_size]), text.select(cols[start : start + chunk_size])
        )
        for start in range(0, rows.shape[0], chunk_size)
    ]
    return torch.cat(scores).view(num_images, num_texts)


def load_distillation_teacher(path: str, device: torch.device | str | None = None) -> FusionEncoderForRetrieval:
    """A saved fusion encoder (folder or Hub id) as a frozen teacher: eval mode, no parameter requires grad.

    A pre-training checkpoint loads into the retrieval class (without its momentum copy, queue and MLM head). A
    folder holding anything but a fusion encoder is refused with the fix.
    """
    from transformers import AutoConfig

    from .models import FusionEncoderConfig

    config = AutoConfig.from_pretrained(path)
    if not isinstance(config, FusionEncoderConfig):
        raise ValueError(
            f"distillation teacher {path} is a {type(config).__name__}, not a fusion encoder: pass a folder saved "
            "from a fusion model (e.g. `hf-vlp pretrain --preset tiny-fusion`)"
        )
    teacher = FusionEncoderForRetrieval.from_pretrained(path)
    teacher.requires_grad_(False)
    return teacher.to(device).eval() if device is not None else teacher.eval()


def distillation_loss(
    student: DualEncoderModel,
    teacher: FusionEncoderForRetrieval,
    batch: dict[str, torch.Tensor],
    temperature: float = 1.0,
    attention_weight: float = 1.0,
    itc_weight: float = 1.0,
    itm_weight: float = 1.0,
    contrastive_weight: float = 1.0,
    itm_chunk_size: int = 256,
    student_output=None,
) -> dict[str, torch.Tensor]:
    """DiDE loss of a dual encoder `student` against a fusion `teacher` on one batch of aligned pairs.

    Args:
        student: the dual encoder being trained.
        teacher: a fusion encoder (retrieval or pre-training class), frozen and in eval mode; it must see the
            same tokens as the student (same tokenizer, and the same number of image tokens from `pixel_values`).
        batch: `input_ids`, `pixel_values`, and optionally `attention_mask`, `token_type_ids`, `image_ids`.
        temperature: softening of the ITC / ITM soft targets (the KL terms are scaled by `T^2`).
        attention_weight: cross-modal attention distillation (text-to-image, plus image-to-text when the
            teacher is two-way), KL averaged over the directions.
        itc_weight: KL between the student's and the teacher's contrastive distributions, both directions.
        itm_weight: KL between the student's contrastive distributions and the teacher's ITM scores over all
            in-batch pairs (B^2 cross-encoder passes, `itm_chunk_size` at a time), both directions.
        contrastive_weight: the student's own (hard-label) contrastive loss.
        itm_chunk_size: pairs per teacher cross-encoder pass of the ITM grid.
        student_output: the student's output on `batch` when the caller already ran it (the trainer runs the
            forward through its DDP wrapper, so gradients synchronise); it must hold the loss if
            `contrastive_weight > 0`. None: the student is run here.

    Returns:
        `{"loss", "attention_distill_loss", "itc_distill_loss", "itm_distill_loss", "contrastive_loss"}`: the
        weighted sum and each term with a non-zero weight (unweighted).
    """
    input_ids, pixel_values = batch["input_ids"], batch["pixel_values"]
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    token_type_ids = batch.get("token_type_ids")
    output = student_output
    if output is None:
        output = student(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_loss=contrastive_weight > 0,
            image_ids=batch.get("image_ids"),
        )
    with torch.no_grad():
        teacher_text = teacher.encode_text(input_ids, attention_mask, token_type_ids)
        teacher_image = teacher.encode_image(pixel_values)

    losses: dict[str, torch.Tensor] = {}
    if attention_weight > 0:
        text_tokens = student.text_projection(output.text_model_output.last_hidden_state)
        image_tokens = student.visual_projection(output.vision_model_output.last_hidden_state)
        if image_tokens.shape[1] != teacher_image.fusion_states.shape[1]:
            raise ValueError(
                f"student has {image_tokens.shape[1]} image tokens and teacher {teacher_image.fusion_states.shape[1]}:"
                " attention maps cannot be matched (use the same patching and image size, and no"
                " vision_patch_dropout in the student)"
            )
        with torch.no_grad():
            cross = teacher.cross_encode(teacher_image, teacher_text, output_attentions=True)
        terms = [
            attention_kl(
                cross.text_cross_attentions[-1].mean(dim=1).float(),
                cross_modal_attention_log_probs(text_tokens, image_tokens),
                attention_mask,
            )
        ]
        if cross.image_cross_attentions is not None:
            terms.append(
                attention_kl(
                    cross.image_cross_attentions[-1].mean(dim=1).float(),
                    cross_modal_attention_log_probs(image_tokens, text_tokens, attention_mask),
                )
            )
        losses["attention_distill_loss"] = torch.stack(terms).mean()
    if itc_weight > 0:
        with torch.no_grad():
            teacher_logits = teacher.get_logit_scale() * teacher.similarity(teacher_image, teacher_text)[0]
        losses["itc_distill_loss"] = (
            _soft_kl(output.logits_per_image, teacher_logits, temperature)
            + _soft_kl(output.logits_per_text, teacher_logits.t(), temperature)
        ) / 2
    if itm_weight > 0:
        grid = _teacher_itm_grid(teacher, teacher_image, teacher_text, itm_chunk_size)
        losses["itm_distill_loss"] = (
            _soft_kl(output.logits_per_image, grid, temperature)
            + _soft_kl(output.logits_per_text, grid.t(), temperature)
        ) / 2
    if contrastive_weight > 0:
        losses["contrastive_loss"] = output.loss
    weights = {
        "attention_distill_loss": attention_weight,
        "itc_distill_loss": itc_weight,
        "itm_distill_loss": itm_weight,
        "contrastive_loss": contrastive_weight,
    }
    losses["loss"] = sum(weights[name] * value for name, value in losses.items())
    return losses
