"""`VLPTrainer.evaluate`: retrieval and zero-shot metrics equal a direct dense computation on the model's own
embeddings (global and token-wise similarity, chunked), a re-ranking model re-ranks both ways, and bad
gallery images are counted without shifting the indices. The metric functions themselves are tested in
tests/hf_vlp/test_retrieval.py."""

from __future__ import annotations

import pytest
import torch

from hf_vlp.models.retrieval_core import RerankingModel
from hf_vlp.retrieval import rerank_topk, retrieval_recall, retrieval_recall_from_topk, zero_shot_accuracy
from tests.trainers.helpers import small_model, training_args
from trainers import VLPTrainer, build_zero_shot_set
from trainers.data import build_eval_gallery, demo_records
from trainers.evaluation import chance_recall


TOKEN_WISE = {"similarity": "token_wise", "token_reduction": "norm", "image_tokens_kept": 6, "text_tokens_kept": 6}


@pytest.fixture(scope="module")
def records():
    """12 images, 1 to 3 captions each (24 texts); 3 of the images carry a shape label."""
    records = demo_records(12, image_size=32, seed=3)
    for index, record in enumerate(records):
        record["text"] = record["text"][: 1 + index % 3]
    return records


def _embeddings(model, gallery, processor):
    model.eval()
    with torch.no_grad():
        images = model.encode_image(processor(images=gallery.images)["pixel_values"])
        texts = model.encode_text(**processor(text=gallery.texts, padding="longest", truncation=True, max_length=32))
    return images, texts


def _metrics(trainer, eval_dataset=None) -> dict:
    metrics = trainer.evaluate(eval_dataset)
    skip = ("runtime", "per_second", "epoch")
    return {key: value for key, value in metrics.items() if not any(word in key for word in skip)}


@pytest.mark.parametrize("overrides", [{}, TOKEN_WISE], ids=["global", "token_wise"])
def test_retrieval_metrics_equal_the_dense_computation(tmp_path, small_processor, records, overrides):
    gallery = build_eval_gallery(records)
    model = small_model(seed=1, **overrides)
    args = training_args(tmp_path, per_device_eval_batch_size=5, retrieval_chunk_size=7, retrieval_topk=12)
    trainer = VLPTrainer(model=model, args=args, eval_dataset=gallery, processing_class=small_processor)
    metrics = _metrics(trainer)

    images, texts = _embeddings(model, gallery, small_processor)
    with torch.no_grad():
        sim_i2t, sim_t2i = model.similarity(images, texts)
    expected = retrieval_recall(sim_i2t, gallery.img2txt, gallery.txt2imgs, sim_t2i=sim_t2i.t())
    assert {f"eval_{key}": value for key, value in expected.items()}.items() <= metrics.items()
    assert metrics["eval_num_images"] == 12 and metrics["eval_num_texts"] == 24
    assert 0 < metrics["eval_mean_recall"] < 100


