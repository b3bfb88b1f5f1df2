"""The Space's Gradio UI over a `VLPSpace`: four tabs, request handlers that never raise, one shared model queue.

Every endpoint is callable from `gradio_client` with only its required argument (`predict(query=...,
api_name="/search")`): each optional input has an initial value or a `None` default in its handler's signature,
which is how Gradio decides that a client may leave it out.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr

from hf_vlp import DEFAULT_ZERO_SHOT_PROMPT

from . import scenes
from .engine import RERANK_TOP_K, SearchResult, VLPSpace
from .galleries import ThumbnailStore, upload_gallery
from .inputs import (
    MAX_TOP_K,
    MAX_UPLOAD_IMAGES,
    UserInputError,
    fill_template,
    parse_captions,
    parse_labels,
    require_image,
)


__all__ = ["CONCURRENCY_LIMIT", "DEFAULT_LABELS", "DEFAULT_TOP_K", "SpaceHandlers", "build_demo"]

logger = logging.getLogger("hf_vlp.space")

DEFAULT_LABELS = "圆形，正方形，三角形，星形"
DEFAULT_TOP_K = 8
CONCURRENCY_LIMIT = 2  # requests run at once on the model; the rest wait in Gradio's queue
QUEUE_MAX_SIZE = 256
FAILURE_MESSAGE = "处理请求时出错了，请换一张图片或换一种说法再试。"


def _name_list(names: list[str], limit: int = 5) -> str:
    shown = "、".join(f"「{name}」" for name in names[:limit])
    return shown + (f"等 {len(names)} 个文件" if len(names) > limit else "")


def _skipped_note(skipped: list[str]) -> str:
    if not skipped:
        return ""
    note = f"已跳过 {len(skipped)} 个无法识别的文件：{_name_list(skipped)}。"
    gr.Warning(note, title="提示")
    return "\n\n⚠️ " + note


def _failure(error: Exception) -> str:
    """The status text of a failed request; user mistakes are shown as they are, anything else is logged."""
    if isinstance(error, UserInputError):
        message = str(error)
    else:
        logger.exception("request failed")
        message = FAILURE_MESSAGE
    gr.Warning(message, title="提示")
    return "⚠️ " + message


class SpaceHandlers:
    """Gradio handlers over one `VLPSpace`: each returns its outputs, and turns any failure into a status line."""

    def __init__(self, space: VLPSpace):
        self.space = space

    def _status(self, result: SearchResult, started: float) -> str:
        kind = "索引" if result.source is self.space.index and result.source is not None else "图库"
        return (
            f"{kind}：{result.source.name}（{result.searched} 张）· 用时 {time.perf_counter() - started:.2f} 秒"
            + _skipped_note(result.skipped)
        )

    def search(self, query: str | None, top_k: float = DEFAULT_TOP_K, files: list[str] | None = None, rerank=False):
        """以文搜图: (result gallery, re-ranked gallery, status markdown)."""
        try:
            started = time.perf_counter()
            gallery = upload_gallery(files) if files else None
            result = self.space.search(query, gallery, int(top_k), rerank=bool(rerank))
            reranked = self.space.result_items(result.source, result.reranked) if result.reranked is not None else []
            ranked = self.space.result_items(result.source, result.ranked, result.match)
            return ranked, reranked, self._status(result, started)
        except Exception as error:  # noqa: BLE001 - every failure becomes a message, never a stack trace
            return [], [], _failure(error)

    def search_image(self, image_path: str | None, top_k: float = DEFAULT_TOP_K):
        """以图搜图: (result gallery, status markdown)."""
        try:
            started = time.perf_counter()
            result = self.space.search_image(require_image(image_path), None, int(top_k))
            return self.space.result_items(result.source, result.ranked), self._status(result, started)
        except Exception as error:  # noqa: BLE001
            return [], _failure(error)

    def upload(self, files: list[str] | None = None) -> str:
        """The gallery upload: check and encode the uploads now, so that searching is instant."""
        if not files:
            source = self.space.default_source
            return f"{'索引' if source is self.space.index else '图库'}：{source.name}（{len(source)} 张）"
        try:
            index = self.space.gallery_index(upload_gallery(files))
            return f"已载入上传的 {len(index.positions)} 张图片作为图库。" + _skipped_note(index.skipped)
        except Exception as error:  # noqa: BLE001
            return _failure(error)

    def rank_captions(self, image_path: str | None, captions_text: str | None = None, rerank=False):
        """以图搜文: (ranking rows, re-ranked rows, status markdown)."""
        try:
            image = require_image(image_path)
            ranked, reranked = self.space.rank_captions(image, parse_captions(captions_text), rerank=bool(rerank))
            rows = [[rank, text, round(sim, 4), round(prob, 4)] for rank, (text, sim, prob) in enumerate(ranked, 1)]
            match = self.space.match_probabilities([image], [text for text, _, _ in ranked])
            if match is not None:  # the 匹配概率 column: whether each caption fits, not just which fits best
                rows = [row + [round(p, 4)] for row, p in zip(rows, match)]
            rerank_rows = [
                [rank, text, round(score, 4), before] for rank, (text, score, before) in enumerate(reranked or [], 1)
            ]
            return rows, rerank_rows, f"最匹配的文本：**{(reranked or ranked)[0][0]}**"
        except Exception as error:  # noqa: BLE001
            return [], [], _failure(error)

    def classify(self, image_path: str | None, labels_text: str | None = DEFAULT_LABELS, template: str | None = None):
        """零样本分类: (label probabilities, status markdown)."""
        try:
            image = require_image(image_path)
            template = template or DEFAULT_ZERO_SHOT_PROMPT
            probs = self.space.classify(image, parse_labels(labels_text), template)
            best = max(probs, key=probs.get)
            match = self.space.match_probabilities([image], [fill_template(template, best)])
            note = f" · 匹配概率 {match[0]:.0%}" if match is not None else ""
            return probs, f"预测类别：**{best}**（{probs[best]:.1%}）{note}"
        except Exception as error:  # noqa: BLE001
            return None, _failure(error)


def _query_image(elem_id: str) -> gr.Image:
    """An image input that hands an unreadable upload to the app instead of failing inside Gradio.

    Gradio's own preprocessing opens the file with PIL and, on a broken file, fails with a bare "Error" before the
    app runs; here the uploaded file's path is passed on instead, and `load_image` turns it into the same Chinese
    message as every other bad input. (Wrapping this one instance's `preprocess`, not subclassing: Gradio writes a
    `.pyi` stub next to any module that defines a component subclass.)
    """
    image = gr.Image(label="图片", type="filepath", image_mode=None, elem_id=elem_id)
    stock_preprocess = image.preprocess

    def preprocess(payload):
        try:
            return stock_preprocess(payload)
        except Exception:  # noqa: BLE001 - PIL raises many kinds of errors on bad files
            return payload.path

    image.preprocess = preprocess
    return image


SUBTITLE = (
    "Chinese vision-language demo: search images with Chinese text or with an image, rank captions for an image, "
    "and classify images zero-shot with an [hf-vlp](https://github.com/hf-vlp/hf-vlp) model."
)


def build_demo(space: VLPSpace, concurrency_limit: int = CONCURRENCY_LIMIT) -> gr.Blocks:
    """The Gradio UI: four tabs over one `VLPSpace`, examples prefilled, re-ranking only for fusion models.

    Every event that runs the model shares one concurrency pool, so at most `concurrency_limit` requests use it at
    once whichever tabs they come from; the others wait in the queue (and see their place in it).
    """
    handlers = SpaceHandlers(space)
    model_event = {"concurrency_id": "model", "concurrency_limit": concurrency_limit}
    shapes = scenes.demo_gallery()
    example_images = [shapes[i][0] for i in (0, 5, 10, 15)]  # four colours, four shapes
    example_captions = "\n".join(caption for _, caption in shapes[::3])
    source = space.default_source
    source_line = f"{'索引' if source is space.index else '图库'}：{source.name}（{len(source)} 张）"
    with gr.Blocks(title="hf-vlp 中文图文检索演示", analytics_enabled=False) as demo:
        # Thumbnails go straight into Gradio's cache folder: served from there as they are, never copied.
        space.thumbnails = ThumbnailStore(Path(demo.GRADIO_CACHE) / "hf-vlp-thumbnails")
        gr.Markdown(f"# hf-vlp 中文图文检索演示\n{SUBTITLE}\n\n模型：`{space.model_name}`")
        with gr.Tab("以文搜图", id="t2i"):
            with gr.Row():
                with gr.Column(scale=1):
                    query = gr.Textbox(label="搜索文字", placeholder="例如：一个红色的圆形", elem_id="t2i-query")
                    top_k = gr.Slider(1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="返回数量")
                    files = gr.File(
                        label=f"上传图片作为图库（可选，最多 {MAX_UPLOAD_IMAGES} 张）",
                        file_count="multiple",
                        type="filepath",
                        elem_id="t2i-files",
                    )
                    t2i_rerank = gr.Checkbox(label="用交叉编码器重排序搜索结果（融合模型）", visible=space.can_rerank)
                    search_button = gr.Button("搜索", variant="primary", elem_id="t2i-submit")
                    gr.Examples(
                        [["一个红色的圆形"], ["一个蓝色的三角形"], ["一个黄色的星形"]], inputs=[query], label="示例"
                    )
                with gr.Column(scale=2):
                    t2i_status = gr.Markdown(source_line, elem_id="t2i-status")
                    results = gr.Gallery(
                        label="搜索结果（对比相似度）", columns=4, height="auto", elem_id="t2i-results"
                    )
                    reranked = gr.Gallery(
                        label="交叉编码器重排序（ITM 分数 + 对比相似度）",
                        columns=4,
                        height="auto",
                        visible=space.can_rerank,
                        elem_id="t2i-reranked",
                    )
            search_args = {
                "inputs": [query, top_k, files, t2i_rerank],
                "outputs": [results, reranked, t2i_status],
                **model_event,
            }
            query.submit(handlers.search, **search_args, api_name="search")
            search_button.click(handlers.search, **search_args, api_visibility="private")
            files.change(handlers.upload, [files], [t2i_status], api_visibility="private", **model_event)

        with gr.Tab("以图搜图", id="i2i"):
            with gr.Row():
                with gr.Column(scale=1):
                    i2i_image = _query_image("i2i-image")
                    i2i_top_k = gr.Slider(1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="返回数量")
                    i2i_button = gr.Button("以图搜图", variant="primary", elem_id="i2i-submit")
                    gr.Examples([[image] for image in example_images], inputs=[i2i_image], label="示例")
                with gr.Column(scale=2):
                    i2i_status = gr.Markdown(f"上传图片，在{source_line}中找相似的图片。", elem_id="i2i-status")
                    i2i_results = gr.Gallery(
                        label="相似图片（图像嵌入余弦相似度）", columns=4, height="auto", elem_id="i2i-results"
                    )
            i2i_button.click(
                handlers.search_image,
                [i2i_image, i2i_top_k],
                [i2i_results, i2i_status],
                api_name="search_image",
                **model_event,
            )

        with gr.Tab("以图搜文", id="i2t"):
            with gr.Row():
                with gr.Column():
                    i2t_image = _query_image("i2t-image")
                    captions = gr.Textbox(
                        label="候选文本（每行一条）", value=example_captions, lines=8, elem_id="i2t-captions"
                    )
                    i2t_rerank = gr.Checkbox(
                        label=f"用交叉编码器重排序前 {RERANK_TOP_K} 条文本（融合模型）", visible=space.can_rerank
                    )
                    rank_button = gr.Button("排序", variant="primary", elem_id="i2t-submit")
                    gr.Examples([[image] for image in example_images], inputs=[i2t_image], label="示例")
                with gr.Column():
                    i2t_status = gr.Markdown("上传图片，按与图片的匹配程度给候选文本排序。", elem_id="i2t-status")
                    headers = ["排名", "文本", "相似度", "概率"] + (["匹配概率"] if space.can_match else [])
                    ranking = gr.Dataframe(headers=headers, interactive=False)
                    rerank_table = gr.Dataframe(
                        headers=["排名", "文本", "重排序得分", "原排名"],
                        label="交叉编码器重排序",
                        interactive=False,
                        visible=space.can_rerank,
                    )
            rank_button.click(
                handlers.rank_captions,
                [i2t_image, captions, i2t_rerank],
                [ranking, rerank_table, i2t_status],
                api_name="rank",
                **model_event,
            )

        with gr.Tab("零样本分类", id="zero-shot"):
            with gr.Row():
                with gr.Column():
                    zs_image = _query_image("zs-image")
                    labels = gr.Textbox(label="类别（用逗号分隔）", value=DEFAULT_LABELS, elem_id="zs-labels")
                    template = gr.Textbox(
                        label="提示模板（{} 处填入类别）", value=DEFAULT_ZERO_SHOT_PROMPT, elem_id="zs-template"
                    )
                    classify_button = gr.Button("分类", variant="primary", elem_id="zs-submit")
                    gr.Examples(
                        [
                            [example_images[0], DEFAULT_LABELS, "一个红色的{}"],
                            [example_images[1], "红色的圆形，绿色的正方形，蓝色的三角形，黄色的星形", "一个{}"],
                        ],
                        inputs=[zs_image, labels, template],
                        label="示例",
                    )
                with gr.Column():
                    zs_status = gr.Markdown("上传图片并填写类别。", elem_id="zs-status")
                    probabilities = gr.Label(label="各类别概率", num_top_classes=10, elem_id="zs-probs")
            classify_button.click(
                handlers.classify,
                [zs_image, labels, template],
                [probabilities, zs_status],
                api_name="classify",
                **model_event,
            )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=QUEUE_MAX_SIZE)
    return demo
