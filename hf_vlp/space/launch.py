"""Starting the Space: `hf-vlp demo [...]`, `python app.py [...]` on a Hugging Face Space, or `launch_demo(...)`.

The model comes from `--model` / `--revision`, else the Space variables `HF_VLP_MODEL` / `HF_VLP_REVISION`, else the
demo job's output; the searched images from `--index DIR` (a built `hf-vlp index`), else `--gallery` / the demo
eval set / the built-in scenes. A missing model, index or a port in use is one line naming the fix, exit status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence

from .galleries import BUILTIN_GALLERY, ENV_GALLERY, default_gallery
from .loading import DEFAULT_MODEL_DIR, ENV_MODEL, ENV_REVISION, ModelNotFoundError, load_model


__all__ = ["ENV_INDEX", "SERVER_MAX_FILE_SIZE", "SpaceStartError", "create_space", "launch_demo", "main"]

logger = logging.getLogger("hf_vlp.space")

ENV_INDEX = "HF_VLP_INDEX"
SERVER_MAX_FILE_SIZE = "50mb"  # Gradio's own hard cap on an upload; the app's limits give the Chinese message first


class SpaceStartError(RuntimeError):
    """The Space cannot start (no model, unreadable index, port taken): the message says what to do."""


def create_space(
    model: str | None = None,
    revision: str | None = None,
    gallery: str | os.PathLike | None = None,
    index: str | os.PathLike | None = None,
):
    """Load the model, the index (if any) and the default gallery, and encode the gallery once, so that the first
    query is as fast as the rest."""
    from .engine import VLPSpace

    index = index or os.environ.get(ENV_INDEX) or None
    if index is not None and not os.path.isdir(index):  # before minutes of model loading
        raise SpaceStartError(f"index folder not found: {index} (build one with `hf-vlp index build`)")
    vlp_model, processor, description = load_model(model, revision)
    try:
        default = default_gallery(gallery)
    except FileNotFoundError as error:
        raise SpaceStartError(
            f"{error}: pass an image folder with --gallery, or --gallery {BUILTIN_GALLERY}"
        ) from error
    space = VLPSpace(vlp_model, processor, default, model_name=description)
    if index is not None:
        from .indexed import IndexGallery, IndexOpenError

        try:
            space.index = IndexGallery.open(index, space)
        except IndexOpenError as error:
            raise SpaceStartError(str(error)) from error
    started = time.perf_counter()
    space.gallery_index(space.gallery)
    logger.info(
        "Encoded %s (%d images) in %.1f s", space.gallery.name, len(space.gallery), time.perf_counter() - started
    )
    return space


def _check_port_free(host: str | None, port: int | None) -> None:
    """Refuse a taken port before minutes of model loading (Gradio finds out only when it starts serving). Without
    a port Gradio picks a free one itself (7860 upwards), so there is nothing to check."""
    port = port or (int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None)
    if port is None:
        return
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is not "in use"
        try:
            probe.bind((host, port))
        except OSError as error:
            raise SpaceStartError(
                f"cannot serve on {host}:{port} ({error.strerror or error}); choose a free one with --port"
            ) from error


def launch_demo(
    model: str | None = None,
    revision: str | None = None,
    host: str | None = None,
    port: int | None = None,
    share: bool = False,
    gallery: str | os.PathLike | None = None,
    prevent_thread_lock: bool = False,
    index: str | os.PathLike | None = None,
    concurrency_limit: int | None = None,
):
    """Serve the demo (what `hf-vlp demo` runs). Blocks until stopped unless `prevent_thread_lock`.

    `host` / `port` default to Gradio's (`GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`, else 127.0.0.1:7860).
    Raises `ModelNotFoundError` with instructions when there is no model, `SpaceStartError` when the port is taken.
    """
    from .ui import CONCURRENCY_LIMIT, build_demo

    _check_port_free(host, port)
    demo = build_demo(create_space(model, revision, gallery, index), concurrency_limit or CONCURRENCY_LIMIT)
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            max_file_size=SERVER_MAX_FILE_SIZE,
            prevent_thread_lock=True,
            quiet=True,  # Gradio's own hint names `share=True in launch()`; ours names the flag
        )
    except OSError as error:
        where = f"{host or '127.0.0.1'}:{port}" if port else "the default port 7860"
        raise SpaceStartError(f"cannot serve on {where} ({error}); choose a free one with --port") from error
    print(f"* Running on local URL:  {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"* Running on public URL: {demo.share_url}", flush=True)
    elif not share:
        print("* To create a public link, add --share (hf-vlp demo --share, python app.py --share).", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`python app.py [--model ...]` (how a Space starts the app) and `hf-vlp demo [...]` (`prog="hf-vlp demo"`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="hf-vlp Gradio demo (以文搜图, 以图搜图, 以图搜文, 零样本分类)"
    )
    parser.add_argument("--model", help=f"model folder or Hub repo id (default: ${ENV_MODEL} or {DEFAULT_MODEL_DIR})")
    parser.add_argument("--revision", help=f"Hub commit to pin (default: ${ENV_REVISION})")
    parser.add_argument(
        "--index",
        help=f"a folder written by `hf-vlp index build`: search it instead of a gallery (default: ${ENV_INDEX})",
    )
    parser.add_argument(
        "--gallery",
        help=f"image folder to search, or '{BUILTIN_GALLERY}' (default: ${ENV_GALLERY}, else the demo eval set if "
        "present, else the built-in scenes)",
    )
    parser.add_argument("--host", help="address to bind (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: Gradio's, 7860)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="requests served at once, the rest queue (default: 2)"
    )
    args = parser.parse_args(argv)
    name = prog or "app.py"
    if importlib.util.find_spec("gradio") is None:
        print(f"{name}: the Space needs Gradio: pip install 'hf-vlp[space]'", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO)
    try:
        launch_demo(
            args.model,
            args.revision,
            args.host,
            args.port,
            args.share,
            args.gallery,
            index=args.index,
            concurrency_limit=args.concurrency,
        )
    except (ModelNotFoundError, SpaceStartError) as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
