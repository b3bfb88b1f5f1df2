"""Unit tests of the Space's engine (`hf_vlp.space`, no Gradio): ranking, classification, limits, parsing, caching.

Most tests use an untrained tiny model: they check that the app ranks by the model's own scores, not that the model
is any good. The semantic checks (the right image first) use the trained model of `conftest.py` and are `slow`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import hf_vlp
from hf_vlp.space import engine, galleries, inputs, launch, loading
from hf_vlp.space.engine import RERANK_COMBINE, RERANK_TOP_K, VLPSpace
from hf_vlp.space.galleries import Gallery, builtin_gallery, default_gallery, upload_gallery
from hf_vlp.space.inputs import UserInputError, load_image, parse_captions, parse_labels
from hf_vlp.space.loading import ModelNotFoundError, load_model, resolve_model
from tests.spaces.conftest import WithReranker, png


# ------------------------------------------------------------------------------------------------ parsing


def test_parse_labels_accepts_ascii_and_chinese_commas():
    assert parse_labels("猫, 狗，汽车、 飞机\n船") == ["猫", "狗", "汽车", "飞机", "船"]
    assert parse_labels(" 猫 ,,， 猫 ,狗 ") == ["猫", "狗"]  # blanks dropped, duplicates once, order kept


@pytest.mark.parametrize("text", ["", "   ", "，, ,、"])
def test_parse_labels_refuses_empty_input_in_chinese(text):
    with pytest.raises(UserInputError, match="请输入至少一个类别名称"):
        parse_labels(text)


def test_parse_labels_and_captions_limits(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_LABELS", 3)
    monkeypatch.setattr(inputs, "MAX_CAPTIONS", 2)
    with pytest.raises(UserInputError, match="类别太多（4 个），最多 3 个"):
        parse_labels("a,b,c,d")
    with pytest.raises(UserInputError, match="候选文本太多"):
        parse_captions("一\n二\n三")
    with pytest.raises(UserInputError, match="太长"):
        parse_labels("猫" * (inputs.MAX_TEXT_CHARS + 1))


def test_parse_captions_one_per_line():
    assert parse_captions("一个红色的圆形\n\n  一个蓝色的三角形 \n一个红色的圆形") == [
        "一个红色的圆形",
        "一个蓝色的三角形",
    ]
    with pytest.raises(UserInputError, match="请输入候选文本"):
        parse_captions(" \n ")


# ------------------------------------------------------------------------------------------------ images and limits


def test_load_image_refuses_non_images_and_oversized_files(tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("这不是图片", encoding="utf-8")
    with pytest.raises(UserInputError, match="「notes.txt」不是可识别的图片文件"):
        load_image(str(notes))
    with pytest.raises(UserInputError, match="找不到文件"):
        load_image(str(tmp_path / "missing.png"))

    big = png(tmp_path / "big.png", size=(300, 200))
    assert load_image(big).size == (300, 200)
    monkeypatch.setattr(inputs, "MAX_IMAGE_PIXELS", 300 * 200 - 1)
    with pytest.raises(UserInputError, match="分辨率太大（300×200）"):
        load_image(big)
    monkeypatch.setattr(inputs, "MAX_IMAGE_BYTES", 10)
    with pytest.raises(UserInputError, match="「big.png」太大"):
        load_image(big)


def test_load_image_converts_modes_to_rgb(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (0, 0, 255, 0)).save(path)
    image = load_image(str(path))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white


def test_upload_gallery_limits_count(tmp_path, monkeypatch):
    paths = [png(tmp_path / f"{i}.png") for i in range(3)]
    monkeypatch.setattr(galleries, "MAX_UPLOAD_IMAGES", 2)
    with pytest.raises(UserInputError, match="一次最多上传 2 张图片，收到 3 个文件"):
        upload_gallery(paths)


# ------------------------------------------------------------------------------------------------ ranking


def _reference_scores(model, processor, texts, images):
    """Similarity computed directly with the public API, to compare the app's rankings with."""
    with torch.no_grad():
        text = model.encode_text(**{k: v for k, v in processor(text=texts).items() if k != "pixel_values"})
        image = model.encode_image(pixel_values=processor(images=images)["pixel_values"])
        return model.similarity(image, text)[0]  # [images, texts]


