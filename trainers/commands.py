"""Small `hf-vlp` subcommands: `convert` (Chinese-CLIP -> hf-vlp), `demo` (the Gradio Space) and `push` (Hub).

They live on the training side because the model side (`hf_vlp`) has no argument parsing; each is a thin
argparse front over a public function.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path


__all__ = ["SPACE_APP", "convert_main", "demo_main", "push_main"]

SPACE_APP = Path(__file__).resolve().parent.parent / "spaces" / "app.py"


def convert_main(argv: Sequence[str]) -> int:
    """`hf-vlp convert SOURCE OUTPUT_DIR`: a transformers ChineseCLIPModel checkpoint -> DualEncoderModel folder."""
    parser = argparse.ArgumentParser(
        prog="hf-vlp convert",
        description="Convert a Chinese-CLIP checkpoint (e.g. OFA-Sys/chinese-clip-vit-base-patch16) into an hf-vlp "
        "dual encoder with identical embeddings, saved as a Hub-ready folder.",
    )
    parser.add_argument("source", help="Hub id or local folder of a transformers ChineseCLIPModel checkpoint")
    parser.add_argument("output_dir", help="folder to write the converted model (and processor) to")
    parser.add_argument("--revision", default=None, help="Hub revision of the source (pin it for reproducibility)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    args = parser.parse_args(list(argv))

    import torch

    from hf_vlp.convert import convert_chinese_clip

    hub_kwargs = {"revision": args.revision} if args.revision else {}
    model = convert_chinese_clip(args.source, args.output_dir, dtype=getattr(torch, args.dtype), **hub_kwargs)
    size = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"converted {args.source} -> {args.output_dir} ({size:.1f}M parameters)")
    return 0


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


def push_main(argv: Sequence[str]) -> int:
    """`hf-vlp push DIR --repo-id ID`: publish a saved model or adapter folder in one commit, print the commit URL.

    A thin front over `hf_vlp.hub.push_model_folder`, which checks the folder first (safetensors, model code for
    `trust_remote_code`, adapter config), adds the model card when the folder has none, never uploads pickles or
    checkpoints, and never writes into the folder. An expected failure (bad folder, refused or interrupted upload)
    is one line on stderr naming the step, and exit status 1: a user needs the cause, not a traceback.
    """
    parser = argparse.ArgumentParser(
        prog="hf-vlp push",
        description="Publish a folder written by save_pretrained (hf-vlp model + processor, or a PEFT adapter) to the "
        "Hugging Face Hub. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("folder", help="the saved model or adapter folder (it is only read)")
    parser.add_argument("--repo-id", required=True, help="owner/name on the Hub; created if missing")
    parser.add_argument("--revision", default=None, help="branch to push to, created from main if missing")
    parser.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    parser.add_argument("--commit-message", default="Upload hf-vlp model")
    parser.add_argument(
        "--base-model",
        default=None,
        help="for an adapter trained on a local copy of its base: the base's Hub id, written to the pushed "
        "adapter_config.json (and to the card when push renders one, i.e. when the folder has none)",
    )
    args = parser.parse_args(list(argv))

    from hf_vlp.hub import HubPushError, push_model_folder

    try:
        info = push_model_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            base_model=args.base_model,
        )
    except HubPushError as error:
        print(f"hf-vlp push: {error}", file=sys.stderr)
        return 1
    print(info.commit_url)
    return 0
