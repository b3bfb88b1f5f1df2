"""`hf-vlp push`: publish a saved model or adapter folder to the Hub (a front over `hf_vlp.hub.push_model_folder`),
or with `--space`, the Gradio Space that serves a model (`hf_vlp.space.publish.push_space`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import RUNTIME, UserError
from .parsing import flag_values


__all__ = ["push_main", "push_space_main"]


def push_main(argv: Sequence[str]) -> int:
    """`hf-vlp push DIR --repo-id ID`: publish a saved model or adapter folder in one commit, print the commit URL.

    A thin front over `hf_vlp.hub.push_model_folder`, which checks the folder first (safetensors, model code for
    `trust_remote_code`, adapter config), adds the model card when the folder has none, never uploads pickles or
    checkpoints, and never writes into the folder. An expected failure (bad folder, refused or interrupted upload)
    is one line on stderr naming the step, and exit status 1: a user needs the cause, not a traceback.
    `--space` publishes the Space instead (`push_space_main`).
    """
    if any(arg == "--space" or arg.startswith("--space=") for arg in argv):
        return push_space_main(argv)
    parser = argparse.ArgumentParser(
        prog="hf-vlp push",
        description="Publish a folder written by save_pretrained (hf-vlp model + processor, or a PEFT adapter) to the "
        "Hugging Face Hub. The token comes from HF_TOKEN or `hf auth login`. To publish the Gradio Space that serves "
        "a model instead: `hf-vlp push --space USER/NAME --model ID --revision SHA` (see `hf-vlp push --space x "
        "--help`).",
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
    from huggingface_hub import get_token

    if not get_token():  # before any network call: without a token every step after `validate` fails obscurely
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`", RUNTIME)

    from hf_vlp.hub import push_model_folder

    options = flag_values(args, "private", "revision", "commit_message", "base_model")
    return _commit_or_report(push_model_folder, args.folder, args.repo_id, **options)


def _commit_or_report(push: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Run a Hub push; print its commit URL (exit 0), or the failed step in one line on stderr (exit 1)."""
    from hf_vlp.hub import HubPushError

    try:
        info = push(*args, **kwargs)
    except HubPushError as error:
        print(f"hf-vlp push: {error}", file=sys.stderr)
        return 1
    print(info.commit_url)
    return 0


def push_space_main(argv: Sequence[str]) -> int:
    """`hf-vlp push --space USER/NAME [--model ID --revision SHA]`: publish the Gradio Space serving a model."""
    parser = argparse.ArgumentParser(
        prog="hf-vlp push --space",
        description="Publish the hf-vlp Gradio Space (the folder shipped in the package) to the Hugging Face Hub, "
        "set to serve --model at --revision. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("--space", required=True, metavar="USER/NAME", help="the Space repo; created if missing")
    parser.add_argument("--model", default=None, help="Hub id of the model the Space serves (HF_VLP_MODEL, models:)")
    parser.add_argument("--revision", default=None, help="the model commit to pin (HF_VLP_REVISION)")
    parser.add_argument("--folder", default=None, help="a Space folder to publish instead of the packaged one")
    parser.add_argument("--private", action="store_true", help="create the Space as private (if it does not exist)")
    parser.add_argument("--commit-message", default="Upload hf-vlp Space")
    args = parser.parse_args(list(argv))

    from hf_vlp.space.publish import push_space

    options = flag_values(args, "model", "revision", "folder", "private", "commit_message")
    return _commit_or_report(push_space, args.space, **options)
