"""`hf-vlp demo`: launch the Gradio Space of this checkout (以文搜图, 以图搜文, 零样本分类)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import check_port_free


__all__ = ["SPACE_APP", "demo_main"]

DEFAULT_PORT = 7860  # Gradio's
SPACE_APP = Path(__file__).resolve().parents[2] / "spaces" / "app.py"


def _check_port(argv: Sequence[str]) -> None:
    """Refuse a busy port before the model loads (Gradio finds out only when it starts serving)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME"))
    peek.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)))
    known, _ = peek.parse_known_args(list(argv))
    check_port_free(known.host, known.port)


def demo_main(argv: Sequence[str]) -> int:
    """`hf-vlp demo`: the Gradio Space of this checkout, loaded by file path.

    By path, not by import: Hugging Face Spaces have a `spaces` module of their own, so our `spaces/` folder is
    deliberately not a package.
    """
    if not SPACE_APP.is_file():
        print(f"hf-vlp demo: {SPACE_APP} not found; run it from a source checkout of hf-vlp", file=sys.stderr)
        return 2
    _check_port(argv)
    spec = importlib.util.spec_from_file_location("hf_vlp_space_app", SPACE_APP)
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    return app.main(list(argv), prog="hf-vlp demo")
