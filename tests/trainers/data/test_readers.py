"""Every reader yields lazy records; with a corrupt image and an empty caption in the middle, both are counted and
skipped and their neighbours are still read."""

from __future__ import annotations

import gzip
import json
import tarfile

import datasets
import pytest

from trainers.data import (
    BadSampleCounter,
    DataFormatError,
    ImageTextDataset,
    TSVImageRef,
    build_eval_gallery,
    read_caption_file,
    read_chinese_clip,
    read_hf_dataset,
    read_image_folder,
    read_parquet,
    read_shard,
    read_webdataset_tar,
)

from .conftest import (
    GOOD_IDS,
    make_samples,
    write_chinese_clip,
    write_image_files,
    write_jsonl,
    write_parquet,
    write_tar,
)


def drain(records, **kwargs) -> tuple[ImageTextDataset, list[str]]:
    dataset = ImageTextDataset(records, **kwargs)
    items = [dataset[index] for index in range(len(dataset))]
    return dataset, [item["image_id"] for item in items if item is not None]


def assert_two_bad(dataset: ImageTextDataset) -> None:
    assert dataset.bad_samples.as_dict() == {"corrupt_image": 1, "empty_caption": 1}


def test_image_folder_jsonl_is_lazy(tmp_path, samples):
    write_image_files(tmp_path, samples)
    lines = [{"file_name": f"{s['id']}.png", "text": s["text"], "id": s["id"]} for s in samples]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    records = list(read_image_folder(tmp_path, id_column="id"))
    assert [record["image"] for record in records] == [str(tmp_path / f"{s['id']}.png") for s in samples]
    dataset, ids = drain(records)
    assert ids == GOOD_IDS
    assert_two_bad(dataset)


def test_image_folder_csv_with_caption_lists(tmp_path, samples):
    write_image_files(tmp_path, samples)
    rows = ["file_name,text,captions,label"]
    for s in samples:
        captions = json.dumps([s["text"], "另一个说法"], ensure_ascii=False).replace('"', '""')
        rows.append(f'{s["id"]}.png,{s["text"]},"{captions}",x')
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    records = list(read_image_folder(tmp_path, extra_columns=["label"]))
    assert records[0]["text"] == ["第0张图片", "另一个说法"]
    assert records[0]["image_id"] == "s0.png" and records[0]["label"] == "x"
    dataset, ids = drain(records, caption_strategy="first")
    # The whitespace-only caption is dropped, but sample 4 keeps its second caption, so only the corrupt one goes.
    assert ids == ["s0.png", "s1.png", "s3.png", "s4.png", "s5.png"]
    assert dataset.bad_samples.as_dict() == {"corrupt_image": 1}


def test_image_folder_without_metadata_names_the_folder(tmp_path):
    with pytest.raises(DataFormatError, match=str(tmp_path)):
        read_image_folder(tmp_path)


def test_caption_file_errors_name_the_column_and_the_path(tmp_path, samples):
    path = write_jsonl(tmp_path / "pairs.jsonl", samples)
    with pytest.raises(DataFormatError, match="'caption'.*text_column"):
        list(read_caption_file(path, text_column="caption"))
    with pytest.raises(DataFormatError, match="missing.jsonl"):
        read_caption_file(tmp_path / "missing.jsonl")
    with pytest.raises(DataFormatError, match=r"\.jsonl or \.csv"):
        read_caption_file(tmp_path / "pairs.txt")