def test_search_ranks_by_the_models_similarity(make_space, untrained):
    space = make_space()
    gallery = space.gallery
    result = space.search("一个红色的圆形", gallery, k=5)
    expected = _reference_scores(*untrained, ["一个红色的圆形"], list(gallery.images))[:, 0]
    order = expected.argsort(descending=True, stable=True)[:5]
    assert [p for p, _ in result.ranked] == order.tolist()
    torch.testing.assert_close(torch.tensor([s for _, s in result.ranked]), expected[order], rtol=1e-4, atol=1e-5)
    assert result.reranked is None
    assert len(space.search("一个红色的圆形", gallery, k=1000).ranked) == len(gallery)  # k clipped to the gallery
    assert len(space.search("一个红色的圆形", gallery, k=0).ranked) == 1


def test_token_wise_model_search_uses_its_similarity():
    torch.manual_seed(0)
    model = hf_vlp.create_model("tiny-filip").eval()
    processor = hf_vlp.processor_for_preset("tiny-filip")
    space = VLPSpace(model, processor, builtin_gallery(), batch_size=7)  # several batches to concatenate
    result = space.search("一个蓝色的三角形", space.gallery, k=4)
    with torch.no_grad():  # a text query ranks images by the text-to-image direction (FILIP's, as evaluation does)
        text = model.encode_text(**processor(text=["一个蓝色的三角形"]))
        images = model.encode_image(pixel_values=processor(images=list(space.gallery.images))["pixel_values"])
        expected = model.similarity(images, text)[1][:, 0]
    assert [p for p, _ in result.ranked] == expected.argsort(descending=True, stable=True)[:4].tolist()
    torch.testing.assert_close(torch.tensor([s for _, s in result.ranked]), expected.sort(descending=True)[0][:4])


def test_rank_captions_and_classify_follow_the_scaled_similarity(make_space, untrained):
    space = make_space()
    image = space.gallery.images[3]
    captions = list(space.gallery.captions[:6])
    ranked, reranked = space.rank_captions(image, captions)
    sim = _reference_scores(*untrained, captions, [image])[0]
    assert [c for c, _, _ in ranked] == [captions[i] for i in sim.argsort(descending=True, stable=True)]
    assert math.isclose(sum(p for _, _, p in ranked), 1.0, rel_tol=1e-5) and reranked is None

    labels = ["圆形", "正方形", "三角形", "星形{x}"]  # braces in a label must not break the template
    probs = space.classify(image, labels, "一个{}")
    sim = _reference_scores(*untrained, [f"一个{label}" for label in labels], [image])[0]
    expected = (untrained[0].get_logit_scale().detach() * sim).softmax(-1)
    torch.testing.assert_close(torch.tensor(list(probs.values())), expected, rtol=1e-4, atol=1e-6)
    assert list(probs) == labels


def test_upload_gallery_skips_bad_files_and_names_them(make_space, tmp_path):
    space = make_space()
    good = [png(tmp_path / "red.png", (220, 40, 40)), png(tmp_path / "blue.png", (40, 80, 225))]
    bad = tmp_path / "report.pdf"
    bad.write_bytes(b"%PDF-1.4 not an image")
    gallery = upload_gallery([good[0], str(bad), good[1]])
    result = space.search("一个红色的圆形", gallery, k=5)
    assert sorted(p for p, _ in result.ranked) == [0, 2]  # gallery positions of the two images
    assert result.skipped == ["report.pdf"] and result.searched == 2


# ------------------------------------------------------------------------------------------------ caching


def test_gallery_is_encoded_once_per_content(make_space):
    space = make_space(batch_size=8)
    model = space.model
    space.search("一个红色的圆形", space.gallery, k=3)
    assert model.image_calls == math.ceil(len(space.gallery) / 8)  # batched
    assert model.images_encoded == len(space.gallery)
    space.search("一个蓝色的三角形", space.gallery, k=3)
    space.search("一个黄色的星形", k=3)  # the default gallery
    assert model.images_encoded == len(space.gallery)  # later queries encode only their text
    assert model.text_calls == 3

    same_content = builtin_gallery()  # another object, same pixels: same key, no encoding
    assert same_content is not space.gallery and same_content.key == space.gallery.key
    space.search("一个红色的圆形", same_content, k=3)
    assert model.images_encoded == len(space.gallery)

    other = Gallery.create("other", list(space.gallery.images[:5]), list(space.gallery.captions[:5]))
    space.search("一个红色的圆形", other, k=3)
    assert model.images_encoded == len(space.gallery) + 5


