"""GRIT-VLP grouping puts similar pairs in the same batch; the sampler serves whole groups, reproducibly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.trainers.helpers import small_model, training_args
from trainers import GritSampler, VLPTrainer, grit_grouping
from trainers.data import ImageTextDataset, demo_records


def _clustered(num_clusters: int = 4, per_cluster: int = 8, dim: int = 16, seed: int = 0):
    """Pairs whose image and text embeddings both sit near one of `num_clusters` orthogonal directions."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:num_clusters] * 3
    cluster = torch.arange(num_clusters).repeat_interleave(per_cluster)
    perm = torch.randperm(len(cluster), generator=generator)  # clusters interleaved in dataset order
    cluster = cluster[perm]
    images = F.normalize(centres[cluster] + 0.5 * torch.randn(len(cluster), dim, generator=generator), dim=-1)
    texts = F.normalize(centres[cluster] + 0.5 * torch.randn(len(cluster), dim, generator=generator), dim=-1)
    return images, texts, cluster


def test_grit_grouping_puts_each_cluster_in_its_own_batch():
    images, texts, cluster = _clustered()
    order = grit_grouping(images, texts, search_space=64, generator=torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(32))
    groups = cluster[order].view(4, 8)
    purity = sum(int(torch.bincount(group).max()) for group in groups) / 32
    assert purity >= 0.9
    # a random order of the same data is far from pure: the grouping is what makes batches hard
    random_groups = cluster[torch.randperm(32, generator=torch.Generator().manual_seed(0))].view(4, 8)
    assert sum(int(torch.bincount(group).max()) for group in random_groups) / 32 < 0.7


def test_grit_grouping_searches_within_chunks():
    images, texts, _ = _clustered()
    order = grit_grouping(images, texts, search_space=10, generator=torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(32))


def test_sampler_serves_whole_groups_in_a_seeded_order():
    sampler = GritSampler(num_samples=10, batch_size=4, seed=3)
    assert sorted(sampler) == list(range(10))  # random before the first grouping
    order = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    sampler.set_order(order, epoch=1)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        groups = [set(indices[i : i + 4]) for i in (0, 4)]
        assert sorted(map(sorted, groups)) == [[2, 3, 4, 5], [6, 7, 8, 9]]
        assert indices[8:] == [1, 0]  # the partial group stays last, so batches and groups coincide
        assert indices == list(sampler)  # same epoch, same batches
    restored = GritSampler(num_samples=10, batch_size=4, seed=3)
    restored.load_state_dict(sampler.state_dict())
    restored.set_epoch(2)
    assert list(restored) == list(sampler)
    with pytest.raises(ValueError, match="permutation"):
        sampler.set_order(torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8]), epoch=3)


def test_trainer_refreshes_grit_groups_from_its_own_embeddings(tmp_path, small_processor):
    args = training_args(tmp_path, grit_sampling=True, num_train_epochs=2, max_steps=-1, per_device_train_batch_size=4)
    trainer = VLPTrainer(
        model=small_model(),
        args=args,
        train_dataset=ImageTextDataset(demo_records(12, image_size=32)),
        processing_class=small_processor,
    )
    trainer.train()
    sampler = trainer._grit_sampler
    assert sampler.order_epoch == 1 and sorted(sampler.order.tolist()) == list(range(12))
