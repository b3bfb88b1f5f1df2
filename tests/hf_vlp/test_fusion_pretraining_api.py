"""`FusionEncoderForPreTraining` as transformers code expects it: a resized vocabulary reaches the momentum copy,
the forward takes the standard output flags, and the total loss is the config's weighted sum of the named terms."""

from __future__ import annotations

import pytest
import torch

from hf_vlp import FusionEncoderForPreTraining
from tests.hf_vlp.test_fusion_model import batch, model_for


def test_resized_vocabulary_reaches_the_momentum_model():
    model = model_for(fusion_mode="two_way", target_distill_weight=1.0, feature_distill_weight=1.0)
    old_size = model.text_model.get_input_embeddings().num_embeddings
    old_momentum = model.text_model_m.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():  # a momentum model that has drifted from the online one
        model.text_model_m.get_input_embeddings().weight.add_(1.0)
    model.resize_token_embeddings(old_size + 5, mean_resizing=False)

    online, momentum = model.text_model.get_input_embeddings(), model.text_model_m.get_input_embeddings()
    assert momentum.num_embeddings == online.num_embeddings == old_size + 5
    assert model.mlm_head_m.decoder.weight is momentum.weight  # still tied
    assert (
        model.mlm_head_m.decoder.bias.shape == (old_size + 5,)
        and model.mlm_head_m.decoder.out_features == old_size + 5
    )
    assert torch.equal(momentum.weight[:old_size], old_momentum + 1.0)  # its own rows kept
    assert torch.equal(momentum.weight[old_size:], online.weight[old_size:])  # new rows start as the online ones
    assert not any(p.requires_grad for p in model.momentum_parameters())

    inputs = batch()
    inputs["input_ids"][:, 1] = old_size + 3  # the new token in every caption, through every momentum pass
    out = model(**inputs, alpha=0.4)
    assert torch.isfinite(out.loss) and {"mlm_loss", "target_distill_loss", "feature_distill_loss"} <= out.keys()
    out.loss.backward()
    model.momentum_update()
    model.copy_params()
    assert torch.equal(model.text_model_m.get_input_embeddings().weight, online.weight)


def test_forward_takes_the_standard_output_flags():
    model = model_for(attn_implementation="eager").eval()  # eval: no queue update between the compared calls
    layers = model.config.text_config.num_hidden_layers
    torch.manual_seed(0)
    plain = model(**batch())
    torch.manual_seed(0)
    out = model(**batch(), output_attentions=True, output_hidden_states=True)
    assert torch.equal(plain.loss, out.loss)  # the flags change what is returned, not what is computed
    assert len(out.text_model_output.attentions) == layers and len(out.text_model_output.hidden_states) == layers + 1
    assert out.vision_model_output.attentions is not None and out.vision_model_output.hidden_states is not None
    assert plain.text_model_output.attentions is None
    as_tuple = model(**batch(), return_dict=False, output_hidden_states=True)
    assert isinstance(as_tuple, tuple) and all(not isinstance(item, dict) for item in as_tuple)
    contrastive = model(**batch(), return_loss=False, output_attentions=True)
    assert len(contrastive.text_model_output.attentions) == layers


def test_sdpa_and_eager_pretraining_forward_agree():
    eager = model_for(attn_implementation="eager").eval()
    sdpa = model_for(attn_implementation="sdpa").eval()
    losses = []
    for model in (eager, sdpa):
        torch.manual_seed(0)
        losses.append(model(**batch(), output_hidden_states=True))
    torch.testing.assert_close(losses[0].loss, losses[1].loss, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        losses[0].text_model_output.hidden_states[-1],
        losses[1].text_model_output.hidden_states[-1],
        atol=1e-5,
        rtol=1e-4,
    )


@pytest.mark.parametrize("weights", [{}, {"itm_weight": 0.5, "mlm_weight": 2.0, "itc_weight": 0.0}])
def test_total_is_the_configs_weighted_sum_of_the_named_terms(weights):
    model: FusionEncoderForPreTraining = model_for(**weights)
    out = model(**batch())
    table = model.config.loss_weights
    assert set(table) == {"itc_loss", "itm_loss", "mlm_loss", "target_distill_loss", "feature_distill_loss"}
    terms = {name: out[name] for name in table if out.get(name) is not None}
    assert set(terms) == {name for name, weight in table.items() if weight > 0}
    torch.testing.assert_close(out.loss, sum(table[name] * value for name, value in terms.items()))
