"""The retrieval core (`hf_vlp.models.retrieval_core`): embeddings helpers, block-wise top-k, the one score-combining
rule set, and the model contract as protocols. The distributed gather is tested in tests/hf_vlp/test_retrieval.py."""

from __future__ import annotations

import pytest
import torch

from hf_vlp import DualEncoderModel, FusionEncoderConfig, FusionEncoderForPreTraining, FusionEncoderForRetrieval
from hf_vlp.models import fusion_ranking
from hf_vlp.models.retrieval_core import (
    RerankingModel,
    RetrievalEmbeddings,
    RetrievalModel,
    blockwise_topk,
    cat_embeddings,
    combine_scores,
    gather_contrastive_batch,
    implementation_of,
    parse_combine,
    rerank_topk,
    select_embeddings,
)
from tests.trainers.helpers import small_config
from trainers.arguments import parse_rerank_combine
from trainers.grad_cache import ContrastiveModel, check_grad_cache_support


def _fusion(cls=FusionEncoderForRetrieval) -> FusionEncoderForRetrieval:
    vision = {**FusionEncoderConfig.from_preset("tiny-fusion").vision_config.to_dict(), "image_size": 32}
    torch.manual_seed(0)
    return cls(FusionEncoderConfig.from_preset("tiny-fusion", vision_config=vision)).eval()


# ---------------------------------------------------------------------------------------------- embeddings
def test_cat_pads_every_token_dim_with_zeros_and_select_keeps_the_class():
    short = RetrievalEmbeddings(embeds=torch.ones(2, 4), token_embeds=torch.ones(2, 3, 4), token_mask=torch.ones(2, 3))
    long = RetrievalEmbeddings(embeds=torch.ones(1, 4), token_embeds=torch.ones(1, 5, 4), token_mask=torch.ones(1, 5))
    gallery = RetrievalEmbeddings.cat([short, long])
    assert type(gallery) is RetrievalEmbeddings and gallery.token_embeds.shape == (3, 5, 4)
    assert gallery.token_mask[:2, 3:].eq(0).all() and gallery.token_embeds[:2, 3:].eq(0).all()
    assert gallery.token_mask[2].eq(1).all()
    picked = gallery.select([2, 0])
    assert type(picked) is RetrievalEmbeddings and torch.equal(picked.token_mask[0], torch.ones(5))
    padded = short.pad({"token_mask": (2, 6)})
    assert padded.token_mask.shape == (2, 6) and padded.token_embeds.shape == (2, 3, 4)


def test_functions_work_on_any_model_output_class():
    """Evaluation and the Space get the output class of the model's own (possibly remote) code."""
    from hf_vlp import FusionRetrievalEmbeddings

    parts = [
        FusionRetrievalEmbeddings(embeds=torch.randn(n, 4), fusion_states=torch.randn(n, n + 1, 8)) for n in (1, 2)
    ]
    gallery = cat_embeddings(parts)
    assert type(gallery) is FusionRetrievalEmbeddings and gallery.fusion_states.shape == (3, 3, 8)
    assert type(select_embeddings(gallery, slice(0, 1))) is FusionRetrievalEmbeddings
    with pytest.raises(ValueError, match="nothing"):
        cat_embeddings([])


def test_contrastive_batch_on_one_process_is_the_local_batch():
    image, text, ids = (
        RetrievalEmbeddings(embeds=torch.randn(3, 4)),
        RetrievalEmbeddings(embeds=torch.randn(3, 4)),
        None,
    )
    assert gather_contrastive_batch(image, text, ids) == (image, text, 0, None)


