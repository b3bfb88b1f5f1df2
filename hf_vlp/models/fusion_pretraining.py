"""The pre-training objectives of the fusion encoder, as named steps of one forward.

`FusionEncoderForPreTraining.forward` encodes the batch once (online and momentum towers) into a
`_PreTrainingBatch`, then runs `_itc_terms` (ALBEF's momentum ITC with queue and distillation, or the in-batch
InfoNCE), `_itm_terms` (ITM on in-batch hard negatives, R2D2's target-guided distillation), and on one
`_masked_pass` `_mlm_terms` and `_feature_distillation`. They live in this mixin, apart from the model classes,
because they are the training-only part of the family: the retrieval class never runs them.

Shipped with saved models (Hub custom code): imports torch, transformers and sibling files only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .contrastive import contrastive_targets, soft_cross_entropy
from .fusion_layers import CrossEncoderOutput
from .fusion_objectives import (
    IGNORE_INDEX,
    distillation_targets,
    feature_distillation_loss,
    hard_negative_weights,
    mask_tokens,
    masked_lm_loss,
    masked_token_index,
    negative_exclusion_mask,
    sample_hard_negatives,
    soft_target_loss,
)
from .fusion_outputs import FusionRetrievalEmbeddings
from .retrieval_core import RetrievalEmbeddings, gather_contrastive_batch


__all__ = ["FusionPreTrainingObjectives"]


class FusionPreTrainingObjectives:
    """The objective steps of [`FusionEncoderForPreTraining`] (a mixin: it uses the model's towers, cross
    encoders, heads, momentum copy and queue through `self`)."""

    def _momentum_itc(
        self,
        image: FusionRetrievalEmbeddings,
        text: FusionRetrievalEmbeddings,
        image_m: FusionRetrievalEmbeddings,
        text_m: FusionRetrievalEmbeddings,
        image_ids: torch.Tensor | None,
        alpha: float,
        logit_scale: torch.Tensor,
    ) -> torch.Tensor:
        """ALBEF ITC: online queries against momentum keys (every rank's, then the queue), with momentum
        distillation targets; enqueues the keys in training."""
        with torch.no_grad():
            image_keys, text_keys, offset, key_ids = gather_contrastive_batch(
                RetrievalEmbeddings(embeds=image_m.embeds),
                RetrievalEmbeddings(embeds=text_m.embeds),
                image_ids,
                enabled=self.config.gather_distributed,
            )
            image_keys, text_keys = image_keys.embeds, text_keys.embeds
            all_image_keys, all_text_keys, all_ids = image_keys, text_keys, key_ids
            use_queue = getattr(self, "image_queue", None) is not None
            if use_queue:
                all_image_keys = torch.cat([image_keys, self.image_queue.clone()])
                all_text_keys = torch.cat([text_keys, self.text_queue.clone()])
                if key_ids is not None:
                    all_ids = torch.cat([key_ids, self.id_queue.clone()])
            targets = contrastive_targets(
                image.embeds.shape[0], all_text_keys.shape[0], offset, image_ids, all_ids, device=image.embeds.device
            )
            targets_i2t = targets_t2i = targets
            if alpha > 0:
                scale = logit_scale.detach()
                targets_i2t = distillation_targets(
                    (scale * image_m.embeds @ all_text_keys.t()).softmax(1), targets, alpha
                )
                targets_t2i = distillation_targets(
                    (scale * text_m.embeds @ all_image_keys.t()).softmax(1), targets, alpha
                )
        loss_i2t = soft_cross_entropy(logit_scale * image.embeds @ all_text_keys.t(), targets_i2t)
        loss_t2i = soft_cross_entropy(logit_scale * text.embeds @ all_image_keys.t(), targets_t2i)
        if use_queue and self.training:
            self._enqueue(image_keys, text_keys, key_ids)
        return (loss_i2t + loss_t2i) / 2

    def _itm_pairs(
        self, similarity: torch.Tensor, image_ids: torch.Tensor | None, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """In-batch hard negatives from the (images, texts) `similarity` logits:
        `(negative_image_per_text, negative_text_per_image, itm_labels)`."""
        batch = similarity.shape[0]
        with torch.no_grad():
            exclude = negative_exclusion_mask(batch, image_ids, input_ids, device=similarity.device)
            hardest = self.config.itm_negatives == "hardest"
            negative_text, valid_text = sample_hard_negatives(hard_negative_weights(similarity, exclude), hardest)
            negative_image, valid_image = sample_hard_negatives(
                hard_negative_weights(similarity.t(), exclude), hardest
            )
            ignore = torch.full_like(negative_text, IGNORE_INDEX)
            labels = torch.cat(
                [
                    torch.ones_like(negative_text),
                    torch.where(valid_image, torch.zeros_like(ignore), ignore),
                    torch.where(valid_text, torch.zeros_like(ignore), ignore),
                ]
            )
        return negative_image, negative_text, labels

    def _itc_terms(self, batch: _PreTrainingBatch) -> dict[str, torch.Tensor]:
        """Image-text contrastive loss before fusion: ALBEF's momentum keys, queue and distillation when the model
        has a momentum encoder, the in-batch (gathered) InfoNCE otherwise."""
        if self.config.itc_weight == 0:
            return {}
        if batch.image_m is not None and batch.text_m is not None:
            loss = self._momentum_itc(
                batch.image, batch.text, batch.image_m, batch.text_m, batch.image_ids, batch.alpha, batch.logit_scale
            )
        else:
            # Only the contrastive embeddings: gathering the token states across ranks would be wasted.
            image, text = RetrievalEmbeddings(embeds=batch.image.embeds), RetrievalEmbeddings(embeds=batch.text.embeds)
            loss = self._contrastive_loss(image, text, batch.logit_scale, batch.image_ids)
        return {"itc_loss": loss}

    def _itm_terms(self, batch: _PreTrainingBatch) -> _ItmTerms:
        """ITM on the B positives and up to 2B in-batch hard negatives, and R2D2's target-guided distillation
        against the momentum model's ITM predictions on the same pairs."""
        config = self.config
        if config.itm_weight == 0 and config.target_distill_weight == 0:
            return _ItmTerms({}, None, None, None)
        image, text, image_m, text_m = batch.image, batch.text, batch.image_m, batch.text_m
        scale = config.itm_negative_scale if config.itm_negative_scale is not None else batch.logit_scale.detach()
        negative_image, negative_text, itm_labels = self._itm_pairs(
            scale * (image.embeds @ text.embeds.t()).detach(), batch.image_ids, batch.input_ids
        )
        cat = FusionRetrievalEmbeddings.cat
        student = self.cross_encode(
            cat([image, image.select(negative_image), image]), cat([text, text, text.select(negative_text)])
        )
        student_logits = _per_encoder_logits(student)
        losses: dict[str, torch.Tensor] = {}
        if config.itm_weight > 0:
            losses["itm_loss"] = torch.stack(
                [F.cross_entropy(logits, itm_labels, ignore_index=IGNORE_INDEX) for logits in student_logits]
            ).mean()
        teacher_positive = None
        if config.target_distill_weight > 0:
            with torch.no_grad():
                teacher = self.cross_encode(
                    cat([image_m, image_m.select(negative_image), image_m]),
                    cat([text_m, text_m, text_m.select(negative_text)]),
                    momentum=True,
                )
                size = batch.input_ids.shape[0]
                teacher_positive = (
                    teacher.text_hidden_state[:size],
                    None if teacher.image_hidden_state is None else teacher.image_hidden_state[:size],
                )
            valid = (itm_labels != IGNORE_INDEX).float()
            losses["target_distill_loss"] = torch.stack(
                [
                    soft_target_loss(s, t.softmax(-1), valid)
                    for s, t in zip(student_logits, _per_encoder_logits(teacher))
                ]
            ).mean()
        return _ItmTerms(losses, student.itm_logits, itm_labels, teacher_positive)

    def _masked_pass(self, batch: _PreTrainingBatch) -> _MaskedPass:
        """Mask the captions (MLM's masking) and fuse them with the images: what MLM and feature distillation read."""
        config = self.config
        masked_ids, labels = mask_tokens(
            batch.input_ids,
            batch.attention_mask,
            config.mlm_probability,
            config.mask_token_id,
            self.text_model.get_input_embeddings().num_embeddings,
            config.special_token_ids,
        )
        masked_text = self._gallery_embeddings(
            self._text_features(masked_ids, batch.attention_mask, batch.token_type_ids, batch.position_ids),
            batch.attention_mask,
            is_image=False,
        )
        fused = self.cross_encode(batch.image, masked_text, image_stream=config.feature_distill_weight > 0)
        return _MaskedPass(masked_ids, labels, fused)

    def _mlm_terms(self, batch: _PreTrainingBatch, masked: _MaskedPass) -> dict[str, torch.Tensor]:
        """Masked language modelling conditioned on the image, with the momentum model's soft targets (alpha)."""
        if self.config.mlm_weight == 0:
            return {}
        # Only the masked tokens (~mlm_probability of them) reach the vocabulary projection, online and momentum:
        # same loss and gradients as scoring every position, a fraction of the FLOPs and memory.
        index = masked_token_index(masked.labels)
        soft_targets = None
        if batch.alpha > 0:
            with torch.no_grad():
                masked_text_m = self._gallery_embeddings(
                    self._text_features(
                        masked.input_ids, batch.attention_mask, batch.token_type_ids, batch.position_ids, momentum=True
                    ),
                    batch.attention_mask,
                    is_image=False,
                )
                fused_m = self.cross_encode(batch.image_m, masked_text_m, momentum=True, image_stream=False)
                soft_targets = self.mlm_head_m(_gather_tokens(fused_m.text_hidden_state, index)).softmax(-1)
        loss = masked_lm_loss(
            self.mlm_head(_gather_tokens(masked.fused.text_hidden_state, index)),
            masked.labels.flatten().index_select(0, index),
            soft_targets,
            batch.alpha,
        )
        return {"mlm_loss": loss}

    def _feature_distillation(
        self,
        batch: _PreTrainingBatch,
        masked: _MaskedPass,
        teacher_positive: tuple[torch.Tensor, torch.Tensor | None] | None,
    ) -> dict[str, torch.Tensor]:
        """R2D2's feature-guided distillation: the student's fused features of the masked text match the momentum
        model's of the full text (those of the ITM step's positive pairs when it ran)."""
        if self.config.feature_distill_weight == 0:
            return {}
        if teacher_positive is None:
            with torch.no_grad():
                teacher = self.cross_encode(batch.image_m, batch.text_m, momentum=True)
                teacher_positive = (teacher.text_hidden_state, teacher.image_hidden_state)
        student = masked.fused
        distances = [feature_distillation_loss(student.text_hidden_state, teacher_positive[0], batch.attention_mask)]
        if student.image_hidden_state is not None:
            distances.append(
                feature_distillation_loss(student.image_hidden_state, teacher_positive[1], batch.image.fusion_mask)
            )
        return {"feature_distill_loss": torch.stack(distances).mean()}


@dataclass
class _PreTrainingBatch:
    """What the objective steps of one pre-training forward share: the inputs, the online and momentum
    embeddings (token states included), the temperature and this step's distillation weight."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    position_ids: torch.Tensor | None
    image_ids: torch.Tensor | None
    image: FusionRetrievalEmbeddings
    text: FusionRetrievalEmbeddings
    image_m: FusionRetrievalEmbeddings | None
    text_m: FusionRetrievalEmbeddings | None
    logit_scale: torch.Tensor
    alpha: float


class _ItmTerms(NamedTuple):
    """The ITM step's losses and outputs; `teacher_positive` (the momentum model's fused states of the positive
    pairs, computed for target distillation) is reused by feature distillation."""

    losses: dict[str, torch.Tensor]
    logits: torch.Tensor | None
    labels: torch.Tensor | None
    teacher_positive: tuple[torch.Tensor, torch.Tensor | None] | None


class _MaskedPass(NamedTuple):
    """The masked captions, their MLM labels and the cross encoder's output on them."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    fused: CrossEncoderOutput


def _gather_tokens(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`(N, hidden)` rows of `(batch, tokens, hidden)` states at flat token indices (see `masked_token_index`)."""
    return states.flatten(0, 1).index_select(0, index)


def _per_encoder_logits(output: CrossEncoderOutput) -> list[torch.Tensor]:
    """ITM logits of each cross encoder that ran (text-query, then image-query in two-way mode)."""
    return [logits for logits in (output.text_itm_logits, output.image_itm_logits) if logits is not None]
