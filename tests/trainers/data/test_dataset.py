"""Map-style and streaming datasets: caption strategies, node x worker split, shuffling, skipping, eval gallery."""

from __future__ import annotations

import collections

import pytest
from torch.utils.data import DataLoader

from trainers.data import (
    DataFormatError,
    ImageTextCollator,
    ImageTextDataset,
    StreamingImageTextDataset,
    build_eval_gallery,
)

from .conftest import GOOD_IDS, make_samples, png_bytes, write_jsonl, write_parquet, write_tar


def multi_caption_records(count: int = 20) -> list[dict]:
    return [
        {"image": png_bytes(index), "text": [f"图{index}甲", f"图{index}乙", f"图{index}丙"], "image_id": f"m{index}"}
        for index in range(count)
    ]


def texts_of(dataset: ImageTextDataset) -> list[str]:
    return [dataset[index]["text"] for index in range(len(dataset))]


def test_caption_strategies():
    records = multi_caption_records()
    assert texts_of(ImageTextDataset(records, caption_strategy="first")) == [f"图{i}甲" for i in range(20)]

    exploded = ImageTextDataset(records, caption_strategy="explode")
    assert len(exploded) == 60
    assert [exploded[i]["image_id"] for i in range(3)] == ["m0", "m0", "m0"]

    sampled = ImageTextDataset(records, caption_strategy="sample", seed=1)
    epoch0 = texts_of(sampled)
    assert epoch0 == texts_of(ImageTextDataset(records, seed=1))  # same seed and epoch: same draw
    sampled.set_epoch(1)
    epoch1 = texts_of(sampled)
    assert epoch0 != epoch1 and len({text[-1] for text in epoch0 + epoch1}) == 3

    with pytest.raises(ValueError, match="caption_strategy"):
        ImageTextDataset(records, caption_strategy="all")


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_see_set_epoch(context):
    """Workers kept alive across epochs read the epoch the main process sets (shared memory), so the caption draw of
    epoch 1 in a persistent worker is the draw an in-process dataset makes at epoch 1, not a replay of epoch 0."""
    records = multi_caption_records(8)
    dataset = ImageTextDataset(records, seed=3)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=1,
        persistent_workers=True,
        multiprocessing_context=context,
    )
    seen, expected = [], []
    for epoch in range(3):  # set_epoch before each pass, as the Trainer does
        dataset.set_epoch(epoch)
        seen.append([item["text"] for item in loader])
        fresh = ImageTextDataset(records, seed=3)
        fresh.set_epoch(epoch)
        expected.append(texts_of(fresh))
    assert seen == expected
    assert seen[0] != seen[1] != seen[2]
    assert dataset.epoch == 2


def test_persistent_workers_see_set_epoch_streaming(tmp_path):
    shards, _ = write_shards(tmp_path, "many")
    dataset = streaming(shards, shuffle_buffer=8)
    loader = DataLoader(dataset, batch_size=None, num_workers=1, persistent_workers=True)
    epoch0 = [item["image_id"] for item in loader]
    dataset.set_epoch(1)
    epoch1 = [item["image_id"] for item in loader]
    reference = streaming(shards, shuffle_buffer=8)
    reference.set_epoch(1)
    assert epoch1 == [item["image_id"] for item in reference] != epoch0


def test_map_style_returns_none_for_bad_samples_and_the_loader_reports_them(processor):
    records = [{"image": s["bytes"], "text": s["text"], "image_id": s["id"]} for s in make_samples()]
    dataset = ImageTextDataset(iter(records))  # any iterable is read into a list
    assert dataset[2] is None and dataset[4] is None
    loader = DataLoader(dataset, batch_size=3, collate_fn=ImageTextCollator(processor, max_length=8))
    batches = list(loader)
    assert [batch["image_ids"] for batch in batches] == [["s0", "s1"], ["s3", "s5"]]
    assert [batch["num_skipped_samples"] for batch in batches] == [1, 1]


def write_shards(tmp_path, layout: str) -> tuple[list, list[str]]:
    """Shards of several types holding 40 good samples in total."""
    groups = [make_samples(8, prefix=f"{name}-") for name in "abcde"]
    if layout == "few":  # fewer shards than the 4 consumers: record-level striding
        shards = [
            write_tar(tmp_path / "a.tar", groups[0] + groups[1]),
            write_parquet(tmp_path / "b.parquet", groups[2] + groups[3] + groups[4]),
        ]
    else:  # at least as many shards as consumers: whole shards per consumer
        shards = [
            write_tar(tmp_path / "a.tar", groups[0]),
            write_jsonl(tmp_path / "b.jsonl", groups[1]),
            write_parquet(tmp_path / "c.parquet", groups[2]),
            write_tar(tmp_path / "d.tar", groups[3]),
            write_jsonl(tmp_path / "e.jsonl", groups[4]),
        ]
    return shards, [s["id"] for group in groups for s in group]


def streaming(shards, **kwargs) -> StreamingImageTextDataset:
    return StreamingImageTextDataset(shards, id_column="id", **kwargs)


def short_id(image_id: str) -> str:
    """Tar ids are '<shard>/<key>', parquet ids come from the column; compare on the sample's own id."""
    return image_id.split("/")[-1]


