"""Fusion encoders (ALBEF / R2D2 style): objectives, momentum model, retrieval API and Hub behaviour, tiny configs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining, BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

import hf_vlp
from hf_vlp import (
    DualEncoderConfig,
    DualEncoderModel,
    FusionEncoderConfig,
    FusionEncoderForPreTraining,
    FusionEncoderForRetrieval,
    FusionRetrievalEmbeddings,
    RetrievalEmbeddings,
    VLPImageProcessor,
    VLPProcessor,
    build_chinese_tokenizer,
)
from hf_vlp.models import fusion_pretraining
from hf_vlp.models.fusion_layers import FusionLayer
from hf_vlp.retrieval import chunked_topk, rerank_topk


IMAGE = 32  # 16 patches of 8 px: the smallest useful tiny tower


def config(preset: str = "tiny-fusion", **overrides) -> FusionEncoderConfig:
    vision = {**FusionEncoderConfig.from_preset(preset).vision_config.to_dict(), "image_size": IMAGE}
    return FusionEncoderConfig.from_preset(preset, vision_config=vision, **overrides)


def model_for(preset: str = "tiny-fusion", cls=FusionEncoderForPreTraining, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cls(config(preset, **overrides))


def batch(size: int = 4, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random captions ([CLS] ... [SEP], the last one padded) and images."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 7000, (size, length), generator=generator)
    mask = torch.ones_like(ids)
    ids[:, 0] = 2
    ids[:, -1] = 3
    ids[-1, -3] = 3  # the last caption is shorter: [SEP] then padding
    ids[-1, -2:] = 0
    mask[-1, -2:] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.randn(size, 3, IMAGE, IMAGE, generator=generator),
    }


def trainable_names(model) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


# ---------------------------------------------------------------------------------------------- config, presets


def test_fusion_presets_build_offline_and_match_the_builtin_tokenizer():
    assert {"tiny-fusion", "tiny-r2d2", "albef-base-chinese", "r2d2-vit-large"} <= set(
        hf_vlp.list_presets("fusion_encoder")
    )
    assert "tiny-fusion" not in hf_vlp.list_presets("dual_encoder")
    for name in hf_vlp.list_presets("fusion_encoder"):
        assert isinstance(hf_vlp.config_for_preset(name), FusionEncoderConfig)
    assert FusionEncoderConfig.from_preset("tiny-r2d2").fusion_mode == "two_way"
    large = FusionEncoderConfig.from_preset("r2d2-vit-large")
    assert (large.fusion_hidden_size, large.projection_dim, large.num_fusion_layers) == (1024, 768, 6)
    tokenizer = build_chinese_tokenizer()
    tiny = FusionEncoderConfig.from_preset("tiny-fusion")
    assert tiny.mask_token_id == tokenizer.mask_token_id
    assert tiny.special_token_ids == [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]
    with pytest.raises(ValueError, match="dual_encoder preset"):
        FusionEncoderConfig.from_preset("tiny")
    # AutoModel of a fusion config is the retrieval (inference) class.
    assert type(hf_vlp.create_model("tiny-fusion", num_fusion_layers=1)) is FusionEncoderForRetrieval


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fusion_mode": "one_way"}, "fusion_mode"),
        ({"itm_negatives": "random"}, "itm_negatives"),
        ({"fusion_num_attention_heads": 3}, "not a multiple"),
        ({"use_momentum_encoder": False, "target_distill_weight": 1.0}, "momentum"),
        ({"distill_alpha": 1.5}, "distill_alpha"),
        ({"mlm_weight": -1.0}, "mlm_weight"),
    ],
)
def test_config_refuses_bad_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_head_width_is_projection_dim_and_the_old_embed_dim_key_still_loads(tmp_path):
    saved = config().to_dict()
    assert "projection_dim" in saved and "embed_dim" not in saved  # one name across families, as the dual encoder
    saved["embed_dim"] = saved.pop("projection_dim") // 2  # a config.json written before the rename
    (tmp_path / "config.json").write_text(json.dumps(saved), encoding="utf-8")
    loaded = FusionEncoderConfig.from_pretrained(tmp_path)
    assert loaded.projection_dim == saved["embed_dim"] and not hasattr(loaded, "embed_dim")
    assert FusionEncoderForRetrieval(loaded).text_projection.out_features == saved["embed_dim"]
    with pytest.raises(ValueError, match="old name"):
        FusionEncoderConfig(projection_dim=32, embed_dim=16)


def test_config_round_trips_through_json(tmp_path):
    original = config("tiny-r2d2", use_bridges=True, itm_negative_scale=2.0)
    original.save_pretrained(tmp_path)
    loaded = FusionEncoderConfig.from_pretrained(tmp_path)
    assert loaded.to_diff_dict() == original.to_diff_dict()
    assert loaded.vision_config.image_size == IMAGE


# ---------------------------------------------------------------------------------------------- pre-training


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"fusion_mode": "two_way", "target_distill_weight": 1.0, "feature_distill_weight": 1.0},
        {"use_bridges": True},
    ],
    ids=["albef", "r2d2", "bridges"],
)
def test_every_objective_is_returned_and_summed_and_trains_every_online_parameter(overrides):
    model = model_for(**overrides).train()
    out = model(**batch(), image_ids=torch.tensor([0, 1, 2, 3]))
    terms = ["itc_loss", "itm_loss", "mlm_loss"]
    if overrides.get("fusion_mode") == "two_way":
        terms += ["target_distill_loss", "feature_distill_loss"]
    weights = {
        "itc_loss": 1.0,
        "itm_loss": 1.0,
        "mlm_loss": 1.0,
        "target_distill_loss": 1.0,
        "feature_distill_loss": 1.0,
    }
    assert all(torch.isfinite(out[name]) for name in terms)
    assert torch.allclose(out.loss, sum(weights[name] * out[name] for name in terms))
    assert out.itm_logits.shape == (12, 2) and out.itm_labels[:4].tolist() == [1, 1, 1, 1]
    out.loss.backward()
    # Every trainable parameter takes part (DDP would fail on unused ones); the momentum model takes none.
    assert [name for name in trainable_names(model) if model.get_parameter(name).grad is None] == []
    assert all(param.grad is None and not param.requires_grad for param in model.momentum_parameters())
    assert not any("_m." in name for name in trainable_names(model))


def test_terms_switched_off_are_not_computed():
    model = model_for(itm_weight=0.0, mlm_weight=0.0).train()
    out = model(**batch())
    assert out.itm_loss is None and out.mlm_loss is None and out.itm_logits is None
    assert torch.equal(out.loss, out.itc_loss)
    model = model_for(itc_weight=0.0, itm_weight=0.0, use_momentum_encoder=False).train()
    out = model(**batch())
    assert out.itc_loss is None and torch.equal(out.loss, out.mlm_loss)
    assert not hasattr(model, "text_model_m") and not hasattr(model, "image_queue")


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_mlm_heads_run_on_masked_tokens_only_with_the_full_position_loss_and_gradients(monkeypatch, alpha):
    """The MLM heads see only the masked tokens; the loss and its gradients equal scoring every position (the
    former implementation, written out here) on the same fused states, distillation mixing included."""
    model = model_for(itc_weight=0.0, itm_weight=0.0, mlm_probability=0.5).train()
    with torch.no_grad():  # a momentum model that differs from the online one, so the soft targets matter
        for param in model.momentum_parameters():
            param.add_(0.05 * torch.randn_like(param))
    recorded = {}
    mask_tokens, cross_encode = fusion_pretraining.mask_tokens, model.cross_encode

    def recording_mask_tokens(*args, **kwargs):
        recorded["masked_ids"], recorded["labels"] = mask_tokens(*args, **kwargs)
        return recorded["masked_ids"], recorded["labels"]

    def recording_cross_encode(*args, momentum=False, **kwargs):
        out = cross_encode(*args, momentum=momentum, **kwargs)
        recorded["momentum" if momentum else "online"] = out.text_hidden_state
        return out

    monkeypatch.setattr(fusion_pretraining, "mask_tokens", recording_mask_tokens)
    monkeypatch.setattr(model, "cross_encode", recording_cross_encode)
    head_rows = []
    for head in (model.mlm_head, model.mlm_head_m):
        head.register_forward_hook(lambda module, args, output: head_rows.append(output.shape[:-1]))
    out = model(**batch(), alpha=alpha)
    assert torch.equal(out.loss, out.mlm_loss)

    labels = recorded["labels"]
    selected = labels != -100
    count = int(selected.sum())
    assert 0 < count < labels.numel()
    assert head_rows == [(count,)] * (2 if alpha > 0 else 1)  # (momentum then) online head: masked rows only
    logits = model.mlm_head(recorded["online"])  # every position, as before
    assert logits.shape == (*labels.shape, model.config.text_config.vocab_size)
    targets = torch.nn.functional.one_hot(labels[selected], logits.shape[-1]).float()
    if alpha > 0:
        with torch.no_grad():
            soft = model.mlm_head_m(recorded["momentum"]).softmax(-1)
        targets = alpha * soft[selected] + (1 - alpha) * targets
    reference = -(targets * logits[selected].log_softmax(-1)).sum(-1).sum() / count
    torch.testing.assert_close(out.mlm_loss, reference, rtol=1e-5, atol=1e-6)

    params = [param for param in model.parameters() if param.requires_grad]
    ours = torch.autograd.grad(out.mlm_loss, params, retain_graph=True, allow_unused=True)
    theirs = torch.autograd.grad(reference, params, allow_unused=True)
    assert sum(grad is not None for grad in ours) > 0
    for name, a, b in zip([n for n, p in model.named_parameters() if p.requires_grad], ours, theirs):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7, msg=name)
    # The tied decoder is still the word embedding, online and momentum.
    assert model.mlm_head.decoder.weight is model.text_model.get_input_embeddings().weight
    assert model.mlm_head_m.decoder.weight is model.text_model_m.get_input_embeddings().weight


def test_itm_ignores_negatives_of_rows_whose_batch_is_all_one_image():
    model = model_for(mlm_weight=0.0).train()
    out = model(**batch(), image_ids=torch.tensor([5, 5, 5, 5]))
    assert out.itm_labels[4:].tolist() == [-100] * 8
    expected = torch.nn.functional.cross_entropy(out.itm_logits[:4], out.itm_labels[:4])
    assert torch.allclose(out.itm_loss, expected)


def test_return_loss_false_gives_the_contrastive_output():
    model = model_for().eval()
    inputs = batch()
    out = model(**inputs, return_loss=False)
    assert out.loss is None and out.logits_per_image.shape == (4, 4)
    assert torch.equal(model.queue_ptr, torch.zeros(1, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- momentum model, queue


def test_momentum_itc_uses_queue_keys_id_positives_and_alpha_mixed_targets():
    model = model_for(queue_size=3, itm_weight=0.0, mlm_weight=0.0).eval()  # eval: the queue is left as set here
    inputs = batch()
    ids = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        model.text_queue.copy_(torch.nn.functional.normalize(torch.randn(3, 64), dim=1))
        model.image_queue.copy_(torch.nn.functional.normalize(torch.randn(3, 64), dim=1))
        model.id_queue.copy_(torch.tensor([7, 2, -1]))  # slot 1 holds another pair of image 2: a positive for it
        out = model(**inputs, image_ids=ids, alpha=0.4)
        # The momentum model equals the online one (no update yet): keys = this batch's embeddings, then the queue.
        image = model.encode_image(inputs["pixel_values"]).embeds
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"]).embeds
        scale = model.get_logit_scale()
        positives = (ids[:, None] == torch.cat([ids, model.id_queue])[None, :]).float()
        hard = positives / positives.sum(1, keepdim=True)
        assert hard[2].tolist() == [0, 0, 0.5, 0, 0, 0.5, 0]
        losses = []
        for queries, keys in (
            (image, torch.cat([text, model.text_queue])),
            (text, torch.cat([image, model.image_queue])),
        ):
            logits = scale * queries @ keys.t()
            targets = 0.4 * logits.softmax(1) + 0.6 * hard
            losses.append(-(targets * logits.log_softmax(1)).sum(1).mean())
    assert torch.allclose(out.itc_loss, sum(losses) / 2, atol=1e-5)


def test_queue_holds_the_momentum_features_of_recent_batches_in_ring_order():
    model = model_for(queue_size=6, mlm_weight=0.0, itm_weight=0.0).train()
    batches = [batch(seed=seed) for seed in range(3)]
    for step, inputs in enumerate(batches):
        model(**inputs, image_ids=torch.arange(4) + 10 * step)
    with torch.no_grad():  # momentum model == online model: no optimizer step, no momentum_update
        keys = [model.encode_text(b["input_ids"], b["attention_mask"]).embeds for b in batches]
    # 12 rows through 6 slots: batch 1 wraps (slots 4, 5, 0, 1), batch 2 overwrites 2-5 and batch 0 entirely.
    expected = torch.cat([keys[1][2:], keys[2]])
    assert torch.allclose(model.text_queue, expected, atol=1e-6)
    assert model.id_queue.tolist() == [12, 13, 20, 21, 22, 23]
    assert model.queue_ptr.item() == 0
    model.eval()
    model(**batches[0])
    assert model.queue_ptr.item() == 0  # evaluation never enqueues


def test_momentum_update_is_exact_and_updates_tied_weights_once():
    model = model_for(mlm_weight=0.0)
    with torch.no_grad():
        before = {name: param.clone() for name, param in model.named_parameters() if "_m." in name}
        for _, online, momentum in model._momentum_triples():
            online.copy_(momentum + 1.0)
    m, k = model.config.momentum, 3
    for _ in range(k):
        model.momentum_update()
    # With the online weights fixed at p_m(0) + 1: p_m(k) = p_m(0) + (1 - m^k).
    for name, param in model.named_parameters():
        if name in before:
            assert torch.allclose(param, before[name] + (1 - m**k), atol=1e-6), name
    assert model.mlm_head_m.decoder.weight is model.text_model_m.get_input_embeddings().weight


def test_momentum_model_is_frozen_in_eval_mode_and_untouched_by_training():
    model = model_for().train()
    assert all(not module.training for name, module in model.named_children() if name.endswith("_m"))
    assert model.text_model.training and model.text_fusion.training
    snapshot = [param.clone() for param in model.momentum_parameters()]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch()).loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, model.momentum_parameters()))
    assert model.mlm_head.decoder.weight is model.text_model.get_input_embeddings().weight


DDP_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from tests.hf_vlp.test_fusion_model import batch, model_for
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = model_for(queue_size=12, itm_weight=0.0, mlm_weight=0.0).train()
    out = model(**batch(seed=rank), image_ids=torch.arange(4) + 10 * rank)
    losses = [torch.zeros(1) for _ in range(2)]
    dist.all_gather(losses, out.itc_loss.detach().view(1))
    queues = [torch.zeros_like(model.text_queue) for _ in range(2)]
    dist.all_gather(queues, model.text_queue)
    if rank == 0:
        # The one-process reference, run here without gathering (the other rank takes no part in it).
        single = model_for(queue_size=12, itm_weight=0.0, mlm_weight=0.0, gather_distributed=False).eval()
        both = {key: torch.cat([batch(seed=0)[key], batch(seed=1)[key]]) for key in batch()}
        with torch.no_grad():
            reference = single(**both, image_ids=torch.cat([torch.arange(4), torch.arange(4) + 10])).itc_loss
        json.dump({
            "mean_rank_loss": torch.cat(losses).mean().item(),
            "single_process_loss": reference.item(),
            "ids": model.id_queue.tolist(),
            "queues_equal": torch.equal(queues[0], queues[1]),
        }, open(sys.argv[1], "w"))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_processes_share_keys_and_queue_like_one_process_on_the_whole_batch(tmp_path):
    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result_path = tmp_path / "result.json"
    completed = subprocess.run(
        [*command, str(result_path), str(root)], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(result_path.read_text())
    # Each rank's queries see both ranks' momentum keys: the mean of the rank losses is the one-process loss.
    assert abs(result["mean_rank_loss"] - result["single_process_loss"]) < 1e-5
    assert result["ids"] == [0, 1, 2, 3, 10, 11, 12, 13, -1, -1, -1, -1]
    assert result["queues_equal"]


# ---------------------------------------------------------------------------------------------- layers


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    def run(model):
        torch.manual_seed(1)  # same MLM mask and ITM negatives
        out = model(**batch())
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = run(model_for(fusion_mode="two_way").train())
    model = model_for(fusion_mode="two_way").train()
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.modules() if isinstance(layer, FusionLayer))
    checkpointed_loss, checkpointed_grads = run(model)
    assert torch.allclose(loss, checkpointed_loss, atol=1e-6)
    assert grads.keys() == checkpointed_grads.keys()
    assert all(torch.allclose(grads[n], checkpointed_grads[n], atol=1e-6) for n in grads)


def test_sdpa_and_eager_attention_agree_and_attention_maps_are_distributions():
    model = model_for("tiny-r2d2", cls=FusionEncoderForRetrieval).eval()
    inputs = batch()
    with torch.no_grad():
        image = model.encode_image(inputs["pixel_values"])
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        assert model.config._attn_implementation == "sdpa"
        sdpa = model.cross_encode(image, text)
        model.set_attn_implementation("eager")
        eager = model.cross_encode(image, text, output_attentions=True)
    assert torch.allclose(sdpa.itm_logits, eager.itm_logits, atol=1e-5)
    assert torch.allclose(sdpa.text_hidden_state, eager.text_hidden_state, atol=1e-5)
    text_to_image = eager.text_cross_attentions[-1]  # (batch, heads, text, image)
    assert text_to_image.shape == (4, 4, 8, 17)
    assert torch.allclose(text_to_image.sum(-1), torch.ones(4, 4, 8), atol=1e-5)
    image_to_text = eager.image_cross_attentions[-1]
    assert (image_to_text[-1, :, :, -2:] == 0).all()  # padding of the last caption gets no attention


# ---------------------------------------------------------------------------------------------- retrieval API


def test_retrieval_api_matches_the_dual_encoder_surface():
    model = model_for(cls=FusionEncoderForRetrieval).eval()
    inputs = batch()
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        image = model.encode_image(inputs["pixel_values"])
        features = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
    assert isinstance(text, FusionRetrievalEmbeddings) and isinstance(text, RetrievalEmbeddings)
    assert text.fusion_states.shape == (4, 8, 64) and text.fusion_mask.tolist()[-1] == [1] * 6 + [0, 0]
    assert image.fusion_states.shape == (4, 17, 64)
    sim_i2t, sim_t2i = model.similarity(image, text)
    assert torch.allclose(out.logits_per_image, model.get_logit_scale() * sim_i2t, atol=1e-5)
    assert torch.allclose(sim_i2t, sim_t2i) and torch.allclose(out.logits_per_text, out.logits_per_image.t())
    assert torch.allclose(torch.nn.functional.normalize(features, dim=-1), text.embeds, atol=1e-6)
    assert torch.isfinite(out.loss) and torch.equal(out.loss, out.itc_loss)
    assert isinstance(model(**inputs, return_dict=False), tuple)


def test_itm_score_rerank_scores_and_broadcasting():
    model = model_for("tiny-r2d2", cls=FusionEncoderForRetrieval).eval()
    inputs = batch()
    with torch.no_grad():
        scores = model.itm_score(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
        image = model.encode_image(inputs["pixel_values"])
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        logits = model.cross_encode(image, text).itm_logits
        one_image = model.rerank_scores(image.select([2]), text)
    assert torch.allclose(scores, logits[:, 1] - logits[:, 0])
    assert torch.allclose(one_image[2], scores[2], atol=1e-6)
    with pytest.raises(ValueError, match="cannot pair"):
        model.rerank_scores(image.select([0, 1]), text)


def test_embeddings_cat_pads_tokens_and_select_indexes_every_field():
    model = model_for(cls=FusionEncoderForRetrieval, use_bridges=True).eval()
    short, long = batch(size=2, length=5), batch(size=3, length=8, seed=1)
    with torch.no_grad():
        parts = [model.encode_text(b["input_ids"], b["attention_mask"]) for b in (short, long)]
    gallery = FusionRetrievalEmbeddings.cat(parts)
    assert gallery.fusion_states.shape == (5, 8, 64) and gallery.bridge_states.shape == (5, 2, 8, 64)
    assert gallery.fusion_mask[:2, 5:].eq(0).all() and torch.equal(
        gallery.fusion_mask[:2, :5], short["attention_mask"]
    )
    picked = gallery.select(torch.tensor([3, 0]))
    assert torch.equal(picked.embeds, torch.stack([parts[1].embeds[1], parts[0].embeds[0]]))
    # Padding added by `cat` does not change what the cross encoder says about a pair.
    with torch.no_grad():
        image = model.encode_image(short["pixel_values"][:1])
        assert torch.allclose(
            model.rerank_scores(image, parts[0].select([0])),
            model.rerank_scores(image, gallery.select([0])),
            atol=1e-5,
        )


def test_rank_reranks_the_contrastive_top_k_with_the_cross_encoder(monkeypatch):
    model = model_for(cls=FusionEncoderForRetrieval).eval()
    inputs = batch(size=6)
    with torch.no_grad():
        texts = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        images = model.encode_image(inputs["pixel_values"])
        sim = model.similarity(images, texts)[0]
        first_order = sim.sort(dim=1, descending=True, stable=True).indices[:, :4]
        # The real cross encoder: same result as hf_vlp.retrieval's chunked_topk + rerank_topk on the same hook.
        scores, indices = model.rank(images, texts, query_modality="image", k=4, combine="sum", batch_size=5)
        top_scores, top_indices = chunked_topk(images.embeds, texts.embeds, k=4, chunk_size=4)
        reference = rerank_topk(
            None,
            top_indices,
            top_scores,
            lambda i, t: model.rerank_scores(images.select(i), texts.select(t)),
            combine="sum",
            batch_size=5,
        )
        assert torch.equal(indices, reference[1]) and torch.allclose(scores, reference[0], atol=1e-5)
        # A cross encoder that reverses the contrastive order gives the reversed top-k.
        monkeypatch.setattr(model, "rerank_scores", lambda image, text: -10.0 * (image.embeds * text.embeds).sum(-1))
        _, reversed_indices = model.rank(images, texts, query_modality="image", k=4, combine="cross")
        assert torch.equal(reversed_indices, first_order.flip(1))
        _, text_query = model.rank(texts, images, query_modality="text", k=3, combine="cross")
        assert torch.equal(text_query, sim.t().sort(dim=1, descending=True, stable=True).indices[:, :3].flip(1))
        # A weight of 0 keeps the contrastive order.
        _, kept = model.rank(images, texts, query_modality="image", k=4, combine=0.0)
        assert torch.equal(kept, first_order)


# ---------------------------------------------------------------------------------------------- other checkpoints


def test_from_dual_encoder_copies_towers_and_makes_the_momentum_model_a_frozen_copy(tmp_path):
    torch.manual_seed(0)
    dual = DualEncoderModel(DualEncoderConfig.from_preset("tiny"))
    with torch.no_grad():
        dual.logit_scale.fill_(3.0)
    dual.save_pretrained(tmp_path)
    for source in (dual, tmp_path):
        model = FusionEncoderForPreTraining.from_dual_encoder(source, num_fusion_layers=1, queue_size=8)
        for name in ("text_model", "vision_model", "text_projection", "visual_projection"):
            dual_state = getattr(dual, name).state_dict()
            assert all(torch.equal(v, dual_state[k]) for k, v in getattr(model, name).state_dict().items())
        assert model.logit_scale.item() == 3.0 and model.config.projection_dim == dual.config.projection_dim
        assert all(torch.equal(online, momentum) for _, online, momentum in model._momentum_triples())
        assert all(not p.requires_grad for p in model.momentum_parameters())
        assert model.mlm_head_m.decoder.weight is model.text_model_m.get_input_embeddings().weight
    with pytest.raises(ValueError, match="projection_dim"):
        FusionEncoderForRetrieval.from_dual_encoder(dual, projection_dim=32)
    with pytest.raises(ValueError, match="embed_dim"):  # the old name clashes too
        FusionEncoderForRetrieval.from_dual_encoder(dual, embed_dim=32)


def test_from_vision_text_pretrained_loads_real_towers(tmp_path):
    torch.manual_seed(0)
    text_config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
    )
    BertModel(text_config, add_pooling_layer=False).save_pretrained(tmp_path / "text")
    CLIPVisionModel(vision_config).save_pretrained(tmp_path / "vision")
    model = FusionEncoderForPreTraining.from_vision_text_pretrained(
        str(tmp_path / "vision"),
        str(tmp_path / "text"),
        projection_dim=16,
        num_fusion_layers=1,
        queue_size=4,
        mask_token_id=4,
    )
    text_tower = BertModel.from_pretrained(tmp_path / "text", add_pooling_layer=False)
    assert torch.equal(
        model.text_model.embeddings.word_embeddings.weight, text_tower.embeddings.word_embeddings.weight
    )
    assert torch.equal(
        model.text_model_m.embeddings.word_embeddings.weight, text_tower.embeddings.word_embeddings.weight
    )
    vision_tower = CLIPVisionModel.from_pretrained(tmp_path / "vision")
    assert torch.equal(
        model.vision_model.embeddings.patch_embedding.weight, vision_tower.embeddings.patch_embedding.weight
    )
    assert model.mlm_head.decoder.weight is model.text_model.get_input_embeddings().weight
    assert all(not p.requires_grad for p in model.momentum_parameters())


def test_pretraining_and_retrieval_checkpoints_load_as_each_other(tmp_path):
    model = model_for("tiny-r2d2", queue_size=8).train()
    model(**batch())  # fill part of the queue
    model.momentum_update()
    model.save_pretrained(tmp_path / "pretraining")
    retrieval = AutoModel.from_pretrained(tmp_path / "pretraining")
    assert type(retrieval) is FusionEncoderForRetrieval
    state = model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in retrieval.state_dict().items())
    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path / "pretraining")
    assert type(reloaded) is FusionEncoderForPreTraining
    assert all(torch.equal(value, state[key]) for key, value in reloaded.state_dict().items())
    assert all(not p.requires_grad for p in reloaded.momentum_parameters())
    assert reloaded.queue_ptr.item() == 4

    retrieval.save_pretrained(tmp_path / "retrieval")
    config = json.loads((tmp_path / "retrieval" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForPreTraining"] == "modeling_fusion_encoder.FusionEncoderForPreTraining"
    assert config["auto_map"]["AutoModel"] == "modeling_fusion_encoder.FusionEncoderForRetrieval"
    started = FusionEncoderForPreTraining.from_pretrained(tmp_path / "retrieval")
    assert all(torch.equal(online, momentum) for _, online, momentum in started._momentum_triples())
    assert all(not p.requires_grad for p in started.momentum_parameters())
    assert started.mlm_head.decoder.weight is started.text_model.get_input_embeddings().weight
    assert started.mlm_head_m.decoder.weight is started.text_model_m.get_input_embeddings().weight
    assert trainable_names(started) == trainable_names(model)


REMOTE_CHECK = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_vlp"] = None  # hf-vlp is not installed here: only the code saved with the weights runs
    import torch
    from transformers import AutoModel, AutoModelForPreTraining
    folder, retrieval_folder, inputs_path = sys.argv[1:4]
    inputs = torch.load(inputs_path)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                    attention_mask=inputs["attention_mask"])
        itm = model.itm_score(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    pretraining = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True)
    started = AutoModelForPreTraining.from_pretrained(retrieval_folder, trust_remote_code=True)
    from PIL import Image
    from transformers import pipeline
    classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    labels = classifier(Image.new("RGB", (32, 32), (255, 0, 0)), candidate_labels=["红色", "蓝色"])
    print(json.dumps({
        "pipeline": [type(classifier.model).__name__, sorted(label["label"] for label in labels)],
        "classes": [type(model).__name__, type(pretraining).__name__],
        "module": type(model).__module__.split(".")[0],
        "itc": (out.logits_per_image - inputs["logits_per_image"]).abs().max().item(),
        "itm": (itm - inputs["itm"]).abs().max().item(),
        "momentum_saved": max((m - inputs["momentum"][i]).abs().max().item()
                              for i, m in enumerate(pretraining.momentum_parameters())),
        "momentum_frozen": not any(p.requires_grad for p in pretraining.momentum_parameters())
                           and not any(p.requires_grad for p in started.momentum_parameters()),
        "started_is_copy": all(torch.equal(o, m) for _, o, m in started._momentum_triples()),
    }))
    """
)


