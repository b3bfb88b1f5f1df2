"""Tests for hf_vlp.retrieval: chunked top-k search, re-ranking, recall / zero-shot metrics, eval gathering."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_vlp.retrieval import (
    chunked_topk,
    dense_from_topk,
    gather_for_eval,
    rerank_topk,
    retrieval_recall,
    retrieval_recall_from_topk,
    zero_shot_accuracy,
)


INF = float("inf")


@pytest.fixture(autouse=True)
def _single_thread():
    """The tensors here are tiny: one thread is faster, and it avoids OpenMP barrier stalls (each costing up to a
    scheduler time slice) when the shared test machine is loaded, which made half-precision matmuls erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stable_reference(queries: torch.Tensor, gallery: torch.Tensor, k: int):
    """Full score matrix, stable descending sort: the documented result of chunked_topk."""
    scores, indices = torch.sort(queries @ gallery.T, dim=1, descending=True, stable=True)
    return scores[:, :k], indices[:, :k]


# ------------------------------------------------------------------------------------------------ metrics


# 3 images, 6 texts; image i owns texts 2i and 2i+1. Rows are images, columns texts.
SIM = torch.tensor(
    [
        # t0   t1   t2   t3   t4   t5
        [0.9, 0.1, 0.5, 0.2, 0.0, 0.3],  # image 0: GT t0 ranked 1st -> rank 0
        [0.8, 0.7, 0.1, 0.9, 0.2, 0.0],  # image 1: GT t2/t3, t3 (its 2nd caption) ranked 1st -> rank 0
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # image 2: GT t4/t5 ranked 5th and 6th -> rank 4
    ]
)
IMG2TXT = [[0, 1], [2, 3], [4, 5]]
TXT2IMG = [0, 0, 1, 1, 2, 2]
# Text -> image ranks (columns of SIM): t0 [0.9,0.8,0.6] GT0 -> 0; t1 [0.1,0.7,0.5] GT0 -> 2;
# t2 [0.5,0.1,0.4] GT1 -> 2; t3 [0.2,0.9,0.3] GT1 -> 0; t4 [0.0,0.2,0.2] GT2 ties image 1 -> 1 (pessimistic);
# t5 [0.3,0.0,0.1] GT2 -> 1.


def test_recall_hand_made_both_directions():
    out = retrieval_recall(SIM, IMG2TXT, TXT2IMG, ks=(1, 2, 5))
    assert out["i2t_R@1"] == pytest.approx(200 / 3)
    assert out["i2t_R@2"] == pytest.approx(200 / 3)
    assert out["i2t_R@5"] == pytest.approx(100.0)
    assert out["t2i_R@1"] == pytest.approx(200 / 6)
    assert out["t2i_R@2"] == pytest.approx(400 / 6)
    assert out["t2i_R@5"] == pytest.approx(100.0)
    assert out["i2t_mean"] == pytest.approx((200 / 3 + 200 / 3 + 100) / 3)
    assert out["t2i_mean"] == pytest.approx((200 / 6 + 400 / 6 + 100) / 3)
    assert out["mean_recall"] == pytest.approx((out["i2t_mean"] + out["t2i_mean"]) / 2)
    assert set(out) == {
        "i2t_R@1",
        "i2t_R@2",
        "i2t_R@5",
        "t2i_R@1",
        "t2i_R@2",
        "t2i_R@5",
        "i2t_mean",
        "t2i_mean",
        "mean_recall",
    }


def test_recall_default_ks_and_mean_of_six():
    out = retrieval_recall(SIM, IMG2TXT, TXT2IMG)
    six = [out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert out["mean_recall"] == pytest.approx(sum(six) / 6)
    assert out["i2t_R@10"] == 100.0 and out["t2i_R@10"] == 100.0


def test_second_caption_ranked_first_is_r1_hit():
    sim = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.3, 0.8]])  # image 0 owns t0 and t1; t1 comes first
    out = retrieval_recall(sim, [[0, 1], [2]], [0, 0, 1], ks=(1,))
    assert out["i2t_R@1"] == 100.0