# ---------------------------------------------------------------------------------------------- top-k
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 100])
def test_blockwise_topk_is_the_stable_full_sort_whatever_the_blocks(chunk_size):
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, 2.0, 2.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    values, indices = blockwise_topk(lambda start, stop: scores[:, start:stop], 7, k=4, chunk_size=chunk_size)
    expected_values, expected_indices = scores.sort(dim=1, descending=True, stable=True)
    assert torch.equal(values, expected_values[:, :4]) and torch.equal(indices, expected_indices[:, :4])
    assert blockwise_topk(lambda start, stop: scores[:, start:stop], 7, k=50, chunk_size=chunk_size)[1].shape == (2, 7)
    with pytest.raises(ValueError, match="k"):
        blockwise_topk(lambda start, stop: scores[:, start:stop], 7, k=0, chunk_size=chunk_size)


# ---------------------------------------------------------------------------------------------- combining
@pytest.mark.parametrize(("value", "expected"), [("cross", "cross"), ("sum", "sum"), ("0.7", 0.7), (0, 0.0), (1, 1.0)])
def test_parse_combine_accepts_the_modes_and_weights_in_range(value, expected):
    assert parse_combine(value) == expected


@pytest.mark.parametrize(
    ("value", "error"), [("max", ValueError), ("1.5", ValueError), (-0.1, ValueError), (True, TypeError)]
)
def test_parse_combine_refuses_everything_else_the_same_way_everywhere(value, error):
    with pytest.raises(error, match="combine"):
        parse_combine(value)
    with pytest.raises(error, match="combine"):
        rerank_topk(None, torch.tensor([[0, 1]]), torch.tensor([[1.0, 0.0]]), lambda q, c: c.float(), combine=value)
    with pytest.raises(error, match="combine"):
        combine_scores(torch.zeros(1), torch.zeros(1), value)
    if isinstance(value, str):
        with pytest.raises(ValueError, match="rerank_combine"):
            parse_rerank_combine(value)


def test_combine_scores_rules():
    cross, contrastive = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25])
    assert torch.equal(combine_scores(cross, contrastive, "cross"), cross)
    assert torch.equal(combine_scores(cross, contrastive, "sum"), cross + contrastive)
    torch.testing.assert_close(combine_scores(cross, contrastive, "0.25"), 0.25 * cross + 0.75 * contrastive)


def test_fusion_rank_refuses_a_weight_out_of_range():
    model = _fusion()
    with torch.no_grad():
        images = model.encode_image(torch.randn(3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.rank(images, images, query_modality="image", combine=2.0)


def test_fusion_rank_does_not_depend_on_the_gallery_block_size(monkeypatch):
    model = _fusion()
    with torch.no_grad():
        images = model.encode_image(torch.randn(5, 3, 32, 32))
        texts = model.encode_text(torch.randint(10, 7000, (7, 6)))
        whole = model.rank(texts, images, query_modality="text", k=4)
        monkeypatch.setattr(fusion_ranking, "_RANK_CHUNK_SIZE", 2)
        blocks = model.rank(texts, images, query_modality="text", k=4)
    # the same candidates in the same order; scores equal up to float rounding of a different batch shape
    assert torch.equal(whole[1], blocks[1]) and torch.allclose(whole[0], blocks[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------- contract
class _Wrapper(torch.nn.Module):
    """A PEFT-like wrapper: forwards attributes dynamically and hands out the model it wraps."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.base = model

    def get_base_model(self) -> torch.nn.Module:
        return self.base


def test_the_model_contract_is_checked_by_protocols():
    dual, fusion = DualEncoderModel(small_config()), _fusion()
    assert isinstance(dual, RetrievalModel) and not isinstance(dual, RerankingModel)
    assert isinstance(fusion, RerankingModel) and isinstance(_fusion(FusionEncoderForPreTraining), RerankingModel)
    assert implementation_of(dual, RerankingModel) is None
    assert implementation_of(_Wrapper(fusion), RerankingModel) is fusion
    assert implementation_of(_Wrapper(dual), ContrastiveModel) is dual
    check_grad_cache_support(dual)
    with pytest.raises(ValueError, match="dual encoder"):
        check_grad_cache_support(fusion)  # its loss needs the cross encoder on pairs: no contrastive_loss