@pytest.mark.parametrize("layout", ["few", "many"])
def test_two_nodes_two_workers_cover_every_sample_exactly_once(tmp_path, monkeypatch, layout):
    shards, expected = write_shards(tmp_path, layout)
    seen_by_rank = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)  # inherited by the forked workers, as torchrun's variables are
        loader = DataLoader(streaming(shards, shuffle_buffer=4, seed=3), batch_size=None, num_workers=2)
        seen_by_rank[rank] = [short_id(item["image_id"]) for item in loader]
    assert sorted(seen_by_rank["0"] + seen_by_rank["1"]) == sorted(expected)
    # Sample ids start with their group's letter; with whole shards per consumer the ranks share no group.
    groups = [{image_id[0] for image_id in seen_by_rank[rank]} for rank in ("0", "1")]
    if layout == "many":
        assert not groups[0] & groups[1]
    else:  # record striding: every consumer reads every shard and keeps its share of each
        assert groups[0] == groups[1] == set("abcde")


def test_single_process_reads_all_and_split_by_node_can_be_disabled(tmp_path, monkeypatch):
    shards, expected = write_shards(tmp_path, "many")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert sorted(short_id(item["image_id"]) for item in streaming(shards, split_by_node=False)) == sorted(expected)
    assert len(list(streaming(shards))) < len(expected)


def test_shuffle_is_seeded_and_changes_with_the_epoch(tmp_path):
    shards, _ = write_shards(tmp_path, "many")

    def order_at(epoch: int, seed: int = 0) -> list[str]:
        dataset = streaming(shards, shuffle_buffer=8, seed=seed)
        dataset.set_epoch(epoch)
        return [item["image_id"] for item in dataset]

    unshuffled = [item["image_id"] for item in streaming(shards)]
    assert order_at(0) == order_at(0)
    assert order_at(0) != order_at(1) and order_at(0) != order_at(0, seed=1) and order_at(0) != unshuffled
    assert sorted(order_at(1)) == sorted(unshuffled)


def test_streaming_skips_bad_samples_and_corrupt_shards(tmp_path, processor):
    good = write_tar(tmp_path / "good.tar", make_samples())  # corrupt image and empty caption inside
    data = write_tar(tmp_path / "full.tar", make_samples(prefix="t")).read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: 2 * 2048 + 512 + 20])  # t0 and t1, then truncated
    jsonl = write_jsonl(tmp_path / "last.jsonl", make_samples(2, prefix="j"))
    dataset = StreamingImageTextDataset([good, tmp_path / "cut.tar", jsonl], id_column="id")
    items = list(dataset)
    assert [short_id(item["image_id"]) for item in items] == [*GOOD_IDS, "t0", "t1", "j0", "j1"]
    assert dataset.bad_samples.as_dict() == {"corrupt_image": 1, "empty_caption": 1, "corrupt_shard": 1}
    # Each skip is attributed to the next good item, so per-batch sums reach the trainer through the collator.
    assert [item["num_skipped"] for item in items] == [0, 0, 1, 1, 0, 0, 1, 0]
    batch = ImageTextCollator(processor, max_length=8)(items)
    assert batch["num_skipped_samples"] == 3


def test_streaming_caption_strategies(tmp_path):
    lines = [f'{{"image": "images/x{i}.png", "text": ["甲{i}", "乙{i}"], "id": "x{i}"}}' for i in range(4)]
    for i in range(4):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / f"x{i}.png").write_bytes(png_bytes(i))
    (tmp_path / "multi.jsonl").write_text("\n".join(lines), encoding="utf-8")
    shard = [tmp_path / "multi.jsonl"]
    assert [item["text"] for item in streaming(shard, caption_strategy="first")] == ["甲0", "甲1", "甲2", "甲3"]
    assert len(list(streaming(shard, caption_strategy="explode"))) == 8
    exploded_shuffled = [item["image_id"] for item in streaming(shard, caption_strategy="explode", shuffle_buffer=8)]
    assert collections.Counter(exploded_shuffled) == {f"x{i}": 2 for i in range(4)}
    sampled = [item["text"] for item in streaming(shard, seed=5)]
    assert sampled == [item["text"] for item in streaming(shard, seed=5)]


def test_streaming_configuration_errors(tmp_path):
    with pytest.raises(DataFormatError, match="No shards"):
        StreamingImageTextDataset([])
    with pytest.raises(DataFormatError, match="shard.zip"):
        StreamingImageTextDataset([tmp_path / "a.tar", tmp_path / "shard.zip"])
    shard = write_jsonl(tmp_path / "a.jsonl", make_samples(2, prefix="q"))
    with pytest.raises(DataFormatError, match="'caption'"):
        list(StreamingImageTextDataset([shard], text_column="caption"))


def test_eval_gallery_maps_and_decoding():
    records = [
        {"image": png_bytes(0), "text": ["甲", "乙"], "image_id": "a"},
        {"image": b"broken", "text": ["丙"], "image_id": "b"},
        {"image": png_bytes(2), "text": "丁", "image_id": "c"},
        {"image": png_bytes(0), "text": ["戊", " "], "image_id": "a"},  # same image again: merged
    ]
    images, texts, img2txt, txt2img = build_eval_gallery(records)
    assert len(images) == 3 and texts == ["甲", "乙", "丙", "丁", "戊"]
    assert img2txt == [[0, 1, 4], [2], [3]] and txt2img == [0, 0, 1, 2, 0]

    decoded = build_eval_gallery(records, decode=True)
    assert [image.mode for image in decoded.images] == ["RGB", "RGB"]
    assert decoded.texts == ["甲", "乙", "丁", "戊"]
    assert decoded.img2txt == [[0, 1, 3], [2]] and decoded.txt2img == [0, 0, 1, 0]
    assert decoded.txt2imgs == [[0], [0], [1], [0]]