def test_upload_cache_is_keyed_by_file_bytes_and_bounded(make_space, tmp_path):
    space = make_space(cache_size=2)
    model = space.model
    first = png(tmp_path / "a.png", (220, 40, 40))
    space.gallery_index(upload_gallery([first]))
    space.search("红色", upload_gallery([first]), 3)
    assert model.images_encoded == 1
    png(tmp_path / "a.png", (40, 80, 225))  # same path, new content: must be encoded again
    space.search("红色", upload_gallery([first]), 3)
    assert model.images_encoded == 2
    space.search("红色", space.gallery, 3)  # a third gallery evicts the least recently used: the red upload
    png(tmp_path / "a.png", (220, 40, 40))
    space.search("红色", upload_gallery([first]), 3)
    assert model.images_encoded == 2 + len(space.gallery) + 1


def test_concurrent_first_queries_share_one_encoding(make_space):
    from concurrent.futures import ThreadPoolExecutor

    space = make_space(batch_size=64)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda q: space.search(q, space.gallery, 2), ["红色", "绿色", "蓝色", "黄色"]))
    assert space.model.images_encoded == len(space.gallery)
    assert all(len(result.ranked) == 2 for result in results)


# ------------------------------------------------------------------------------------------------ image to image


def test_search_image_ranks_by_image_embedding_cosine(make_space):
    space = make_space()
    query = space.gallery.load(7)
    result = space.search_image(query, k=4)
    embeds = space.gallery_index(space.gallery).embeddings.embeds
    expected = (embeds @ embeds[7]).argsort(descending=True, stable=True)[:4]
    assert [p for p, _ in result.ranked] == expected.tolist() and result.ranked[0][0] == 7  # itself first
    assert result.ranked[0][1] == pytest.approx(1.0, abs=1e-4) and result.source is space.gallery
    assert space.model.images_encoded == len(space.gallery) + 1  # the gallery once, then only the query


def test_search_image_in_an_uploaded_gallery(make_space, tmp_path):
    space = make_space()
    red, blue = png(tmp_path / "red.png", (220, 40, 40)), png(tmp_path / "blue.png", (40, 80, 225))
    gallery = upload_gallery([red, blue])
    result = space.search_image(load_image(blue), gallery, k=5)
    assert result.ranked[0][0] == 1 and len(result.ranked) == 2 and result.source is gallery


# ------------------------------------------------------------------------------------------------ thumbnails


def test_result_thumbnails_are_written_once_under_their_content_hash(make_space, tmp_path):
    import hashlib

    space = make_space(thumbnails=galleries.ThumbnailStore(tmp_path / "thumbs", size=64))
    result = space.search("一个红色的圆形", k=3)
    items = space.result_items(result.source, result.ranked)
    paths = [path for path, _ in items]
    assert [label.split(" · ")[0] for _, label in items] == ["1", "2", "3"]
    for path, (position, _) in zip(paths, result.ranked):
        data = Path(path).read_bytes()
        assert path.endswith(hashlib.blake2b(data, digest_size=16).hexdigest() + ".webp")
        assert max(Image.open(path).size) <= 64 and path.startswith(str(tmp_path / "thumbs"))
        assert items[paths.index(path)][1].endswith(space.gallery.captions[position])
    stamps = {path: os.stat(path).st_mtime_ns for path in paths}
    again = space.result_items(result.source, result.ranked)
    assert [path for path, _ in again] == paths
    assert {path: os.stat(path).st_mtime_ns for path in paths} == stamps  # never rewritten
    assert not [p for p in os.listdir(tmp_path / "thumbs") if p.startswith(".staging")]


def test_concurrent_thumbnail_writes_never_expose_a_partial_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = galleries.ThumbnailStore(tmp_path)
    image = Image.effect_noise((300, 300), 64).convert("RGB")
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: store.write(image), range(32)))
    assert len(set(paths)) == 1
    assert Image.open(paths[0]).size == (256, 256)
    assert os.listdir(tmp_path) == [os.path.basename(paths[0])]


def test_repeated_queries_are_encoded_once(make_space):
    space = make_space()
    for _ in range(3):
        space.search("一个红色的圆形", k=2)
    assert space.model.text_calls == 1


# ------------------------------------------------------------------------------------------------ re-ranking


