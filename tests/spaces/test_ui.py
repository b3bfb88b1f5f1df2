"""Unit tests of the Space's Gradio layer (`hf_vlp.space.ui`): handlers that never raise, endpoints, Space files."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import pytest

from hf_vlp.space import ui
from tests.spaces.conftest import WithReranker, png


SPACE_FOLDER = Path(ui.__file__).parent / "space_folder"
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_handlers_turn_bad_input_into_chinese_status(make_space, tmp_path):
    handlers = ui.SpaceHandlers(make_space())
    notes = tmp_path / "notes.txt"
    notes.write_text("hello", encoding="utf-8")
    with pytest.warns(UserWarning):  # gr.Warning outside a request falls back to warnings.warn
        results, reranked, status = handlers.search("   ")
    assert (results, reranked) == ([], []) and status == "⚠️ 请输入要搜索的文字。"
    with pytest.warns(UserWarning):
        assert "太长（500 个字）" in handlers.search("猫" * 500)[2]
    with pytest.warns(UserWarning):
        status = handlers.upload([str(notes)])
    assert "图库里没有可用的图片" in status and "notes.txt" in status
    with pytest.warns(UserWarning):
        assert handlers.classify(None, "猫", "{}")[1] == "⚠️ 请先上传一张图片。"
    with pytest.warns(UserWarning):
        assert "不是可识别的图片文件" in handlers.classify(str(notes), "猫", "{}")[1]
    with pytest.warns(UserWarning):
        assert handlers.search_image(None) == ([], "⚠️ 请先上传一张图片。")
    with pytest.warns(UserWarning):
        assert "「notes.txt」不是可识别的图片文件" in handlers.search_image(str(notes))[1]
    image = png(tmp_path / "red.png")
    with pytest.warns(UserWarning):
        assert "请输入至少一个类别名称" in handlers.classify(image, " ， ", "{}")[1]
    with pytest.warns(UserWarning):
        assert "提示模板需要包含 {}" in handlers.classify(image, "猫", "一张照片")[1]
    with pytest.warns(UserWarning):
        assert "请输入候选文本" in handlers.rank_captions(image, "")[2]


def test_handlers_answer_with_only_their_required_input(make_space, tmp_path):
    handlers = ui.SpaceHandlers(make_space())
    items, reranked, status = handlers.search("一个红色的圆形")
    assert len(items) == ui.DEFAULT_TOP_K and reranked == [] and status.startswith("图库：内置示例图库（20 张）")
    assert all(Path(path).is_file() and label.startswith(f"{rank} · ") for rank, (path, label) in enumerate(items, 1))
    similar, status = handlers.search_image(png(tmp_path / "red.png", (220, 40, 40)))
    assert len(similar) == ui.DEFAULT_TOP_K and "图库：内置示例图库" in status
    probs, status = handlers.classify(png(tmp_path / "blue.png", (40, 80, 225)))
    assert list(probs) == ["圆形", "正方形", "三角形", "星形"] and status.startswith("预测类别")


def test_upload_status_names_skipped_files(make_space, tmp_path):
    handlers = ui.SpaceHandlers(make_space())
    bad = tmp_path / "report.pdf"
    bad.write_bytes(b"%PDF-1.4 not an image")
    with pytest.warns(UserWarning):
        status = handlers.upload([png(tmp_path / "a.png"), str(bad), png(tmp_path / "b.png", (1, 2, 3))])
    assert status.startswith("已载入上传的 2 张图片") and "已跳过 1 个无法识别的文件：「report.pdf」" in status


def test_unexpected_errors_are_logged_not_shown(make_space, monkeypatch, caplog):
    space = make_space()

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(space, "search", broken)
    with caplog.at_level(logging.ERROR, logger="hf_vlp.space"), pytest.warns(UserWarning):
        _, _, status = ui.SpaceHandlers(space).search("一个红色的圆形")
    assert status.startswith("⚠️ 处理请求时出错了") and "CUDA" not in status
    assert "CUDA out of memory" in caplog.text  # the operator still sees what happened


def test_rerank_switch_only_for_models_with_the_hook(make_space):
    def rerank_visible(space):
        demo = ui.build_demo(space)
        return [b.visible for b in demo.blocks.values() if isinstance(b, gr.Checkbox)]

    assert rerank_visible(make_space()) == [False, False]
    assert rerank_visible(make_space(wrapper=WithReranker)) == [True, True]


def test_endpoints_share_one_queue_and_need_only_their_main_input(make_space):
    demo = ui.build_demo(make_space())
    endpoints = {"search", "search_image", "rank", "classify"}
    api_names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert endpoints <= api_names
    model_fns = [fn for fn in demo.fns.values() if fn.api_name in endpoints]
    assert {fn.concurrency_id for fn in model_fns} == {"model"}
    assert all(fn.concurrency_limit == ui.CONCURRENCY_LIMIT for fn in model_fns)
    info = demo.get_api_info()["named_endpoints"]
    required = {
        name: [p["parameter_name"] for p in info[f"/{name}"]["parameters"] if not p["parameter_has_default"]]
        for name in endpoints
    }
    assert required == {
        "search": ["query"],
        "search_image": ["image_path"],
        "rank": ["image_path"],
        "classify": ["image_path"],
    }


def test_space_folder_files():
    """The Space header that the Hub reads, the requirements, the thin entry, and `spaces/` pointing at them."""
    import yaml

    header = yaml.safe_load((SPACE_FOLDER / "README.md").read_text(encoding="utf-8").split("---")[1])
    assert header["sdk"] == "gradio" and (SPACE_FOLDER / header["app_file"]).is_file()
    assert header["title"] and header["emoji"] and header["models"] and len(header["short_description"]) <= 60
    assert header["sdk_version"].split(".")[0] == gr.__version__.split(".")[0]
    lines = (SPACE_FOLDER / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = {line.split(">")[0].split("=")[0].strip() for line in lines if line and not line.startswith("#")}
    assert requirements == {"hf-vlp", "gradio"}
    entry = (SPACE_FOLDER / "app.py").read_text(encoding="utf-8")
    assert "from hf_vlp.space.launch import main" in entry and len(entry.splitlines()) < 20
    assert (REPO_ROOT / "spaces").resolve() == SPACE_FOLDER.resolve()
    assert not (SPACE_FOLDER / "__init__.py").exists()  # never a `spaces` package: Spaces ship their own


def test_match_probability_shown_when_the_model_is_calibrated(tmp_path):
    """匹配概率 next to results, captions and the predicted class, exactly the model's `match_probability`."""
    import torch

    import hf_vlp
    from hf_vlp.space import VLPSpace, builtin_gallery

    torch.manual_seed(0)
    model = hf_vlp.create_model("tiny").eval()
    processor = hf_vlp.processor_for_preset("tiny")
    space = VLPSpace(model, processor, builtin_gallery())
    assert not space.can_match and space.search("一个红色的圆形", k=2).match is None
    model.config.match_calibration = {"scale": 8.0, "bias": -1.0}
    assert space.can_match

    result = space.search("一个红色的圆形", k=3)
    images = [space.gallery.load(p) for p, _ in result.ranked]
    batch = processor(text=["一个红色的圆形"], images=images)
    expected = model.match_probability(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    torch.testing.assert_close(torch.tensor(result.match), expected.float(), rtol=1e-4, atol=1e-5)

    handlers = ui.SpaceHandlers(space)
    items, _, _ = handlers.search("一个红色的圆形", 3)
    assert [label.split(" · ")[2] for _, label in items] == [f"匹配概率 {p:.0%}" for p in result.match]
    image = png(tmp_path / "red.png", (220, 40, 40))
    rows, _, _ = handlers.rank_captions(image, "一个红色的圆形\n一个蓝色的星形")
    assert all(len(row) == 5 and 0.0 <= row[4] <= 1.0 for row in rows)
    _, status = handlers.classify(image, "圆形，星形", "一个红色的{}")
    assert "匹配概率" in status
    ranking = [b for b in ui.build_demo(space).blocks.values() if isinstance(b, gr.Dataframe)][0]
    assert ranking.headers[-1] == "匹配概率"


def test_demo_on_a_port_in_use_says_so_in_one_line(untrained_model_dir, capsys):
    import socket

    from hf_vlp.space import launch

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [
            "--model",
            str(untrained_model_dir),
            "--gallery",
            "builtin",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        assert launch.main(argv, prog="hf-vlp demo") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"hf-vlp demo: cannot serve on 127.0.0.1:{port}") and "--port" in last