def test_caption_file_bad_lines_and_missing_images_are_skipped(tmp_path, samples):
    path = write_jsonl(tmp_path / "pairs.jsonl", samples)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1:1] = ["{not json", "[1, 2]", json.dumps({"image": "images/gone.png", "text": "丢失的图片", "id": "gone"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    counter = BadSampleCounter()
    dataset, ids = drain(read_caption_file(path, id_column="id", counter=counter))
    assert ids == GOOD_IDS
    assert counter.as_dict() == {"bad_record": 2}
    assert dataset.bad_samples.as_dict() == {"missing_image": 1, "corrupt_image": 1, "empty_caption": 1}


def hf_dataset(samples) -> datasets.Dataset:
    features = datasets.Features(
        {"image": datasets.Image(), "text": datasets.Value("string"), "id": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": s["bytes"], "path": None} for s in samples],
            "text": [s["text"] for s in samples],
            "id": [s["id"] for s in samples],
        },
        features=features,
    )


def test_hf_dataset_object_saved_folder_and_dict(tmp_path, samples):
    dataset = hf_dataset(samples)
    records = read_hf_dataset(dataset, id_column="id")
    assert records.dataset.features["image"].decode is False
    assert set(records[0]) == {"image", "text", "image_id"} and isinstance(records[0]["image"]["bytes"], bytes)
    torch_dataset, ids = drain(records)
    assert ids == GOOD_IDS
    assert_two_bad(torch_dataset)

    dataset.save_to_disk(tmp_path / "saved")
    assert drain(read_hf_dataset(str(tmp_path / "saved"), id_column="id"))[1] == GOOD_IDS
    splits = datasets.DatasetDict({"validation": dataset})
    assert len(read_hf_dataset(splits, split="validation")) == len(samples)
    with pytest.raises(DataFormatError, match="'train'.*validation"):
        read_hf_dataset(splits)
    with pytest.raises(DataFormatError, match="'caption'"):
        read_hf_dataset(dataset, text_column="caption")


def test_hf_load_dataset_path_with_a_local_imagefolder(tmp_path, samples):
    folder = tmp_path / "folder"
    write_image_files(folder, samples)
    lines = [{"file_name": f"{s['id']}.png", "text": s["text"]} for s in samples if s["id"] != "s2"]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    (folder / "s2.png").unlink()  # datasets' imagefolder would refuse an image that has no metadata line
    records = read_hf_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    dataset, ids = drain(records)
    assert ids == ["0", "1", "2", "4"]  # row numbers; sample 4 (row 3) has the empty caption
    assert dataset.bad_samples.as_dict() == {"empty_caption": 1}


def test_parquet_reads_in_batches(tmp_path, samples):
    path = write_parquet(tmp_path / "part-0.parquet", samples, text_column="caption", id_column="key")
    records = list(read_parquet(path, text_column="caption", id_column="key", batch_size=3))
    assert isinstance(records[0]["image"], dict)
    dataset, ids = drain(records)
    assert ids == GOOD_IDS
    assert_two_bad(dataset)
    assert [r["image_id"] for r in read_parquet(path, text_column="caption")][:2] == [
        "part-0.parquet:0",
        "part-0.parquet:1",
    ]
    with pytest.raises(DataFormatError, match="'text'.*part-0.parquet"):
        list(read_parquet(path))


def test_webdataset_tar_plain_gzip_and_url(tmp_path, samples):
    path = write_tar(tmp_path / "shard-000.tar", samples)
    gz = tmp_path / "shard-001.tar.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    for source in (path, gz, f"file://{path}"):
        records = list(read_shard(source))
        assert all(isinstance(record["image"], bytes) for record in records)
        dataset, ids = drain(records)
        assert [i.split("/")[1] for i in ids] == GOOD_IDS
        assert_two_bad(dataset)
    assert next(read_webdataset_tar(path))["image_id"] == "shard-000.tar/s0"


def test_webdataset_tar_is_streamed(tmp_path):
    """A shard cut short still yields the samples before the cut: members are read one by one, nothing up front."""
    data = write_tar(tmp_path / "full.tar", make_samples(prefix="t")).read_bytes()
    cut = tmp_path / "cut.tar"
    # Each sample is two members of one 512-byte header and one 512-byte data block; cut inside t2.png's data.
    cut.write_bytes(data[: 2 * 2048 + 512 + 20])
    records = read_webdataset_tar(cut)
    assert [next(records)["image_id"], next(records)["image_id"]] == ["cut.tar/t0", "cut.tar/t1"]
    with pytest.raises(tarfile.ReadError, match="unexpected end"):
        next(records)


def test_chinese_clip_pairs_and_eval_structure(tmp_path, samples):
    tsv, jsonl = write_chinese_clip(tmp_path, samples)
    with jsonl.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text_id": 300, "text": "不存在的图片", "image_ids": ["nope"]}) + "\n")
    records = read_chinese_clip(tsv, jsonl)
    assert [r["image_id"] for r in records] == [s["id"] for s in samples]
    assert isinstance(records[0]["image"], TSVImageRef)
    assert records[1]["text"] == ["第0张图片", "第1张图片", "另一段描述"] and records[1]["text_ids"] == [
        "100",
        "101",
        "200",
    ]

    dataset, ids = drain(records, caption_strategy="explode")
    assert ids == ["s0", "s1", "s1", "s1", "s3", "s5"]  # every (image, text) pair of the good images
    assert_two_bad(dataset)

    gallery = build_eval_gallery(records)
    # Text 100 is listed once although it describes two images; s4's only text is empty, so s4 is a distractor.
    assert gallery.texts == ["第0张图片", "第1张图片", "另一段描述", "第2张图片", "第3张图片", "第5张图片"]
    assert gallery.img2txt == [[0], [0, 1, 2], [3], [4], [], [5]]
    assert gallery.txt2img == [0, 1, 1, 2, 3, 5]
    assert gallery.txt2imgs[0] == [0, 1]


def test_chinese_clip_unpaired_images_and_missing_files(tmp_path, samples):
    tsv, jsonl = write_chinese_clip(tmp_path, samples)
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    jsonl.write_text("\n".join(line for line in lines if '"s5"' not in line) + "\n", encoding="utf-8")
    assert "s5" not in [r["image_id"] for r in read_chinese_clip(tsv, jsonl)]
    assert read_chinese_clip(tsv, jsonl, include_unpaired_images=True)[-1]["text"] == []
    with pytest.raises(DataFormatError, match="missing_texts.jsonl"):
        read_chinese_clip(tsv, tmp_path / "missing_texts.jsonl")


def test_unknown_shard_type(tmp_path):
    with pytest.raises(DataFormatError, match="shard.zip"):
        read_shard(tmp_path / "shard.zip")
