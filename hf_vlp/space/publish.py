"""Publishing the Space: `hf-vlp push --space USER/NAME [--model ID --revision SHA]` and `push_space(...)`.

The Space folder ships inside the package (`hf_vlp/space/space_folder`: the thin `app.py`, `requirements.txt` and the
README whose YAML header configures the Space), so a wheel install publishes the same folder a checkout does. The
model the Space serves is set twice, on purpose: as the Space variables `HF_VLP_MODEL` / `HF_VLP_REVISION` (what the
app reads at start) and as the README header's `models:` (what links the model page to the Space). Variables are
set before the commit, so the build that the commit starts already sees them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token

from hf_vlp.hub import HubPushError

from .loading import ENV_MODEL, ENV_REVISION


__all__ = ["SPACE_FOLDER", "SPACE_SDK", "push_space", "space_files"]

logger = logging.getLogger("hf_vlp.space")

SPACE_FOLDER = Path(__file__).with_name("space_folder")
SPACE_SDK = "gradio"
NO_TOKEN = "no Hugging Face token: set HF_TOKEN or run `hf auth login`"


def _with_model(readme: str, model: str) -> str:
    """The README with its YAML header's `models:` set to `[model]` (the rest of the header and body unchanged)."""
    if not readme.startswith("---\n"):
        raise ValueError("the Space README must start with a YAML header (---)")
    header_text, separator, body = readme[4:].partition("\n---\n")
    if not separator:
        raise ValueError("the Space README's YAML header is not closed (---)")
    header = yaml.safe_load(header_text) or {}
    header["models"] = [model]
    dumped = yaml.safe_dump(header, allow_unicode=True, sort_keys=False, width=1000)
    return f"---\n{dumped}---\n{body}"


def space_files(folder: str | os.PathLike | None = None, model: str | None = None) -> dict[str, bytes]:
    """The files to publish: every file of `folder` (default: the packaged Space folder), with the README's
    `models:` set to `model` when given. Caches and hidden files are left out."""
    folder = Path(folder) if folder is not None else SPACE_FOLDER
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith((".", "__pycache__")) for part in relative.parts):
            files[relative.as_posix()] = path.read_bytes()
    if "app.py" not in files or "README.md" not in files:
        raise FileNotFoundError(f"{folder} is not a Space folder: it needs app.py and README.md")
    if model is not None:
        files["README.md"] = _with_model(files["README.md"].decode("utf-8"), model).encode("utf-8")
    return files


def push_space(
    repo_id: str,
    *,
    model: str | None = None,
    revision: str | None = None,
    folder: str | os.PathLike | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload hf-vlp Space",
) -> CommitInfo:
    """Create (if missing) the Gradio Space `repo_id`, set its model variables, and upload the Space folder.

    Args:
        model: the Hub id the Space serves: `HF_VLP_MODEL` and the README's `models:`.
        revision: the model commit to pin (`HF_VLP_REVISION`); needs `model`. Pin it: the Space runs the model's
            shipped code.
        folder: the Space folder (default: the packaged one).

    Raises:
        HubPushError: at the first failed step (`validate`, `token`, `create_repo`, `variables`, `commit`).
    """
    try:
        if revision is not None and model is None:
            raise ValueError("--revision pins the model's commit: pass --model too")
        operations = [CommitOperationAdd(path, data) for path, data in space_files(folder, model).items()]
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise HubPushError(repo_id, "validate", error, folder or SPACE_FOLDER) from error
    if (token or get_token()) is None:  # before any network call: the one thing every first push gets wrong
        raise HubPushError(repo_id, "token", PermissionError(NO_TOKEN))
    api = HfApi(token=token)
    step = "create_repo"
    try:
        api.create_repo(repo_id, repo_type="space", space_sdk=SPACE_SDK, private=private, exist_ok=True)
        step = "variables"
        for key, value in ((ENV_MODEL, model), (ENV_REVISION, revision)):
            if value is not None:
                api.add_space_variable(repo_id, key, value, description="the hf-vlp model this Space serves")
        step = "commit"
        info = api.create_commit(repo_id, operations, commit_message=commit_message, repo_type="space")
    except Exception as error:  # every client, HTTP and network error; re-raised typed, with the step
        raise HubPushError(repo_id, step, error) from error
    logger.info("pushed the Space to %s: %s", repo_id, info.commit_url)
    return info
