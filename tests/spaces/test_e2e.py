"""End-to-end tests of the Space: the real app served on loopback, driven by headless Chromium and gradio_client.

The app runs in this process (`launch_demo(..., prevent_thread_lock=True)`) on a free port, with the tiny model that
`conftest.py` trains on the built-in scenes, serving an index of those scenes built with `hf-vlp index build`'s
Python API, so the expected image really ranks first, and 以文搜图 / 以图搜图 go through the index.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from hf_vlp.space import launch, scenes, ui
from tests.spaces.conftest import build_scene_index


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # generous: the test machine is shared


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(trained_model_dir, scene_folder, tmp_path_factory):
    """The app, launched the way `hf-vlp demo --index DIR` launches it, on 127.0.0.1 and a free port."""
    index = build_scene_index(trained_model_dir, scene_folder, tmp_path_factory.mktemp("e2e-index") / "scenes")
    demo = launch.launch_demo(
        model=str(trained_model_dir),
        host="127.0.0.1",
        port=_free_port(),
        gallery="builtin",
        index=index,
        prevent_thread_lock=True,
    )
    try:
        yield demo.local_url
    finally:
        demo.close()


def _wait_for_text(page, selector: str, text: str) -> str:
    page.wait_for_function(
        "([selector, text]) => (document.querySelector(selector)?.innerText || '').includes(text)",
        arg=[selector, text],
        timeout=TIMEOUT_MS,
    )
    return page.locator(selector).inner_text()


@pytest.mark.browser
@pytest.mark.slow
def test_browser_search_classify_and_bad_upload(served, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    blue_triangle = tmp_path / "blue_triangle.png"
    scenes.render_scene("蓝色", "三角形").save(blue_triangle)
    notes = tmp_path / "notes.txt"
    notes.write_text("这不是图片", encoding="utf-8")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    screenshot = tmp_path / "space_search.png"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, locale="zh-CN")
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(served)

            # 以文搜图 in the index: type a Chinese query, submit with Enter, expect the red circle first.
            query = page.locator("#t2i-query textarea")
            query.fill("一个红色的圆形")
            query.press("Enter")
            status = _wait_for_text(page, "#t2i-status", "用时")
            assert "索引：scenes（20 张）" in status
            results = page.locator("#t2i-results img")
            results.first.wait_for()
            assert results.count() == ui.DEFAULT_TOP_K
            first = results.first.get_attribute("alt")
            assert first.startswith("1 · ") and first.endswith("一个红色的圆形"), first
            page.wait_for_function(
                "() => [...document.querySelectorAll('#t2i-results img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=screenshot, full_page=True)

            # 以图搜图 in the index: the uploaded blue triangle finds its own scene first.
            page.get_by_role("tab", name="以图搜图").click()
            page.locator("#i2i-image input[type=file]").set_input_files(blue_triangle)
            page.locator("#i2i-image img").first.wait_for()
            page.locator("#i2i-submit").click()
            assert "索引：scenes（20 张）" in _wait_for_text(page, "#i2i-status", "用时")
            similar = page.locator("#i2i-results img")
            similar.first.wait_for()
            first = similar.first.get_attribute("alt")
            assert first.startswith("1 · 1.000 · ") and first.endswith("一个蓝色的三角形"), first
            page.screenshot(path=tmp_path / "space_image_search.png", full_page=True)

            # 以图搜文: the uploaded blue triangle's own caption comes first.
            page.get_by_role("tab", name="以图搜文").click()
            page.locator("#i2t-image input[type=file]").set_input_files(blue_triangle)
            page.locator("#i2t-image img").first.wait_for()
            page.locator("#i2t-captions textarea").fill(
                "一个红色的圆形\n一个蓝色的三角形\n一个紫色的三角形\n一个蓝色的星形"
            )
            page.locator("#i2t-submit").click()
            assert "最匹配的文本：一个蓝色的三角形" in _wait_for_text(page, "#i2t-status", "最匹配的文本")

            # 零样本分类: labels with both kinds of comma, an edited template.
            page.get_by_role("tab", name="零样本分类").click()
            page.locator("#zs-image input[type=file]").set_input_files(blue_triangle)
            page.locator("#zs-image img").first.wait_for()
            page.locator("#zs-labels textarea").fill("红色的圆形，绿色的正方形,蓝色的三角形，黄色的星形")
            page.locator("#zs-template textarea").fill("一个{}")
            page.locator("#zs-submit").click()
            assert "预测类别：蓝色的三角形" in _wait_for_text(page, "#zs-status", "预测类别")
            assert page.locator("#zs-probs").inner_text().split("\n")[1] == "蓝色的三角形"  # heading, then top label
            page.screenshot(path=tmp_path / "space_zero_shot.png", full_page=True)

            # A file that only pretends to be an image: a Chinese message, no stack trace.
            page.locator("#zs-image input[type=file]").set_input_files(broken)
            page.wait_for_timeout(500)
            page.locator("#zs-submit").click()
            message = _wait_for_text(page, "#zs-status", "broken.png")
            assert "不是可识别的图片文件" in message and "Traceback" not in page.content()

            # A non-image uploaded as the search gallery.
            page.get_by_role("tab", name="以文搜图").click()
            page.locator("#t2i-files input[type=file]").set_input_files(notes)
            message = _wait_for_text(page, "#t2i-status", "notes.txt")
            assert "图库里没有可用的图片" in message and "不是可识别的图片文件" in message
            page.screenshot(path=tmp_path / "space_bad_upload.png", full_page=True)
        finally:
            browser.close()
    print(f"\nscreenshots: {screenshot} (and space_zero_shot.png, space_bad_upload.png beside it)")
    assert screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_concurrent_queries_through_gradio_client(served):
    """Eight users at once, through the queue (two at a time on the model): every answer correct, in bounded time.
    Only the query is passed: every other input of `/search` is optional for a client."""
    from gradio_client import Client

    captions = [caption for _, caption in scenes.demo_gallery()]
    queries = captions[::5] + captions[2::5]  # 8 different scenes
    client = Client(served, verbose=False, download_files=False)
    started = time.perf_counter()
    jobs = [client.submit(query=query, top_k=3, api_name="/search") for query in queries]
    try:
        answers = [job.result(timeout=120) for job in jobs]
    except FutureTimeout:
        pytest.fail("a query got no answer within 120 s")
    elapsed = time.perf_counter() - started
    assert len(answers) == len(queries) == 8
    for query, (items, reranked, status) in zip(queries, answers):
        assert len(items) == 3 and reranked == []
        assert items[0]["caption"].endswith(query), (query, items[0]["caption"])
        assert status.startswith("索引：scenes（20 张）")
    assert elapsed < 60, f"8 concurrent queries took {elapsed:.1f} s"
