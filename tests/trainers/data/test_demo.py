"""The built-in demo set: deterministic bytes, compositional captions, disjoint splits, zero-shot labels."""

from __future__ import annotations

import filecmp
import json

import datasets
import numpy as np
import pytest

from trainers.data import (
    DemoSceneSpec,
    ImageTextDataset,
    all_demo_scenes,
    build_eval_gallery,
    caption_variants,
    demo_records,
    demo_zero_shot_labels,
    generate_demo_dataset,
    read_image_folder,
    render_scene,
)


PAIR = DemoSceneSpec([("左边", 1, "红色", "圆形"), ("右边", 2, "蓝色", "三角形")])


def read_metadata(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def test_captions_are_compositional_paraphrases():
    variants = caption_variants(PAIR)
    assert variants[0] == "左边是一个红色的圆形，右边是两个蓝色的三角形"
    assert "图中左边有一个红色的圆形，右边有两个蓝色的三角形" in variants
    assert "一个红色圆形在左边，两个蓝色三角形在右边" in variants
    assert len(set(variants)) == len(variants) == 5
    assert caption_variants(DemoSceneSpec([(None, 1, "绿色", "正方形")]))[0] == "一个绿色的正方形"
    swapped = DemoSceneSpec([("右边", 1, "红色", "圆形"), ("左边", 2, "蓝色", "三角形")])
    assert caption_variants(swapped)[0] == "左边是两个蓝色的三角形，右边是一个红色的圆形"  # a hard negative of PAIR


def test_scene_specs_are_normalised_and_validated():
    assert DemoSceneSpec([("右边", 2, "蓝色", "三角形"), ("左边", 1, "红色", "圆形")]) == PAIR
    singles, pairs = all_demo_scenes()
    assert (len(singles), len(pairs), len(set(pairs))) == (60, 7080, 7080)
    for bad in (
        [("左边", 1, "红色", "圆形")],  # single group with a position
        [("左边", 1, "红色", "圆形"), ("上面", 1, "红色", "圆形")],  # not opposite sides
        [(None, 4, "红色", "圆形")],
        [(None, 1, "橙色", "圆形")],
    ):
        with pytest.raises(ValueError):
            DemoSceneSpec(bad)


def test_render_is_deterministic_and_domains_differ():
    plain = np.asarray(render_scene(PAIR, 64, "plain", seed=1))
    assert plain.shape == (64, 64, 3)
    assert np.array_equal(plain, np.asarray(render_scene(PAIR, 64, "plain", seed=1)))
    assert not np.array_equal(plain, np.asarray(render_scene(PAIR, 64, "plain", seed=2)))
    night = np.asarray(render_scene(PAIR, 64, "night", seed=1))
    assert plain.mean() > 150 > 80 > night.mean()
    left, right = plain[:, :32].astype(int), plain[:, 32:].astype(int)
    assert (left[..., 0] - left[..., 2]).max() > 100 and (right[..., 2] - right[..., 0]).max() > 100  # red | blue


def test_generator_is_byte_identical_and_splits_are_disjoint(tmp_path):
    first = generate_demo_dataset(tmp_path / "a", num_train=120, num_eval=40, seed=7, captions_per_image=3)
    generate_demo_dataset(tmp_path / "b", num_train=120, num_eval=40, seed=7, captions_per_image=3)
    for split in ("train", "eval"):
        names = sorted(path.name for path in (tmp_path / "a" / split).iterdir())
        assert len(names) == {"train": 121, "eval": 41}[split]
        match, mismatch, errors = filecmp.cmpfiles(
            tmp_path / "a" / split, tmp_path / "b" / split, names, shallow=False
        )
        assert not mismatch and not errors
    generate_demo_dataset(tmp_path / "c", num_train=120, num_eval=40, seed=8)
    assert not filecmp.cmp(tmp_path / "a/train/000000.png", tmp_path / "c/train/000000.png", shallow=False)

    train, evaluation = read_metadata(tmp_path / "a/train"), read_metadata(tmp_path / "a/eval")
    for line in train + evaluation:
        assert line["text"] == line["captions"][0] and len(line["captions"]) == 3
        spec = DemoSceneSpec([tuple(group.values()) for group in line["groups"]])
        assert line["text"] == caption_variants(spec)[0]
        assert line["label"] == (spec.groups[0].shape if len(spec.groups) == 1 else None)
    scenes = {
        split: {json.dumps(line["groups"], ensure_ascii=False) for line in lines}
        for split, lines in (("train", train), ("eval", evaluation))
    }
    assert not scenes["train"] & scenes["eval"]
    assert first["zero_shot_labels"] == list(demo_zero_shot_labels().labels)
    assert {line["label"] for line in evaluation} - {None} == set(demo_zero_shot_labels().labels)
    with pytest.raises(FileExistsError):
        generate_demo_dataset(tmp_path / "a", num_train=4, num_eval=2)


def test_small_scene_space_still_keeps_eval_scenes_out_of_train(tmp_path):
    """125 single-group images from 60 single-group scenes must repeat scenes, but never across splits."""
    generate_demo_dataset(tmp_path, num_train=400, num_eval=100, domain="night")
    singles = {
        split: {tuple(read["groups"][0].values()) for read in read_metadata(tmp_path / split) if read["label"]}
        for split in ("train", "eval")
    }
    assert not singles["train"] & singles["eval"] and len(singles["eval"]) >= 12


def test_generated_folder_reads_with_our_reader_and_with_datasets(tmp_path):
    root, cache = tmp_path / "demo", str(tmp_path / "cache")
    generate_demo_dataset(root, num_train=8, num_eval=6, captions_per_image=2)
    records = list(read_image_folder(root / "eval", id_column="image_id", extra_columns=["label"]))
    dataset = ImageTextDataset(records, caption_strategy="explode")
    assert len(dataset) == 12 and all(dataset[i] is not None for i in range(12))
    gallery = build_eval_gallery(records)
    assert len(gallery.images) == 6 and len(gallery.texts) == 12
    loaded = datasets.load_dataset("imagefolder", data_dir=str(root / "train"), cache_dir=cache)
    assert loaded["train"].num_rows == 8 and {"image", "text", "captions", "label"} <= set(
        loaded["train"].column_names
    )
    loaded = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=cache)
    assert (loaded["train"].num_rows, loaded["test"].num_rows) == (8, 6)


def test_demo_records_in_memory():
    records = demo_records(16, seed=3, domain="night", image_size=32, captions_per_image=2)
    assert len(records) == 16 and records[0]["image"].size == (32, 32)
    assert all(len(record["text"]) == 2 for record in records)
    assert sum(record["label"] is not None for record in records) == 4  # a quarter are single-group scenes
    again = demo_records(16, seed=3, domain="night", image_size=32, captions_per_image=2)
    assert [r["text"] for r in records] == [r["text"] for r in again]
    assert np.array_equal(np.asarray(records[5]["image"]), np.asarray(again[5]["image"]))
    task = demo_zero_shot_labels("colour")
    assert task.labels == ("红色", "绿色", "蓝色", "黄色", "紫色") and task.label_of(PAIR) is None