def test_rerank_switch_only_for_models_with_the_hook(make_space):
    plain = make_space()
    assert not plain.can_rerank
    assert plain.search("一个红色的圆形", plain.gallery, 5, rerank=True).reranked is None

    fusion = make_space(wrapper=WithReranker)
    assert fusion.can_rerank
    result = fusion.search("一个红色的圆形", fusion.gallery, 5, rerank=True)
    assert fusion.model.calls == [(5, 5)]  # one batch of the 5 aligned candidate pairs
    assert {p for p, _ in result.reranked} == {p for p, _ in result.ranked}  # the same 5 images ...
    first_values = {p: float(fusion.gallery_index(fusion.gallery).embeddings.embeds[p, 0]) for p, _ in result.ranked}
    assert [p for p, _ in result.reranked] == sorted(first_values, key=first_values.get)  # ... in the hook's order

    ranked, reranked = fusion.rank_captions(fusion.gallery.images[0], list(fusion.gallery.captions), rerank=True)
    assert len(reranked) == RERANK_TOP_K and fusion.model.calls[-1] == (RERANK_TOP_K, RERANK_TOP_K)
    assert {c for c, _, _ in reranked} == {c for c, _, _ in ranked[:RERANK_TOP_K]}
    assert all(1 <= before <= RERANK_TOP_K for _, _, before in reranked)


def test_fusion_model_reranks_like_its_own_two_stage_ranking(tmp_path):
    """A real (untrained) tiny fusion encoder, loaded like any model: the Space's two orders are the model's."""
    torch.manual_seed(0)
    path = tmp_path / "fusion"
    hf_vlp.create_model("tiny-fusion").save_pretrained(path)
    hf_vlp.processor_for_preset("tiny-fusion").save_pretrained(path)
    model, processor, _ = load_model(str(path))
    space = VLPSpace(model, processor, builtin_gallery(), batch_size=8)
    assert space.can_rerank

    result = space.search("一个红色的圆形", space.gallery, k=6, rerank=True)
    index = space.gallery_index(space.gallery)
    text = space.encode_texts(["一个红色的圆形"])
    first = model.similarity(index.embeddings, text)[1][:, 0].argsort(descending=True, stable=True)[:6]
    scores, rows = model.rank(text, index.embeddings, query_modality="text", k=6, combine=RERANK_COMBINE)
    assert [p for p, _ in result.ranked] == index.positions[first].tolist()
    assert [p for p, _ in result.reranked] == index.positions[rows[0]].tolist()
    torch.testing.assert_close(torch.tensor([s for _, s in result.reranked]), scores[0], rtol=1e-4, atol=1e-5)

    captions = list(space.gallery.captions)
    ranked, reranked = space.rank_captions(space.gallery.images[0], captions, rerank=True)
    image = space.encode_images([space.gallery.images[0]])
    scores, rows = model.rank(
        image, space.encode_texts(captions), query_modality="image", k=RERANK_TOP_K, combine=RERANK_COMBINE
    )
    assert [c for c, _, _ in reranked] == [captions[i] for i in rows[0]]


# ------------------------------------------------------------------------------------------------ model and gallery


def test_missing_default_model_gives_instructions(monkeypatch, tmp_path):
    monkeypatch.delenv(loading.ENV_MODEL, raising=False)
    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", str(tmp_path / "nothing-here"))
    with pytest.raises(ModelNotFoundError, match="hf-vlp pretrain --recipe demo"):
        resolve_model()
    with pytest.raises(ModelNotFoundError, match="Model folder not found"):
        resolve_model("./not/a/folder")
    assert launch.main(["--model", str(tmp_path / "nothing-here")]) == 1
    (tmp_path / "run" / "model").mkdir(parents=True)  # a training run's output folder instead of its model
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="no config.json.*the run's model is in .*run/model"):
        resolve_model(str(tmp_path / "run"))


def test_model_from_argument_env_or_default(monkeypatch, tmp_path, untrained_model_dir):
    monkeypatch.delenv(loading.ENV_MODEL, raising=False)
    monkeypatch.delenv(loading.ENV_REVISION, raising=False)
    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", str(untrained_model_dir))
    assert resolve_model() == (str(untrained_model_dir), None, True)
    monkeypatch.setenv(loading.ENV_MODEL, "someone/chinese-vlp")
    monkeypatch.setenv(loading.ENV_REVISION, "0123abc")
    assert resolve_model() == ("someone/chinese-vlp", "0123abc", False)
    assert resolve_model("other/model", "main") == ("other/model", "main", False)