def test_ties_are_pessimistic():
    # A ground truth tied with one non-ground-truth item ranks second.
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.0, 0.2, 0.9]])
    out = retrieval_recall(sim, [[1], [2]], [0, 0, 1], ks=(1, 2))
    assert out["i2t_R@1"] == 50.0  # image 0: GT t1 ties t0 -> rank 1
    assert out["i2t_R@2"] == 100.0
    # A constant model gets 0 at R@1 although the ground truths are stored first.
    const = torch.zeros(4, 4)
    out = retrieval_recall(const, [[0], [1], [2], [3]], [0, 1, 2, 3], ks=(1, 4))
    assert out["i2t_R@1"] == 0.0 and out["t2i_R@1"] == 0.0
    assert out["i2t_R@4"] == 100.0 and out["t2i_R@4"] == 100.0
    # Ties among ground truths do not hurt.
    out = retrieval_recall(torch.tensor([[0.7, 0.7, 0.1]]), [[0, 1]], [0, 0, 0], ks=(1,))
    assert out["i2t_R@1"] == 100.0


@pytest.mark.parametrize("fill", [-INF, -100.0])
def test_fill_values_of_two_stage_matrix(fill):
    # Only the top-2 of each row is scored; the ground truth of image 1 (t1) is not among them and sits at the
    # fill value together with t2. Storage order would put t1 third (R@3 hit); pessimistic ties put it fourth.
    sim = torch.full((2, 4), fill)
    sim[0, 0], sim[0, 2] = 3.0, 1.0
    sim[1, 0], sim[1, 3] = 2.0, 1.0
    out = retrieval_recall(sim, [[0], [1]], [0, 1, 0, 0], ks=(1, 3, 4), sim_t2i=torch.full((4, 2), fill))
    assert out["i2t_R@1"] == 50.0
    assert out["i2t_R@3"] == 50.0
    assert out["i2t_R@4"] == 100.0  # K = gallery size
    assert out["t2i_R@1"] == 0.0


def test_separate_t2i_matrix_is_used():
    sim_t2i = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # text 2 -> image 1, but GT is image 0
    out = retrieval_recall(torch.eye(2, 3), [[0], [1]], [0, 1, 0], ks=(1,), sim_t2i=sim_t2i)
    assert out["t2i_R@1"] == pytest.approx(200 / 3)


def test_several_gt_images_per_text():
    sim = torch.tensor([[0.1, 0.9], [0.8, 0.2]])  # text 0's GT images are {0, 1}; image 1 scores it best
    out = retrieval_recall(sim, [[0], [0, 1]], [[0, 1], [1]], ks=(1,))
    assert out["t2i_R@1"] == 50.0  # text 0 hit (via image 1), text 1 miss


def test_recall_input_validation():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(torch.tensor([[float("nan"), 0.0]]), [[0]], [0, 0])
    with pytest.raises(ValueError, match="outside"):
        retrieval_recall(SIM, [[0, 9], [2], [4]], TXT2IMG)
    with pytest.raises(ValueError, match="no ground truth"):
        retrieval_recall(SIM, [[0], [], [4]], TXT2IMG)
    with pytest.raises(ValueError):
        retrieval_recall(SIM, IMG2TXT[:2], TXT2IMG)


