"""Which model a Space serves, and loading it: a local folder, or a Hub repo pinned to a commit.

The order is the argument, then the Space variables `HF_VLP_MODEL` / `HF_VLP_REVISION` (what `hf-vlp push --space
... --model ID --revision SHA` sets), then the folder the demo job writes. A Hub model runs its shipped code with
`trust_remote_code`, so an unpinned revision is warned about: the code on the main branch may change under a
running Space.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoModel, AutoProcessor

import hf_vlp  # noqa: F401 - registers the hf-vlp classes with the Auto classes for local folders


__all__ = [
    "DEFAULT_MODEL_DIR",
    "ENV_MODEL",
    "ENV_REVISION",
    "ModelNotFoundError",
    "load_model",
    "resolve_model",
    "run_output_hint",
]

logger = logging.getLogger("hf_vlp.space")

# Where `hf-vlp pretrain --recipe demo` leaves its model.
DEFAULT_MODEL_DIR = "./hf_vlp_demo_output/model"
ENV_MODEL = "HF_VLP_MODEL"
ENV_REVISION = "HF_VLP_REVISION"


class ModelNotFoundError(FileNotFoundError):
    """No model to serve: the message says how to get one."""


def resolve_model(model: str | None = None, revision: str | None = None) -> tuple[str, str | None, bool]:
    """`(source, revision, is_local)` from the argument, else `HF_VLP_MODEL`, else the demo job's output folder.

    A name that is an existing folder is local; a name that looks like a path but is missing is an error (rather
    than a confusing Hub lookup); anything else is a Hub repo id, pinned by `revision` / `HF_VLP_REVISION`.
    """
    model = model or os.environ.get(ENV_MODEL) or None
    revision = revision or os.environ.get(ENV_REVISION) or None
    if model is None:
        if os.path.isdir(DEFAULT_MODEL_DIR):
            return os.path.abspath(DEFAULT_MODEL_DIR), None, True
        raise ModelNotFoundError(
            f"还没有可用的模型 / No model yet: {DEFAULT_MODEL_DIR} does not exist. "
            "Train the demo model first with `hf-vlp pretrain --recipe demo`, or pass a model folder or Hub id "
            f"(`hf-vlp demo --model <folder-or-repo-id> --revision <commit>`, or set {ENV_MODEL} / {ENV_REVISION})."
        )
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ModelNotFoundError(f"{model} holds no config.json: not a saved model folder{run_output_hint(model)}")
        return os.path.abspath(expanded), None, True
    # A Hub id is `name` or `owner/name`; anything else that is not a folder was meant as a path.
    looks_like_path = (
        expanded.startswith((".", "/")) or expanded.count("/") > 1 or (os.sep != "/" and os.sep in expanded)
    )
    if looks_like_path:
        raise ModelNotFoundError(f"Model folder not found: {model}")
    return model, revision, False


def run_output_hint(folder: str) -> str:
    """`"; the run's model is in FOLDER/model"` when `folder` is a training run's output folder (whose saved model is
    in its `model/` subfolder, as `hf-vlp pretrain` writes it), else ""."""
    inside = os.path.join(folder, "model")
    return (
        f"; the run's model is in {inside}"
        if os.path.isfile(os.path.join(os.path.expanduser(inside), "config.json"))
        else ""
    )


def load_model(model: str | None = None, revision: str | None = None, device: str | None = None):
    """Load `(model, processor, description)` for serving, in eval mode on `device` (CUDA when there is one)."""
    source, revision, is_local = resolve_model(model, revision)
    if not is_local and revision is None:
        logger.warning(
            "Loading %s with trust_remote_code from its default branch: pin a commit with --revision or %s.",
            source,
            ENV_REVISION,
        )
    hub_kwargs = {} if is_local else {"revision": revision}
    try:
        vlp_model = AutoModel.from_pretrained(source, trust_remote_code=True, **hub_kwargs)
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=True, **hub_kwargs)
    except OSError as error:
        raise ModelNotFoundError(f"Cannot load an hf-vlp model and processor from {source!r}: {error}") from error
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vlp_model.to(device).eval()
    description = source if is_local else f"{source}@{revision or 'main'}"
    return vlp_model, processor, description
