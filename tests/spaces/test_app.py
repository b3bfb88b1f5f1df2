"""Unit tests of the Space's logic (`spaces/app.py`): ranking, classification, limits, input parsing and caching.

Most tests use an untrained tiny model: they check that the app ranks by the model's own scores, not that the model
is any good. The semantic checks (the right image first) use the trained model of `conftest.py` and are `slow`.
"""

from __future__ import annotations

import json
import logging
import math

import gradio as gr
import pytest
import torch
from PIL import Image

import hf_vlp


class EncodeCounter:
    """A model proxy that counts encoder calls; every other attribute passes through to the model."""

    def __init__(self, model):
        self._model = model
        self.image_calls = 0
        self.images_encoded = 0
        self.text_calls = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode_image(self, pixel_values, **kwargs):
        self.image_calls += 1
        self.images_encoded += pixel_values.shape[0]
        return self._model.encode_image(pixel_values=pixel_values, **kwargs)

    def encode_text(self, **kwargs):
        self.text_calls += 1
        return self._model.encode_text(**kwargs)


class WithReranker(EncodeCounter):
    """A dual encoder with a stand-in cross encoder that prefers images whose first embedding value is lowest."""

    def __init__(self, model):
        super().__init__(model)
        self.calls = []

    def rerank_scores(self, image, text):
        self.calls.append((image.embeds.shape[0], text.embeds.shape[0]))
        return -100.0 * image.embeds[:, 0]


@pytest.fixture(scope="module")
def untrained(app, untrained_model_dir):
    model, processor, _ = app.load_model(str(untrained_model_dir))
    return model, processor


@pytest.fixture
def make_space(app, untrained):
    """A fresh `VLPSpace` (empty cache) over the untrained model, wrapped by `wrapper` to observe it."""

    def make(gallery=None, wrapper=EncodeCounter, **kwargs):
        model, processor = untrained
        return app.VLPSpace(wrapper(model), processor, gallery or app.builtin_gallery(), model_name="tiny", **kwargs)

    return make


def _png(path, colour=(200, 30, 30), size=(32, 32)):
    Image.new("RGB", size, colour).save(path)
    return str(path)


# ------------------------------------------------------------------------------------------------ parsing


def test_parse_labels_accepts_ascii_and_chinese_commas(app):
    assert app.parse_labels("猫, 狗，汽车、 飞机\n船") == ["猫", "狗", "汽车", "飞机", "船"]
    assert app.parse_labels(" 猫 ,,， 猫 ,狗 ") == ["猫", "狗"]  # blanks dropped, duplicates once, order kept


@pytest.mark.parametrize("text", ["", "   ", "，, ,、"])
def test_parse_labels_refuses_empty_input_in_chinese(app, text):
    with pytest.raises(app.UserInputError, match="请输入至少一个类别名称"):
        app.parse_labels(text)


def test_parse_labels_and_captions_limits(app, monkeypatch):
    monkeypatch.setattr(app, "MAX_LABELS", 3)
    monkeypatch.setattr(app, "MAX_CAPTIONS", 2)
    with pytest.raises(app.UserInputError, match="类别太多（4 个），最多 3 个"):
        app.parse_labels("a,b,c,d")
    with pytest.raises(app.UserInputError, match="候选文本太多"):
        app.parse_captions("一\n二\n三")
    with pytest.raises(app.UserInputError, match="太长"):
        app.parse_labels("猫" * (app.MAX_TEXT_CHARS + 1))


def test_parse_captions_one_per_line(app):
    assert app.parse_captions("一个红色的圆形\n\n  一个蓝色的三角形 \n一个红色的圆形") == [
        "一个红色的圆形",
        "一个蓝色的三角形",
    ]
    with pytest.raises(app.UserInputError, match="请输入候选文本"):
        app.parse_captions(" \n ")


# ------------------------------------------------------------------------------------------------ images and limits