def _random_coco_like(num_images=40, captions=5, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=gen), dim=-1)
    txt = img.repeat_interleave(captions, 0) + 0.9 * torch.randn(num_images * captions, dim, generator=gen)
    txt = torch.nn.functional.normalize(txt, dim=-1)
    img2txt = [list(range(i * captions, (i + 1) * captions)) for i in range(num_images)]
    txt2img = [t // captions for t in range(num_images * captions)]
    return img, txt, img2txt, txt2img


def test_topk_variant_equals_dense_variant():
    img, txt, img2txt, txt2img = _random_coco_like()
    dense = retrieval_recall(img @ txt.T, img2txt, txt2img)
    assert 0 < dense["i2t_R@1"] < 100 and 0 < dense["t2i_R@1"] < 100  # non-trivial case
    s_i2t, i_i2t = chunked_topk(img, txt, 10, chunk_size=7)
    s_t2i, i_t2i = chunked_topk(txt, img, 10, chunk_size=7)
    assert retrieval_recall_from_topk(i_i2t, i_t2i, img2txt, txt2img) == pytest.approx(dense)
    with_scores = retrieval_recall_from_topk(
        i_i2t, i_t2i, img2txt, txt2img, topk_scores_i2t=s_i2t, topk_scores_t2i=s_t2i
    )
    assert with_scores == pytest.approx(dense)
    # and through the ALBEF-style dense matrix built from the top-k
    two_stage = retrieval_recall(
        dense_from_topk(i_i2t, s_i2t, txt.shape[0]),
        img2txt,
        txt2img,
        sim_t2i=dense_from_topk(i_t2i, s_t2i, img.shape[0], fill=-100.0),
    )
    assert two_stage == pytest.approx(dense)


def test_topk_variant_ties_and_misses():
    idx_i2t = torch.tensor([[5, 1, 0], [2, 3, 4]])
    idx_t2i = torch.tensor([[1, 0]] * 6)
    img2txt, txt2img = [[0, 1], [4]], [0, 0, 1, 1, 1, 1]
    out = retrieval_recall_from_topk(idx_i2t, idx_t2i, img2txt, txt2img, ks=(1, 2))
    assert out["i2t_R@1"] == 0.0 and out["i2t_R@2"] == 50.0  # image 0 GT at position 1; image 1 GT at 2
    assert out["t2i_R@1"] == pytest.approx(400 / 6)
    # list order is trusted without scores; with scores a GT tied with a non-GT item ranks behind it
    tied_first = torch.tensor([[1, 5, 0], [2, 3, 4]])
    assert retrieval_recall_from_topk(tied_first, idx_t2i, img2txt, txt2img, ks=(1,))["i2t_R@1"] == 50.0
    scores = torch.tensor([[0.9, 0.9, 0.1], [0.5, 0.4, 0.3]])
    out = retrieval_recall_from_topk(tied_first, idx_t2i, img2txt, txt2img, ks=(1, 2), topk_scores_i2t=scores)
    assert out["i2t_R@1"] == 0.0 and out["i2t_R@2"] == 50.0
    scores = torch.tensor([[0.9, 0.95, 0.1], [0.5, 0.4, 0.3]])  # GT scores above the 1st-listed item
    out = retrieval_recall_from_topk(idx_i2t, idx_t2i, img2txt, txt2img, ks=(1, 2), topk_scores_i2t=scores)
    assert out["i2t_R@1"] == 50.0
    with pytest.raises(ValueError, match="max\\(ks\\)"):
        retrieval_recall_from_topk(idx_i2t, idx_t2i, img2txt, txt2img, ks=(1, 5))


# ------------------------------------------------------------------------------------------------ search


@pytest.mark.parametrize(
    ("num_queries", "num_gallery", "k", "chunk_size", "query_chunk_size"),
    [
        (37, 1003, 10, 128, 16),  # chunk sizes do not divide N or Q
        (20, 500, 50, 7, 8),  # k larger than the gallery chunk
        (9, 30, 45, 8, 4),  # k larger than N: clipped to N
        (5, 64, 3, 64, 1024),  # single chunk, query chunk larger than Q
    ],
)
def test_chunked_topk_equals_full_topk(num_queries, num_gallery, k, chunk_size, query_chunk_size):
    gen = torch.Generator().manual_seed(num_gallery)
    queries = torch.randn(num_queries, 24, generator=gen)
    gallery = torch.randn(num_gallery, 24, generator=gen)
    scores, indices = chunked_topk(queries, gallery, k, chunk_size=chunk_size, query_chunk_size=query_chunk_size)
    k_eff = min(k, num_gallery)
    assert scores.shape == indices.shape == (num_queries, k_eff)
    assert scores.dtype == torch.float32 and indices.dtype == torch.long
    ref_scores, ref_indices = torch.topk(queries @ gallery.T, k_eff, dim=1)
    torch.testing.assert_close(indices, ref_indices, rtol=0, atol=0)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_chunked_topk_ties_follow_stable_order(dtype):
    # Small integer embeddings: many exact ties, products exact in every dtype.
    gen = torch.Generator().manual_seed(1)
    queries = torch.randint(-2, 3, (23, 6), generator=gen).to(dtype)
    gallery = torch.randint(-2, 3, (301, 6), generator=gen).to(dtype)
    ref_scores, ref_indices = _stable_reference(queries.double(), gallery.double(), 25)
    for chunk_size, query_chunk_size in [(301, 23), (10, 5), (17, 1), (1, 64)]:
        scores, indices = chunked_topk(queries, gallery, 25, chunk_size=chunk_size, query_chunk_size=query_chunk_size)
        torch.testing.assert_close(indices, ref_indices, rtol=0, atol=0)
        torch.testing.assert_close(scores.double(), ref_scores, rtol=0, atol=0)


def test_chunked_topk_all_equal_scores_keep_lowest_indices():
    scores, indices = chunked_topk(torch.ones(3, 4), torch.zeros(100, 4), 5, chunk_size=9)
    assert indices.tolist() == [[0, 1, 2, 3, 4]] * 3
    assert scores.eq(0).all()


def test_chunked_topk_edge_cases():
    q, g = torch.randn(4, 8), torch.randn(6, 8)
    assert chunked_topk(q, g, 0)[1].shape == (4, 0)
    assert chunked_topk(q[:0], g, 3)[1].shape == (0, 3)
    with pytest.raises(ValueError):
        chunked_topk(q, torch.randn(6, 7), 3)
    with pytest.raises(TypeError):
        chunked_topk(q, g.double(), 3)


# ------------------------------------------------------------------------------------------------ re-ranking


def _reverse_scorer(calls):
    def scorer(q_idx, c_idx):
        calls.append((q_idx.clone(), c_idx.clone()))
        return -c_idx.float()  # lower gallery index = better: the reverse of the contrastive order below

    return scorer


def test_rerank_reverses_order_exactly():
    cand = torch.tensor([[1, 4, 7, 9], [8, 5, 3, 0]])
    cand_scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.4, 0.3, 0.2, 0.1]])
    calls = []
    scores, indices = rerank_topk(torch.tensor([10, 11]), cand, cand_scores, _reverse_scorer(calls), batch_size=3)
    assert indices.tolist() == [[1, 4, 7, 9], [0, 3, 5, 8]]
    assert scores.tolist() == [[-1.0, -4.0, -7.0, -9.0], [0.0, -3.0, -5.0, -8.0]]
    # 8 pairs in batches of <= 3, row-major, with the global query indices passed through
    assert [len(q) for q, _ in calls] == [3, 3, 2]
    assert torch.cat([q for q, _ in calls]).tolist() == [10] * 4 + [11] * 4
    assert torch.cat([c for _, c in calls]).tolist() == cand.reshape(-1).tolist()


