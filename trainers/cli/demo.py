"""`hf-vlp demo`: launch the Gradio Space of this checkout (以文搜图, 以图搜文, 零样本分类)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path


__all__ = ["SPACE_APP", "demo_main"]

SPACE_APP = Path(__file__).resolve().parents[2] / "spaces" / "app.py"


def demo_main(argv: Sequence[str]) -> int:
    """`hf-vlp demo`: the Gradio Space of this checkout, loaded by file path.

    By path, not by import: Hugging Face Spaces have a `spaces` module of their own, so our `spaces/` folder is
    deliberately not a package.
    """
    if not SPACE_APP.is_file():
        print(f"hf-vlp demo: {SPACE_APP} not found; run it from a source checkout of hf-vlp", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("hf_vlp_space_app", SPACE_APP)
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    return app.main(list(argv), prog="hf-vlp demo")