def test_hub_model_is_loaded_at_the_pinned_revision(local_hub, untrained_model_dir, tmp_path, caplog):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("user/space-model")
    first = api.upload_folder(repo_id="user/space-model", folder_path=untrained_model_dir)
    torch.manual_seed(1)
    newer = tmp_path / "newer"
    hf_vlp.create_model("tiny").save_pretrained(newer)
    hf_vlp.processor_for_preset("tiny").save_pretrained(newer)
    api.upload_folder(repo_id="user/space-model", folder_path=newer)

    pinned, processor, name = load_model("user/space-model", revision=first.oid)
    local, _, _ = load_model(str(untrained_model_dir))
    assert name == f"user/space-model@{first.oid}"
    torch.testing.assert_close(pinned.logit_scale, local.logit_scale)
    for (key, a), (_, b) in zip(pinned.state_dict().items(), local.state_dict().items()):
        assert torch.equal(a, b), key
    assert processor(text=["一个红色的圆形"])["input_ids"].shape[0] == 1

    with caplog.at_level(logging.WARNING, logger="hf_vlp.space"):
        latest, _, _ = load_model("user/space-model")
    assert "pin a commit" in caplog.text
    expected, _, _ = load_model(str(newer))
    for (key, a), (_, b) in zip(latest.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(a, b), key


def test_default_gallery_prefers_argument_then_demo_eval_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(galleries.ENV_GALLERY, raising=False)
    monkeypatch.setattr(galleries, "DEFAULT_GALLERY_DIR", str(tmp_path / "no-eval-set"))
    assert default_gallery().name == "内置示例图库"

    eval_dir = tmp_path / "eval"  # the imagefolder layout of the demo job's eval split
    eval_dir.mkdir()
    rows = [("eval-000000.png", "一个红色的圆形", (220, 40, 40)), ("eval-000001.png", "一个蓝色的星形", (40, 80, 225))]
    for name, _, colour in rows:
        png(eval_dir / name, colour)
    (eval_dir / "metadata.jsonl").write_text(
        "\n".join(
            json.dumps({"file_name": n, "text": t, "captions": [t, "x"]}, ensure_ascii=False) for n, t, _ in rows
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(galleries, "DEFAULT_GALLERY_DIR", str(eval_dir))
    gallery = default_gallery()
    assert gallery.captions == ("一个红色的圆形", "一个蓝色的星形") and len(gallery) == 2
    assert default_gallery(galleries.BUILTIN_GALLERY).name == "内置示例图库"

    plain = tmp_path / "photos"  # any folder of images: captioned by file name
    plain.mkdir()
    png(plain / "b.png")
    png(plain / "a.jpg")
    (plain / "readme.txt").write_text("x")
    monkeypatch.setenv(galleries.ENV_GALLERY, str(plain))
    assert default_gallery().captions == ("a.jpg", "b.png")


@pytest.mark.slow
def test_large_gallery_stays_interactive(make_space):
    """A few thousand images: encoded once in batches, then each query is a text encoding plus a chunked top-k."""
    import time

    gallery = builtin_gallery(variants=100)  # 2,000 scenes
    space = make_space(gallery=gallery)
    space.gallery_index(gallery)
    assert space.model.image_calls == math.ceil(len(gallery) / engine.ENCODE_BATCH_SIZE)
    started = time.perf_counter()
    for query in ("一个红色的圆形", "一个蓝色的三角形", "一个黄色的星形"):
        result = space.search(query, k=8)
        assert len(space.result_items(result.source, result.ranked)) == 8 and result.searched == 2000
    assert (time.perf_counter() - started) / 3 < 1.0
    assert space.model.images_encoded == len(gallery)


# ------------------------------------------------------------------------------------------------ semantics


@pytest.mark.slow
def test_trained_model_finds_every_scene(trained_space):
    gallery = trained_space.gallery
    for position, caption in enumerate(gallery.captions):
        assert trained_space.search(caption, gallery, k=3).ranked[0][0] == position, caption
    ranked, _ = trained_space.rank_captions(gallery.images[10], list(gallery.captions))
    assert ranked[0][0] == gallery.captions[10]
    labels = ["红色的圆形", "绿色的正方形", "蓝色的三角形", "黄色的星形"]
    probs = trained_space.classify(gallery.images[10], labels, "一个{}")  # images[10]: 一个蓝色的三角形
    assert max(probs, key=probs.get) == "蓝色的三角形"


def test_the_engine_never_imports_gradio():
    """Gradio is the optional `[space]` extra: the engine, the launcher's parsing and publishing work without it."""
    import subprocess
    import sys

    code = (
        "import sys, hf_vlp.space, hf_vlp.space.engine, hf_vlp.space.indexed, hf_vlp.space.launch, "
        "hf_vlp.space.publish; assert 'gradio' not in sys.modules, 'gradio imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
