"""`hf-vlp demo`: launch the Gradio Space (以文搜图, 以图搜图, 以图搜文, 零样本分类) from the installed package.

The app lives in `hf_vlp.space` (installed with `pip install 'hf-vlp[space]'`), so this works from a wheel as well as
from a checkout; `spaces/app.py`, what a Hugging Face Space runs, calls the same `main`.
"""

from __future__ import annotations

from collections.abc import Sequence


__all__ = ["demo_main"]


def demo_main(argv: Sequence[str]) -> int:
    """`hf-vlp demo [--model ...] [--index DIR] [--gallery ...] [--host ...] [--port ...] [--share]`."""
    from hf_vlp.space.launch import main

    return main(list(argv), prog="hf-vlp demo")