def test_load_image_refuses_non_images_and_oversized_files(app, tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("这不是图片", encoding="utf-8")
    with pytest.raises(app.UserInputError, match="「notes.txt」不是可识别的图片文件"):
        app.load_image(str(notes))
    with pytest.raises(app.UserInputError, match="找不到文件"):
        app.load_image(str(tmp_path / "missing.png"))

    big = _png(tmp_path / "big.png", size=(300, 200))
    assert app.load_image(big).size == (300, 200)
    monkeypatch.setattr(app, "MAX_IMAGE_PIXELS", 300 * 200 - 1)
    with pytest.raises(app.UserInputError, match="分辨率太大（300×200）"):
        app.load_image(big)
    monkeypatch.setattr(app, "MAX_IMAGE_BYTES", 10)
    with pytest.raises(app.UserInputError, match="「big.png」太大"):
        app.load_image(big)


def test_load_image_converts_modes_to_rgb(app, tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (0, 0, 255, 0)).save(path)
    image = app.load_image(str(path))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white


def test_upload_gallery_limits_count(app, tmp_path, monkeypatch):
    paths = [_png(tmp_path / f"{i}.png") for i in range(3)]
    monkeypatch.setattr(app, "MAX_UPLOAD_IMAGES", 2)
    with pytest.raises(app.UserInputError, match="一次最多上传 2 张图片，收到 3 个文件"):
        app.upload_gallery(paths)


def test_ui_handlers_turn_bad_input_into_chinese_status(make_space, tmp_path):
    space = make_space()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello", encoding="utf-8")
    with pytest.warns(UserWarning):  # gr.Warning outside a request falls back to warnings.warn
        results, reranked, status = space.ui_search("   ", 5, None)
    assert (results, reranked) == ([], []) and status == "⚠️ 请输入要搜索的文字。"
    with pytest.warns(UserWarning):
        status = space.ui_upload([str(notes)])
    assert "图库里没有可用的图片" in status and "notes.txt" in status
    with pytest.warns(UserWarning):
        assert space.ui_classify(None, "猫", "{}")[1] == "⚠️ 请先上传一张图片。"
    with pytest.warns(UserWarning):
        assert "不是可识别的图片文件" in space.ui_classify(str(notes), "猫", "{}")[1]
    image = _png(tmp_path / "red.png")
    with pytest.warns(UserWarning):
        assert "请输入至少一个类别名称" in space.ui_classify(image, " ， ", "{}")[1]
    with pytest.warns(UserWarning):
        assert "提示模板需要包含 {}" in space.ui_classify(image, "猫", "一张照片")[1]
    with pytest.warns(UserWarning):
        assert "请输入候选文本" in space.ui_rank_captions(image, "")[2]


def test_unexpected_errors_are_logged_not_shown(make_space, monkeypatch, caplog):
    space = make_space()

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(space, "search", broken)
    with caplog.at_level(logging.ERROR, logger="hf_vlp.space"), pytest.warns(UserWarning):
        _, _, status = space.ui_search("一个红色的圆形", 5, None)
    assert status.startswith("⚠️ 处理请求时出错了") and "CUDA" not in status
    assert "CUDA out of memory" in caplog.text  # the operator still sees what happened


# ------------------------------------------------------------------------------------------------ ranking


def _reference_scores(model, processor, texts, images):
    """Similarity computed directly with the public API, to compare the app's rankings with."""
    with torch.no_grad():
        text = model.encode_text(**{k: v for k, v in processor(text=texts).items() if k != "pixel_values"})
        image = model.encode_image(pixel_values=processor(images=images)["pixel_values"])
        return model.similarity(image, text)[0]  # [images, texts]


def test_search_ranks_by_the_models_similarity(app, make_space, untrained):
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


def test_token_wise_model_search_uses_its_similarity(app):
    torch.manual_seed(0)
    model = hf_vlp.create_model("tiny-filip").eval()
    processor = hf_vlp.processor_for_preset("tiny-filip")
    space = app.VLPSpace(model, processor, app.builtin_gallery(), batch_size=7)  # several batches to concatenate
    result = space.search("一个蓝色的三角形", space.gallery, k=4)
    expected = _reference_scores(model, processor, ["一个蓝色的三角形"], list(space.gallery.images))[:, 0]
    assert [p for p, _ in result.ranked] == expected.argsort(descending=True, stable=True)[:4].tolist()


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


def test_upload_gallery_skips_bad_files_and_names_them(app, make_space, tmp_path):
    space = make_space()
    good = [_png(tmp_path / "red.png", (220, 40, 40)), _png(tmp_path / "blue.png", (40, 80, 225))]
    bad = tmp_path / "report.pdf"
    bad.write_bytes(b"%PDF-1.4 not an image")
    gallery = app.upload_gallery([good[0], str(bad), good[1]])
    result = space.search("一个红色的圆形", gallery, k=5)
    assert sorted(p for p, _ in result.ranked) == [0, 2]  # gallery positions of the two images
    assert result.index.skipped == ["report.pdf"]
    with pytest.warns(UserWarning):
        status = space.ui_upload([good[0], str(bad), good[1]])
    assert status.startswith("已载入上传的 2 张图片") and "已跳过 1 个无法识别的文件：「report.pdf」" in status


# ------------------------------------------------------------------------------------------------ caching


def test_gallery_is_encoded_once_per_content(app, make_space):
    space = make_space(batch_size=8)
    model = space.model
    space.search("一个红色的圆形", space.gallery, k=3)
    assert model.image_calls == math.ceil(len(space.gallery) / 8)  # batched
    assert model.images_encoded == len(space.gallery)
    space.search("一个蓝色的三角形", space.gallery, k=3)
    space.ui_search("一个黄色的星形", 3, None)
    assert model.images_encoded == len(space.gallery)  # later queries encode only their text
    assert model.text_calls == 3

    same_content = app.builtin_gallery()  # another object, same pixels: same key, no encoding
    assert same_content is not space.gallery and same_content.key == space.gallery.key
    space.search("一个红色的圆形", same_content, k=3)
    assert model.images_encoded == len(space.gallery)

    other = app.Gallery.create("other", list(space.gallery.images[:5]), list(space.gallery.captions[:5]))
    space.search("一个红色的圆形", other, k=3)
    assert model.images_encoded == len(space.gallery) + 5


def test_upload_cache_is_keyed_by_file_bytes_and_bounded(app, make_space, tmp_path):
    space = make_space(cache_size=2)
    model = space.model
    first = _png(tmp_path / "a.png", (220, 40, 40))
    space.ui_upload([first])
    space.ui_search("红色", 3, [first])
    assert model.images_encoded == 1
    _png(tmp_path / "a.png", (40, 80, 225))  # same path, new content: must be encoded again
    space.ui_search("红色", 3, [first])
    assert model.images_encoded == 2
    space.search("红色", space.gallery, 3)  # a third gallery evicts the least recently used: the red upload
    _png(tmp_path / "a.png", (220, 40, 40))
    space.ui_search("红色", 3, [first])
    assert model.images_encoded == 2 + len(space.gallery) + 1


def test_concurrent_first_queries_share_one_encoding(make_space):
    from concurrent.futures import ThreadPoolExecutor

    space = make_space(batch_size=64)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda q: space.search(q, space.gallery, 2), ["红色", "绿色", "蓝色", "黄色"]))
    assert space.model.images_encoded == len(space.gallery)
    assert all(len(result.ranked) == 2 for result in results)