def test_rerank_descending_contrastive_reversed_by_scorer():
    cand = torch.tensor([[3, 1, 2, 0]])
    cand_scores = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    # cross score increases along the contrastive order -> "cross" returns the exact reverse permutation
    _, indices = rerank_topk(None, cand, cand_scores, lambda q, c: torch.tensor([40.0, 20.0, 30.0, 10.0])[c])
    assert indices.tolist() == [[0, 2, 1, 3]]


@pytest.mark.parametrize(
    ("combine", "expected_scores", "expected_indices"),
    [
        ("cross", [0.5, 0.2, 0.1], [20, 30, 10]),
        ("sum", [1.1, 0.9, 0.6], [20, 10, 30]),
        (0.25, [0.625, 0.575, 0.35], [10, 20, 30]),  # 0.25 * cross + 0.75 * contrastive
        (1.0, [0.5, 0.2, 0.1], [20, 30, 10]),
        (0.0, [0.8, 0.6, 0.4], [10, 20, 30]),
    ],
)
def test_rerank_combine_modes(combine, expected_scores, expected_indices):
    cand = torch.tensor([[10, 20, 30]])
    contrastive = torch.tensor([[0.8, 0.6, 0.4]])
    cross = {10: 0.1, 20: 0.5, 30: 0.2}
    scores, indices = rerank_topk(
        None, cand, contrastive, lambda q, c: torch.tensor([cross[int(x)] for x in c]), combine=combine
    )
    assert indices.tolist() == [expected_indices]
    torch.testing.assert_close(scores, torch.tensor([expected_scores]))


