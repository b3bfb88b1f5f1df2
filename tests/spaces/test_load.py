"""The Space under load (issue 14 item 5): 40 gradio_client users x 2 requests at once, over 以文搜图, 以图搜图 and
classification, about 40% of them invalid (empty, 500 characters, a text file as the image, a broken PNG).

Zero failed requests (a result image rewritten while served used to cut responses short), every invalid input
answered with its Chinese message, every valid one with its results (thumbnails downloaded whole), and the app still
answering afterwards. The latencies are printed, never asserted (`benchmarks/bench_space_load.py` records them).
Loopback only: the app is served on 127.0.0.1 in a child process.
"""

from __future__ import annotations

import pytest

from benchmarks.bench_space_load import load_requests, run_load, serve, summarize


CLIENTS = 40
PER_CLIENT = 2


@pytest.mark.slow
def test_forty_concurrent_clients_get_every_answer(untrained_model_dir, tmp_path):
    requests = load_requests(CLIENTS * PER_CLIENT, tmp_path)
    assert {r.endpoint for r in requests} == {"/search", "/search_image", "/classify"}
    assert sum(r.expect_message is not None for r in requests) >= CLIENTS * PER_CLIENT // 3
    with serve(str(untrained_model_dir)) as url:
        outcomes = run_load(url, requests, CLIENTS)
        summary = summarize(outcomes)
        print(f"\n{CLIENTS} clients x {PER_CLIENT}: p50 {summary['p50_s']} s, p99 {summary['p99_s']} s")
        assert len(outcomes) == CLIENTS * PER_CLIENT
        assert summary["failed"] == 0 and summary["wrong"] == 0, summary["errors"]
        after = summarize(run_load(url, load_requests(3, tmp_path), 1))  # still alive, still right
        assert after["ok"] == 3, after["errors"]