# ------------------------------------------------------------------------------------------------ re-ranking


def test_rerank_switch_only_for_models_with_the_hook(app, make_space):
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
    assert len(reranked) == app.RERANK_TOP_K and fusion.model.calls[-1] == (app.RERANK_TOP_K, app.RERANK_TOP_K)
    assert {c for c, _, _ in reranked} == {c for c, _, _ in ranked[: app.RERANK_TOP_K]}
    assert all(1 <= before <= app.RERANK_TOP_K for _, _, before in reranked)

    def rerank_visible(space):
        demo = app.build_demo(space)
        return [b.visible for b in demo.blocks.values() if isinstance(b, gr.Checkbox)]

    assert rerank_visible(plain) == [False, False]
    assert rerank_visible(fusion) == [True, True]


def test_fusion_model_reranks_like_its_own_two_stage_ranking(app, tmp_path):
    """A real (untrained) tiny fusion encoder, loaded like any model: the Space's two orders are the model's."""
    torch.manual_seed(0)
    path = tmp_path / "fusion"
    hf_vlp.create_model("tiny-fusion").save_pretrained(path)
    hf_vlp.processor_for_preset("tiny-fusion").save_pretrained(path)
    model, processor, _ = app.load_model(str(path))
    space = app.VLPSpace(model, processor, app.builtin_gallery(), batch_size=8)
    assert space.can_rerank

    result = space.search("一个红色的圆形", space.gallery, k=6, rerank=True)
    index = space.gallery_index(space.gallery)
    text = space.encode_texts(["一个红色的圆形"])
    first = model.similarity(index.embeddings, text)[1][:, 0].argsort(descending=True, stable=True)[:6]
    scores, rows = model.rank(text, index.embeddings, query_modality="text", k=6, combine=app.RERANK_COMBINE)
    assert [p for p, _ in result.ranked] == index.positions[first].tolist()
    assert [p for p, _ in result.reranked] == index.positions[rows[0]].tolist()
    torch.testing.assert_close(torch.tensor([s for _, s in result.reranked]), scores[0], rtol=1e-4, atol=1e-5)

    captions = list(space.gallery.captions)
    ranked, reranked = space.rank_captions(space.gallery.images[0], captions, rerank=True)
    image = space.encode_images([space.gallery.images[0]])
    scores, rows = model.rank(
        image, space.encode_texts(captions), query_modality="image", k=app.RERANK_TOP_K, combine=app.RERANK_COMBINE
    )
    assert [c for c, _, _ in reranked] == [captions[i] for i in rows[0]]

    items, reranked_items, status = space.ui_search("一个红色的圆形", 4, None, True)
    assert len(items) == len(reranked_items) == 4 and status.startswith("图库：内置示例图库")


