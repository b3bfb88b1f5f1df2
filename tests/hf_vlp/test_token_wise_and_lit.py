"""Wukong features: FILIP token-wise similarity, token reduction, locked-image / locked-text tuning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_vlp import DualEncoderModel, token_wise_similarity
from hf_vlp.models.modeling_dual_encoder import TokenReducer, keep_largest_norm_tokens


def test_token_wise_similarity_hand_computed():
    # One image with two tokens, one text with two real tokens and one padding token.
    image = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    s = 2**-0.5
    text = torch.tensor([[[1.0, 0.0], [s, s], [0.0, 1.0]]])
    text_mask = torch.tensor([[1, 1, 0]])
    sim_i2t, sim_t2i = token_wise_similarity(image, None, text, text_mask)
    # image token 1 best matches text token 1 (1.0); image token 2 best matches text token 2 (s);
    # the padded text token (which would match image token 2 perfectly) is ignored.
    assert sim_i2t.item() == pytest.approx((1.0 + s) / 2)
    # text token 1 -> 1.0, text token 2 -> s (to either image token); padding excluded from the mean.
    assert sim_t2i.item() == pytest.approx((1.0 + s) / 2)


def test_token_wise_similarity_ignores_padding_content_and_is_chunk_invariant():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(3, 5, 8), dim=-1)
    text = F.normalize(torch.randn(7, 6, 8), dim=-1)
    mask = torch.ones(7, 6, dtype=torch.long)
    mask[:, 4:] = 0
    a = token_wise_similarity(image, None, text, mask, chunk_size=2)
    garbage = text.clone()
    garbage[:, 4:] = torch.randn(7, 2, 8)
    b = token_wise_similarity(image, None, garbage, mask, chunk_size=64)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    # brute force for one pair
    tok = image[1] @ text[3, :4].t()
    assert a[0][1, 3].item() == pytest.approx(tok.max(1).values.mean().item(), abs=1e-6)
    assert a[1][1, 3].item() == pytest.approx(tok.max(0).values.mean().item(), abs=1e-6)


def test_norm_reduction_keeps_largest_real_tokens():
    tokens = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [9.0, 0.0], [2.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0, 1]])
    kept, kept_mask = keep_largest_norm_tokens(tokens, mask, keep=2)
    assert sorted(kept[0, :, 0].tolist()) == [2.0, 3.0]  # the padded 9.0 is never kept
    assert kept_mask.tolist() == [[1, 1]]


def test_learned_reduction_weights_only_real_tokens():
    reducer = TokenReducer(dim=4, num_tokens=3)
    tokens = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    reduced, reduced_mask = reducer(tokens, mask)
    assert reduced.shape == (2, 3, 4) and reduced_mask.shape == (2, 3)
    changed = tokens.clone()
    changed[0, 3:] = 100.0  # padding content must not leak into the reduced tokens
    torch.testing.assert_close(reducer(changed, mask)[0][0], reduced[0])


@pytest.mark.parametrize("reduction", ["none", "norm", "learned"])
def test_token_wise_model_trains(tiny_dual_config, tiny_batch, reduction):
    tiny_dual_config.similarity = "token_wise"
    tiny_dual_config.token_reduction = reduction
    tiny_dual_config.image_tokens_kept = 4
    tiny_dual_config.text_tokens_kept = 3
    torch.manual_seed(0)
    model = DualEncoderModel(tiny_dual_config)
    out = model(**tiny_batch, return_loss=True)
    assert out.logits_per_image.shape == out.logits_per_text.shape == (4, 4)
    # FILIP's two directions differ: logits_per_text is not the transpose.
    assert not torch.allclose(out.logits_per_text, out.logits_per_image.t())
    out.loss.backward()
    if reduction == "learned":
        assert model.image_token_reducer.score.weight.grad.abs().sum() > 0
    text = model.encode_text(tiny_batch["input_ids"], tiny_batch["attention_mask"])
    expected_len = 3 if reduction != "none" else tiny_batch["input_ids"].shape[1]
    assert text.token_embeds.shape[1] == expected_len


def test_lit_leaves_frozen_weights_unchanged_after_a_step(tiny_dual_config, tiny_batch):
    tiny_dual_config.lock_vision = True
    torch.manual_seed(0)
    model = DualEncoderModel(tiny_dual_config).train()
    assert not model.vision_model.training  # fully locked tower runs in eval mode (no dropout)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**tiny_batch, return_loss=True).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name.startswith("vision_model."):
            assert torch.equal(param, before[name]), name
    assert not torch.equal(model.visual_projection.weight, before["visual_projection.weight"])
    assert not torch.equal(
        model.text_model.embeddings.word_embeddings.weight, before["text_model.embeddings.word_embeddings.weight"]
    )


def test_lit_unlocks_last_layers_and_survives_reload(tiny_dual_config, tmp_path):
    tiny_dual_config.lock_text = True
    tiny_dual_config.lock_text_unlocked_layers = 1
    model = DualEncoderModel(tiny_dual_config)
    model.save_pretrained(tmp_path)
    reloaded = DualEncoderModel.from_pretrained(tmp_path)  # transformers 5 re-creates params trainable
    for m in (model, reloaded):
        trainable = {n for n, p in m.text_model.named_parameters() if p.requires_grad}
        assert trainable and all(n.startswith("encoder.layer.1.") for n in trainable)
        assert all(p.requires_grad for p in m.vision_model.parameters())