@pytest.mark.slow
def test_fresh_process_trust_remote_code_gives_equal_itc_itm_and_a_zero_shot_pipeline(tmp_path):
    model = model_for("tiny-r2d2", use_bridges=True, queue_size=8).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**batch()).loss.backward()
    optimizer.step()
    model.momentum_update()  # the momentum model now differs from the online one: it must be loaded, not copied
    model.eval()
    inputs = batch(seed=3)
    with torch.no_grad():
        logits = model(**inputs, return_loss=False).logits_per_image
        itm = model.itm_score(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    model.save_pretrained(tmp_path / "pretraining")
    VLPProcessor(VLPImageProcessor(size={"height": IMAGE, "width": IMAGE}), build_chinese_tokenizer()).save_pretrained(
        tmp_path / "pretraining"
    )
    AutoModel.from_pretrained(tmp_path / "pretraining").save_pretrained(tmp_path / "retrieval")
    torch.save(
        {
            **inputs,
            "logits_per_image": logits,
            "itm": itm,
            "momentum": [p.detach() for p in model.momentum_parameters()],
        },
        tmp_path / "inputs.pt",
    )
    script = tmp_path / "check.py"
    script.write_text(REMOTE_CHECK)
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "pretraining"),
            str(tmp_path / "retrieval"),
            str(tmp_path / "inputs.pt"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["classes"] == ["FusionEncoderForRetrieval", "FusionEncoderForPreTraining"]
    assert report["pipeline"] == ["FusionEncoderForRetrieval", ["红色", "蓝色"]]
    assert report["module"] == "transformers_modules"
    assert report["itc"] <= 1e-5 and report["itm"] <= 1e-5
    assert report["momentum_saved"] == 0.0
    assert report["momentum_frozen"] and report["started_is_copy"]