# ------------------------------------------------------------------------------------------------ model and gallery


def test_missing_default_model_gives_instructions(app, monkeypatch, tmp_path):
    monkeypatch.delenv(app.ENV_MODEL, raising=False)
    monkeypatch.setattr(app, "DEFAULT_MODEL_DIR", str(tmp_path / "nothing-here"))
    with pytest.raises(app.ModelNotFoundError, match="hf-vlp pretrain --recipe demo"):
        app.resolve_model()
    with pytest.raises(app.ModelNotFoundError, match="Model folder not found"):
        app.resolve_model("./not/a/folder")
    assert app.main(["--model", str(tmp_path / "nothing-here")]) == 1


def test_model_from_argument_env_or_default(app, monkeypatch, tmp_path, untrained_model_dir):
    monkeypatch.delenv(app.ENV_MODEL, raising=False)
    monkeypatch.delenv(app.ENV_REVISION, raising=False)
    monkeypatch.setattr(app, "DEFAULT_MODEL_DIR", str(untrained_model_dir))
    assert app.resolve_model() == (str(untrained_model_dir), None, True)
    monkeypatch.setenv(app.ENV_MODEL, "someone/chinese-vlp")
    monkeypatch.setenv(app.ENV_REVISION, "0123abc")
    assert app.resolve_model() == ("someone/chinese-vlp", "0123abc", False)
    assert app.resolve_model("other/model", "main") == ("other/model", "main", False)