class ReversingReranker(torch.nn.Module):
    """Wraps a dual encoder and makes it a `RerankingModel`: the negated similarity, which reverses each top-k."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.reranked_pairs = 0

    def encode_image(self, **kwargs):
        return self.model.encode_image(**kwargs)

    def encode_text(self, **kwargs):
        return self.model.encode_text(**kwargs)

    def similarity(self, image, text):
        return self.model.similarity(image, text)

    def get_logit_scale(self):
        return self.model.get_logit_scale()

    def rerank_scores(self, image, text):
        self.reranked_pairs += image.embeds.shape[0]
        return -(image.embeds * text.embeds).sum(-1)


def test_a_reranking_model_reorders_the_top_k_both_ways(tmp_path, small_processor, records):
    gallery = build_eval_gallery(records)
    wrapper = ReversingReranker(small_model(seed=2))
    args = training_args(tmp_path, retrieval_topk=10, rerank_combine="cross", retrieval_chunk_size=5)
    trainer = VLPTrainer(model=wrapper, args=args, eval_dataset=gallery, processing_class=small_processor)
    metrics = _metrics(trainer)
    assert isinstance(wrapper, RerankingModel) and wrapper.reranked_pairs == (12 + 24) * 10  # top-10, both ways

    images, texts = _embeddings(wrapper.model, gallery, small_processor)
    sim = images.embeds @ texts.embeds.t()
    lists = {}
    for direction, scores in (("i2t", sim), ("t2i", sim.t())):
        top_scores, top_indices = scores.topk(10, dim=1)
        lists[direction] = rerank_topk(None, top_indices, top_scores, lambda q, c, s=scores: -s[q, c], combine="cross")
    expected = retrieval_recall_from_topk(
        lists["i2t"][1],
        lists["t2i"][1],
        gallery.img2txt,
        gallery.txt2imgs,
        topk_scores_i2t=lists["i2t"][0],
        topk_scores_t2i=lists["t2i"][0],
    )
    assert {f"eval_{key}": pytest.approx(value) for key, value in expected.items()}.items() <= metrics.items()

    args.rerank = False
    plain = _metrics(trainer)
    assert plain["eval_i2t_R@1"] != metrics["eval_i2t_R@1"] or plain["eval_t2i_R@1"] != metrics["eval_t2i_R@1"]


def test_zero_shot_accuracy_with_chinese_prompts(tmp_path, small_processor, records):
    labelled = [dict(record, label=record["label"] or "其他") for record in records]
    zero_shot = build_zero_shot_set(labelled)
    model = small_model(seed=4)
    args = training_args(tmp_path, zero_shot_prompt="一张{}的照片。")
    trainer = VLPTrainer(
        model=model,
        args=args,
        eval_dataset=build_eval_gallery(records),
        zero_shot_dataset=zero_shot,
        processing_class=small_processor,
    )
    metrics = _metrics(trainer)

    prompts = [f"一张{name}的照片。" for name in zero_shot.class_names]
    model.eval()
    with torch.no_grad():
        images = model.encode_image(small_processor(images=zero_shot.images)["pixel_values"])
        texts = model.encode_text(**small_processor(text=prompts, padding="longest"))
        logits = model.similarity(images, texts)[0]
    assert metrics["eval_zero_shot_top1"] == zero_shot_accuracy(logits, zero_shot.labels, ks=(1,))["top1"]
    assert "eval_mean_recall" in metrics
    # a ZeroShotSet alone is evaluated on its own
    assert set(_metrics(trainer, zero_shot)) == {"eval_zero_shot_top1"}


def test_bad_gallery_images_are_counted_and_keep_their_slot(tmp_path, small_processor, records, caplog):
    broken = [dict(record) for record in records]
    broken[3]["image"] = str(tmp_path / "missing.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    broken[5]["image"] = str(tmp_path / "corrupt.png")
    trainer = VLPTrainer(
        model=small_model(),
        args=training_args(tmp_path),
        eval_dataset={"clean": build_eval_gallery(records), "broken": build_eval_gallery(broken)},
        processing_class=small_processor,
    )
    metrics = _metrics(trainer)
    assert metrics["eval_broken_num_bad_images"] == 2 and "eval_clean_num_bad_images" not in metrics
    warned = [record.getMessage() for record in caplog.records if "Evaluation image" in record.getMessage()]
    assert any("corrupt.png" in message for message in warned), warned  # the file is named, not a byte buffer
    assert metrics["eval_broken_num_images"] == metrics["eval_clean_num_images"] == 12


def test_chance_recall_is_the_mean_of_random_rankings(records):
    gallery = build_eval_gallery(records)
    chance = chance_recall(gallery)
    generator = torch.Generator().manual_seed(0)
    trials = [
        retrieval_recall(torch.rand(12, 24, generator=generator), gallery.img2txt, gallery.txt2imgs)["mean_recall"]
        for _ in range(400)
    ]
    assert sum(trials) / len(trials) == pytest.approx(chance["mean_recall"], abs=1.0)