def test_rerank_validation():
    cand, cs = torch.tensor([[0, 1]]), torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError, match="combine"):
        rerank_topk(None, cand, cs, lambda q, c: c.float(), combine="max")
    with pytest.raises(ValueError, match="must return"):
        rerank_topk(None, cand, cs, lambda q, c: torch.zeros(len(c), 2))


def test_dense_from_topk():
    dense = dense_from_topk(torch.tensor([[2, 0], [1, 3]]), torch.tensor([[0.5, 0.25], [1.0, 2.0]]), 4)
    expected = torch.tensor([[0.25, -INF, 0.5, -INF], [-INF, 1.0, -INF, 2.0]])
    assert torch.equal(dense, expected)
    assert dense_from_topk(torch.tensor([[1]]), torch.tensor([[3.0]]), 3, fill=-100.0).tolist() == [
        [-100.0, 3.0, -100.0]
    ]


# ------------------------------------------------------------------------------------------------ zero-shot


def test_zero_shot_accuracy():
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 4: rank 4 -> top-5 only
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: rank 5 -> miss
            [0.3, 0.3, 0.0, 0.0, 0.0, 0.0],  # label 1: tied with class 0 -> rank 1 (pessimistic)
        ]
    )
    out = zero_shot_accuracy(logits, torch.tensor([0, 4, 5, 1]))
    assert out == {"top1": 25.0, "top5": 75.0}
    assert zero_shot_accuracy(logits, [0, 4, 5, 1], ks=(1, 6))["top6"] == 100.0
    assert zero_shot_accuracy(torch.zeros(3, 10), [0, 1, 2])["top1"] == 0.0


# ------------------------------------------------------------------------------------------------ distributed


def test_gather_for_eval_identity_without_distributed():
    x = torch.randn(3, 2)
    assert gather_for_eval(x) is x


# Run in fresh interpreters that load the retrieval core by file path: it is shipped model code, so it must need
# nothing but torch and transformers (no package, no relative import).
_GATHER_SCRIPT = """
import importlib.util, json, os, sys
import torch, torch.distributed as dist
spec = importlib.util.spec_from_file_location("retrieval_core", sys.argv[1])
core = importlib.util.module_from_spec(spec)
spec.loader.exec_module(core)
assert "hf_vlp" not in sys.modules and "trainers" not in sys.modules
rank = int(sys.argv[3])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
local = torch.arange(rank + 2, dtype=torch.float32)[:, None].repeat(1, 3 + rank) + 10 * rank  # 2x3, then 3x4
plain = core.gather_varlen(local)
leaf = local.clone().requires_grad_(True)
gathered = core.gather_varlen(leaf, with_grad=True)
gathered.sum().backward()
print(json.dumps({"plain": plain.tolist(), "same": torch.equal(gathered.detach(), plain), "grad": leaf.grad.tolist()}))
dist.destroy_process_group()
# gloo's background threads can abort the interpreter's own shutdown ("terminate called without an active
# exception", seen under load); the results are printed, so leave without it
sys.stdout.flush()
os._exit(0)
"""


def test_gather_varlen_variable_shapes_two_processes(tmp_path):
    module_file = Path(__file__).resolve().parents[2] / "hf_vlp" / "models" / "retrieval_core.py"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _GATHER_SCRIPT, str(module_file), str(tmp_path / "store"), str(rank)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    results = [json.loads(out) for out, _ in outputs]
    # Rank 0's 2 rows, then rank 1's 3; rank 0's 3 columns zero-padded to rank 1's 4.
    expected = [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [10.0] * 4, [11.0] * 4, [12.0] * 4]
    assert [result["plain"] for result in results] == [expected, expected]
    assert all(result["same"] for result in results)
    # With gradient: each rank's slice receives the gradient of both ranks' losses (1 + 1), padding none.
    assert results[0]["grad"] == [[2.0] * 3] * 2 and results[1]["grad"] == [[2.0] * 4] * 3


def test_recall_is_percent_and_finite():
    img, txt, img2txt, txt2img = _random_coco_like(num_images=8, captions=2)
    out = retrieval_recall(img @ txt.T, img2txt, txt2img)
    assert all(0.0 <= v <= 100.0 and math.isfinite(v) for v in out.values())