def test_hub_model_is_loaded_at_the_pinned_revision(app, local_hub, untrained_model_dir, tmp_path, caplog):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("user/space-model")
    first = api.upload_folder(repo_id="user/space-model", folder_path=untrained_model_dir)
    torch.manual_seed(1)
    newer = tmp_path / "newer"
    hf_vlp.create_model("tiny").save_pretrained(newer)
    hf_vlp.processor_for_preset("tiny").save_pretrained(newer)
    api.upload_folder(repo_id="user/space-model", folder_path=newer)

    pinned, processor, name = app.load_model("user/space-model", revision=first.oid)
    local, _, _ = app.load_model(str(untrained_model_dir))
    assert name == f"user/space-model@{first.oid}"
    torch.testing.assert_close(pinned.logit_scale, local.logit_scale)
    for (key, a), (_, b) in zip(pinned.state_dict().items(), local.state_dict().items()):
        assert torch.equal(a, b), key
    assert processor(text=["一个红色的圆形"])["input_ids"].shape[0] == 1

    with caplog.at_level(logging.WARNING, logger="hf_vlp.space"):
        latest, _, _ = app.load_model("user/space-model")
    assert "pin a commit" in caplog.text
    expected, _, _ = app.load_model(str(newer))
    for (key, a), (_, b) in zip(latest.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(a, b), key


def test_default_gallery_prefers_argument_then_demo_eval_folder(app, monkeypatch, tmp_path):
    monkeypatch.delenv(app.ENV_GALLERY, raising=False)
    monkeypatch.setattr(app, "DEFAULT_GALLERY_DIR", str(tmp_path / "no-eval-set"))
    assert app.default_gallery().name == "内置示例图库"

    eval_dir = tmp_path / "eval"  # the imagefolder layout of the demo job's eval split
    eval_dir.mkdir()
    rows = [("eval-000000.png", "一个红色的圆形", (220, 40, 40)), ("eval-000001.png", "一个蓝色的星形", (40, 80, 225))]
    for name, _, colour in rows:
        _png(eval_dir / name, colour)
    (eval_dir / "metadata.jsonl").write_text(
        "\n".join(
            json.dumps({"file_name": n, "text": t, "captions": [t, "x"]}, ensure_ascii=False) for n, t, _ in rows
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(app, "DEFAULT_GALLERY_DIR", str(eval_dir))
    gallery = app.default_gallery()
    assert gallery.captions == ("一个红色的圆形", "一个蓝色的星形") and len(gallery) == 2
    assert app.default_gallery(app.BUILTIN_GALLERY).name == "内置示例图库"

    plain = tmp_path / "photos"  # any folder of images: captioned by file name
    plain.mkdir()
    _png(plain / "b.png")
    _png(plain / "a.jpg")
    (plain / "readme.txt").write_text("x")
    monkeypatch.setenv(app.ENV_GALLERY, str(plain))
    assert app.default_gallery().captions == ("a.jpg", "b.png")


def test_build_demo_exposes_the_three_api_endpoints_with_a_shared_queue(app, make_space):
    demo = app.build_demo(make_space())
    api_names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"search", "rank", "classify"} <= api_names
    model_fns = [fn for fn in demo.fns.values() if fn.api_name in {"search", "rank", "classify"}]
    assert {fn.concurrency_id for fn in model_fns} == {"model"}
    assert all(fn.concurrency_limit == app.CONCURRENCY_LIMIT for fn in model_fns)


def test_space_metadata_files(app):
    """The Space header that the Hub reads, the requirements, and no `spaces` package (Spaces have their own)."""
    import yaml

    from tests.spaces.conftest import APP_PATH

    folder = APP_PATH.parent
    header = yaml.safe_load((folder / "README.md").read_text(encoding="utf-8").split("---")[1])
    assert header["sdk"] == "gradio" and (folder / header["app_file"]).is_file()
    assert header["title"] and header["emoji"] and header["models"]
    assert header["sdk_version"].split(".")[0] == gr.__version__.split(".")[0]
    lines = (folder / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = {line.split(">")[0].split("=")[0].strip() for line in lines if line and not line.startswith("#")}
    assert requirements == {"hf-vlp", "gradio"}
    assert not (folder / "__init__.py").exists()


@pytest.mark.slow
def test_large_gallery_stays_interactive(app, make_space):
    """A few thousand images: encoded once in batches, then each query is a text encoding plus a chunked top-k."""
    import time

    gallery = app.builtin_gallery(variants=100)  # 2,000 scenes
    space = make_space(gallery=gallery)
    space.gallery_index(gallery)
    assert space.model.image_calls == math.ceil(len(gallery) / app.ENCODE_BATCH_SIZE)
    started = time.perf_counter()
    for query in ("一个红色的圆形", "一个蓝色的三角形", "一个黄色的星形"):
        items, _, status = space.ui_search(query, 8, None)
        assert len(items) == 8 and "2000 张" in status
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
