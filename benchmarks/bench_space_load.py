"""Benchmark: the Gradio Space under load — many `gradio_client` users at once, a share of them sending bad input.

Each variant is served in its own process on 127.0.0.1 (so the clients' threads do not share the server's GIL), on
the same model and the built-in gallery, and gets the same request list: `--clients` clients (one `gradio_client`
`Client` each, results *downloaded*, as a user's browser fetches the thumbnails) send `--per-client` requests each,
all at once. Per request it records the latency (submit to result, thumbnails included) and the outcome: answered
as expected, answered wrongly (a bad input without its Chinese message, a good one without results), or failed
(an exception in the client: HTTP or protocol error, timeout).

* **reference**: the Space as it was before the package split (`spaces/app.py` at `--reference-ref`, read from git),
  on the workload it knows: `/search` only (a third of the queries empty or 500 characters long).
* **ours**: `hf_vlp.space` (`hf-vlp demo`), the same `/search` workload, then the mixed workload of the load test:
  以文搜图, 以图搜图 and classification, with empty, 500-character and non-image inputs.

    python benchmarks/bench_space_load.py                        # tiny model, 40 clients x 2 requests
    python benchmarks/bench_space_load.py --smoke                # 8 clients x 1 request (CI; numbers mean nothing)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # `python benchmarks/bench_space_load.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common


__all__ = ["Outcome", "Request", "load_requests", "run_load", "serve", "summarize"]

REQUEST_TIMEOUT_S = 180.0
START_TIMEOUT_S = 180.0
EMPTY_MESSAGE = "请输入要搜索的文字"
TOO_LONG_MESSAGE = "太长"
NOT_IMAGE_MESSAGE = "不是可识别的图片文件"


@dataclass(frozen=True)
class Request:
    """One request: the endpoint, its keyword arguments (file inputs by path), and the message a bad one expects."""

    endpoint: str
    inputs: dict[str, Any]
    expect_message: str | None = None  # None: a valid request, which must return results


@dataclass
class Outcome:
    endpoint: str
    valid: bool
    latency_s: float
    status: str  # "ok", "wrong" (answered, but not as expected) or "failed" (an exception)
    detail: str = ""


# ---------------------------------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reference_app(ref: str, folder: Path) -> Path | None:
    """`spaces/app.py` and its sibling as they were at git `ref`, written to `folder`; None when git lacks them."""
    for name in ("app.py", "demo_gallery.py"):
        shown = subprocess.run(
            ["git", "-C", str(common.REPO_ROOT), "show", f"{ref}:spaces/{name}"], capture_output=True, check=False
        )
        if shown.returncode != 0:
            return None
        (folder / name).write_bytes(shown.stdout)
    return folder / "app.py"


@contextlib.contextmanager
def serve(
    model_dir: str, app_file: str | Path | None = None, threads: int = 1, concurrency: int | None = None
) -> Iterator[str]:
    """Serve the Space in a child process on 127.0.0.1 and a free port; yields its URL, stops it on exit.

    `app_file`: a Space `app.py` to run by path (the reference); default `hf_vlp.space` (`python -m` style).
    """
    port = _free_port()
    argv = ["--model", str(model_dir), "--gallery", "builtin", "--host", "127.0.0.1", "--port", str(port)]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    code = f"import sys, torch; torch.set_num_threads({threads}); " + (
        f"import runpy; sys.argv = ['app.py'] + {argv!r}; runpy.run_path({str(app_file)!r}, run_name='__main__')"
        if app_file
        else f"from hf_vlp.space.launch import main; sys.exit(main({argv!r}))"
    )
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"the Space exited with {process.returncode}:\n{output}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                time.sleep(0.5)
            else:
                raise TimeoutError(f"the Space did not start within {START_TIMEOUT_S:.0f} s")
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---------------------------------------------------------------------------------------------------- load
def load_requests(count: int, folder: Path, mixed: bool = True) -> list[Request]:
    """`count` requests cycling through valid and invalid inputs (about 40% invalid); files written to `folder`.

    `mixed=False`: `/search` only (valid, empty, 500 characters), what the reference Space offers.
    """
    from hf_vlp.space import scenes

    shapes = scenes.demo_gallery()
    images = []
    for position in range(0, len(shapes), 3):
        path = folder / f"query-{position}.png"
        shapes[position][0].save(path)
        images.append(str(path))
    notes = folder / "notes.txt"
    notes.write_text("这不是图片", encoding="utf-8")
    broken = folder / "broken.png"
    broken.write_bytes(b"not a png at all")
    captions = [caption for _, caption in shapes]
    cycle = [
        lambda i: Request("/search", {"query": captions[i % len(captions)]}),
        lambda i: Request("/search", {"query": ""}, EMPTY_MESSAGE),
        lambda i: Request("/search", {"query": captions[(i * 7) % len(captions)]}),
        lambda i: Request("/search", {"query": "猫" * 500}, TOO_LONG_MESSAGE),
    ]
    if mixed:
        cycle += [
            lambda i: Request("/search_image", {"image_path": images[i % len(images)]}),
            lambda i: Request("/search_image", {"image_path": str(notes)}, NOT_IMAGE_MESSAGE),
            lambda i: Request("/classify", {"image_path": images[(i * 3) % len(images)]}),
            lambda i: Request("/classify", {"image_path": str(broken)}, NOT_IMAGE_MESSAGE),
            lambda i: Request("/search_image", {"image_path": images[(i * 5) % len(images)]}),
        ]
    return [cycle[i % len(cycle)](i) for i in range(count)]


def _check(request: Request, result: Any) -> tuple[str, str]:
    """`("ok", "")` when the answer is what the request should get, else `("wrong", why)`."""
    status = str(result[-1]) if isinstance(result, (list, tuple)) else str(result)
    if request.expect_message is not None:
        return (
            ("ok", "") if request.expect_message in status else ("wrong", f"no '{request.expect_message}': {status}")
        )
    if status.startswith("⚠️"):
        return "wrong", status
    first = result[0]
    has_results = bool(first) if request.endpoint != "/classify" else bool(first and first.get("confidences"))
    if request.endpoint != "/classify" and has_results:
        has_results = all(Path(item["image"]).is_file() for item in first)  # the thumbnails were downloaded whole
    return ("ok", "") if has_results else ("wrong", f"no results: {status}")


def run_load(
    url: str,
    requests: list[Request],
    clients: int,
    positional_search: bool = False,
    timeout: float = REQUEST_TIMEOUT_S,
) -> list[Outcome]:
    """Send `requests` from `clients` gradio_client clients at once (client i takes every clients-th request).

    Every client is created first, then a barrier releases them together. `positional_search` passes `/search` its
    four inputs positionally (the reference Space has no defaults for them).
    """
    from gradio_client import Client, handle_file

    download_root = Path(tempfile.mkdtemp(prefix="space-load-"))
    barrier = threading.Barrier(clients)

    def user(index: int) -> list[Outcome]:
        client = Client(
            url,
            verbose=False,
            download_files=str(download_root / f"client-{index}"),
            httpx_kwargs={"timeout": timeout},  # as a browser waits: uploads and downloads queue behind the load
        )
        barrier.wait(timeout=timeout)
        outcomes = []
        for request in requests[index::clients]:
            inputs = {
                key: handle_file(value) if key == "image_path" else value for key, value in request.inputs.items()
            }
            started = time.perf_counter()
            try:
                if positional_search and request.endpoint == "/search":
                    job = client.submit(inputs["query"], 8, None, False, api_name="/search")
                else:
                    job = client.submit(**inputs, api_name=request.endpoint)
                result = job.result(timeout=timeout)
                status, detail = _check(request, result)
            except Exception as error:  # noqa: BLE001 - a failed request is what is being counted
                status, detail = "failed", f"{type(error).__name__}: {error}"
            outcomes.append(
                Outcome(
                    request.endpoint, request.expect_message is None, time.perf_counter() - started, status, detail
                )
            )
        return outcomes

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(user, range(clients)))
    return [outcome for outcomes in results for outcome in outcomes]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    latencies = [o.latency_s for o in outcomes]
    return {
        "requests": len(outcomes),
        "invalid_inputs": sum(not o.valid for o in outcomes),
        "ok": sum(o.status == "ok" for o in outcomes),
        "wrong": sum(o.status == "wrong" for o in outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(_percentile(latencies, 0.99), 3),
        "max_s": round(max(latencies), 3),
        "errors": sorted({o.detail[:200] for o in outcomes if o.status != "ok"})[:10],
    }


def _tiny_model(folder: Path) -> str:
    import torch

    import hf_vlp

    torch.manual_seed(0)
    hf_vlp.create_model("tiny").save_pretrained(folder)
    hf_vlp.processor_for_preset("tiny").save_pretrained(folder)
    return str(folder)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: a fresh tiny preset)")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--server-threads", type=int, default=1, help="torch threads of the served app")
    parser.add_argument("--reference-ref", default="7579aa2", help="git revision of the pre-split spaces/app.py")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="8 clients x 1 request, no reference")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.per_client, args.no_reference = 8, 1, True
    output = common.output_path(args, "space_load")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = args.model or _tiny_model(scratch / "model")
        count = args.clients * args.per_client
        search_only = load_requests(count, scratch, mixed=False)
        mixed = load_requests(count, scratch, mixed=True)
        runs: dict[str, dict[str, Any]] = {}
        reference_app = None if args.no_reference else _reference_app(args.reference_ref, scratch)
        if reference_app is not None:
            with serve(model, reference_app, args.server_threads) as url:
                runs["reference /search"] = summarize(run_load(url, search_only, args.clients, positional_search=True))
        with serve(model, None, args.server_threads) as url:
            runs["ours /search"] = summarize(run_load(url, search_only, args.clients))
            runs["ours mixed"] = summarize(run_load(url, mixed, args.clients))

    rows = [
        [name, r["requests"], r["invalid_inputs"], r["failed"], r["wrong"], r["p50_s"], r["p99_s"]]
        for name, r in runs.items()
    ]
    common.print_table(
        f"{args.clients} clients x {args.per_client} requests, all at once",
        ["variant", "requests", "invalid", "failed", "wrong", "p50 s", "p99 s"],
        rows,
    )
    if "reference /search" in runs:
        ref, ours = runs["reference /search"], runs["ours /search"]
        print(f"p50 ratio (reference / ours): {ref['p50_s'] / ours['p50_s']:.2f}x")
        print(f"p99 ratio (reference / ours): {ref['p99_s'] / ours['p99_s']:.2f}x")
    for name, r in runs.items():
        for error in r["errors"]:
            print(f"  {name}: {error}")
    report = {
        "benchmark": "space_load",
        "command": "python benchmarks/bench_space_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": common.machine_info("cpu"),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "runs": runs,
    }
    common.write_report(output, report)
    return report


if __name__ == "__main__":
    main()
