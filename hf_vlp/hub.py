"""Publish a saved hf-vlp model or PEFT adapter folder to the Hugging Face Hub in one commit.

`push_model_folder` is what `hf-vlp push DIR --repo-id ...` and the trainer's `push_to_hub` call. Compared with a
bare `upload_folder` it:

* checks first, before any network call, that the folder is loadable by someone without hf-vlp: safetensors
  weights, `config.json` with an `auto_map` whose code files are in the folder (or an adapter config + weights);
* never publishes pickles (`*.bin`, `*.pt`, ...: unsafe to load) or training leftovers (checkpoints, logs);
* adds an hf-vlp model card (rendered from `model_cards/`) unless the folder already has a real one, and for an
  adapter points `base_model_name_or_path` at the base's Hub id instead of a local path;
* never writes into the folder: the card and any patched config are uploaded from memory, so a failed or interrupted
  push leaves the local folder byte-identical;
* uploads LFS files first and commits once, and reports a failure as `HubPushError` naming the repo, the step
  (`validate`, `model_card`, `create_repo`, `create_branch`, `upload`, `commit`) and the cause.

The token is never handled here unless given: `huggingface_hub` reads `HF_TOKEN` or the stored login itself. It is
never logged, and it cannot reach a card or a config because neither is rendered from anything that holds it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.utils import filter_repo_objects
from transformers.dynamic_module_utils import get_relative_imports

from .model_card import render_model_card
from .model_card.render import is_hub_id


__all__ = ["DEFAULT_IGNORE_PATTERNS", "HubPushError", "push_model_folder", "validate_model_folder"]

logger = logging.getLogger(__name__)

#: Never published: pickled weights/states (loading them runs code), trainer checkpoints and logs, caches.
DEFAULT_IGNORE_PATTERNS = (
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
    "checkpoint-*",
    "runs/*",
    ".git/*",
    "*/.git/*",
    ".cache/*",
    "__pycache__/*",
    "*/__pycache__/*",
    "*.pyc",
    ".DS_Store",
)

# A README.md holding this marker is a placeholder (huggingface_hub's default template, which PEFT's
# `save_pretrained` and transformers' `push_to_hub` fill in), not a card someone wrote: replace it.
_PLACEHOLDER_CARD_MARKER = "<!-- Provide a quick summary of what the model is/does."
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class HubPushError(RuntimeError):
    """A push that did not complete. The local folder was not modified, and the commit is all-or-nothing: files
    land in the repo only if the final `commit` step succeeded (the repo itself may have been created).

    Attributes:
        repo_id: the target repo.
        step: `validate`, `model_card`, `create_repo`, `create_branch`, `upload` (LFS pre-upload) or `commit`.
        cause: the underlying exception (also chained as `__cause__`).
    """

    def __init__(self, repo_id: str, step: str, cause: BaseException, folder: str | os.PathLike | None = None):
        self.repo_id = repo_id
        self.step = step
        self.cause = cause
        where = f" of {folder}" if folder is not None else ""
        super().__init__(
            f"push{where} to {repo_id!r} failed at step '{step}': {_cause_chain(cause)} (the local folder is unchanged)"
        )


def _cause_chain(err: BaseException, limit: int = 3) -> str:
    """The error and what caused it: the client wraps HTTP errors (e.g. an LFS upload's 403 and the server's
    reason) in a generic "Error while uploading" whose own text says nothing about why."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(parts) < limit:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


def _auto_map_modules(auto_map: Mapping[str, Any]) -> set[str]:
    """Local module names referenced by an `auto_map` ("module.Class", lists for tokenizers, "repo--module.Class")."""
    modules = set()
    for value in auto_map.values():
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(reference, str) and "--" not in reference:  # "--": code in another repo
                modules.add(reference.rsplit(".", 1)[0])
    return modules


def _missing_code(folder: Path, modules: Iterable[str]) -> list[str]:
    """Code files the `auto_map` modules need (themselves and their relative imports, recursively) that the folder
    lacks: `trust_remote_code` fetches exactly these, so one missing file breaks loading for every user."""
    missing, seen, pending = [], set(), list(modules)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = folder / f"{module}.py"
        if not path.is_file():
            missing.append(path.name)
            continue
        pending.extend(get_relative_imports(str(path)))
    return sorted(missing)


def validate_model_folder(folder: str | os.PathLike) -> str:
    """Check that `folder` can be published and loaded without hf-vlp; returns `"model"` or `"adapter"`.

    Raises `ValueError` / `FileNotFoundError` that say what is missing and how to produce it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}")
    if (folder / "adapter_config.json").is_file():
        if not (folder / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(
                f"{folder} has adapter_config.json but no adapter_model.safetensors; save the adapter with "
                "PeftModel.save_pretrained(folder) (safe_serialization is the default)"
            )
        return "adapter"
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} holds neither config.json nor adapter_config.json: not a saved model")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            raise FileNotFoundError(f"{folder} lacks weight shards named by its index: {missing}")
    elif not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{folder} has no safetensors weights (model.safetensors or a sharded index); hf-vlp publishes "
            "safetensors only: re-save with model.save_pretrained(folder)"
        )
    auto_map = json.loads(config_path.read_text(encoding="utf-8")).get("auto_map")
    if not auto_map:
        raise ValueError(
            f"{folder}/config.json has no auto_map, so the model would not load with trust_remote_code where "
            "hf-vlp is not installed; save it from an hf-vlp model class (import hf_vlp registers them)"
        )
    missing_code = _missing_code(folder, _auto_map_modules(auto_map))
    if missing_code:
        raise FileNotFoundError(f"{folder} lacks model code that its auto_map needs: {missing_code}")
    if not any((folder / name).is_file() for name in _PROCESSOR_FILES):
        logger.warning(
            "%s has no processor files: users will need a processor from elsewhere (processor.save_pretrained(folder))",
            folder,
        )
    return "model"


def _folder_operations(folder: Path, ignore_patterns: Iterable[str]) -> dict[str, CommitOperationAdd]:
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    kept = filter_repo_objects(paths, ignore_patterns=list(ignore_patterns))
    return {path: CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in kept}


def _needs_card(folder: Path) -> bool:
    readme = folder / "README.md"
    return not readme.is_file() or _PLACEHOLDER_CARD_MARKER in readme.read_text(encoding="utf-8", errors="replace")


def _point_adapter_at_base(folder: Path, base_model: str | None, operations: dict[str, CommitOperationAdd]) -> None:
    """Publish the adapter config with `base_model_name_or_path` = the base's Hub id (PEFT records the local path
    the base was loaded from, which no one else can resolve), or warn that users will have to find the base."""
    adapter_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if base_model is not None:
        adapter_config["base_model_name_or_path"] = base_model
        content = json.dumps(adapter_config, indent=2, sort_keys=True) + "\n"
        operations["adapter_config.json"] = CommitOperationAdd("adapter_config.json", content.encode("utf-8"))
    elif not is_hub_id(adapter_config.get("base_model_name_or_path")):
        logger.warning(
            "adapter %s names no Hub base model (base_model_name_or_path=%r): pass base_model= so users can load it",
            folder,
            adapter_config.get("base_model_name_or_path"),
        )


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload hf-vlp model",
    *,
    create_pr: bool = False,
    model_card: bool | None = None,
    card_kwargs: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    ignore_patterns: Iterable[str] = DEFAULT_IGNORE_PATTERNS,
) -> CommitInfo:
    """Push a folder written by `save_pretrained` (model + processor, or a PEFT adapter) as one commit.

    Args:
        folder: the saved model or adapter folder; it is only read.
        repo_id: `owner/name` on the Hub; created if missing (as private when `private=True`).
        token: a write token; by default `huggingface_hub` uses `HF_TOKEN` or the stored login.
        revision: a branch to push to (created from `main` if missing); default `main`.
        create_pr: open a pull request instead of committing to the branch.
        model_card: `None` (default) renders an hf-vlp card unless the folder has a real README.md (not a
            placeholder); `True` always renders one (replacing the folder's in the repo, not on disk); `False`
            uploads the folder's README.md, if any, unchanged.
        card_kwargs: extra arguments of `hf_vlp.model_card.render_model_card` (`results`, `training_args`,
            `datasets`, `license` ...); results default to the folder's `all_results.json` / `eval_results.json`.
        base_model: for an adapter, the base model's Hub id, written to the pushed `adapter_config.json`
            (`base_model_name_or_path`) and the card; for a model, the id(s) it was initialised from (card only).
        ignore_patterns: files never published (default `DEFAULT_IGNORE_PATTERNS`).

    Returns:
        The `CommitInfo` of the commit (its `commit_url`, `oid`, and `pr_url` with `create_pr`).

    Raises:
        HubPushError: at the first failed step, naming it. The folder is never modified; the commit is all-or-nothing
            (the repo itself may have been created by then).
    """
    folder = Path(folder)
    try:
        kind = validate_model_folder(folder)
        operations = _folder_operations(folder, ignore_patterns)
        if kind == "adapter":
            _point_adapter_at_base(folder, base_model, operations)
    except (OSError, ValueError) as err:
        raise HubPushError(repo_id, "validate", err, folder) from err

    if model_card or (model_card is None and _needs_card(folder)):
        try:
            card = render_model_card(folder, **{"repo_id": repo_id, "base_model": base_model, **(card_kwargs or {})})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise HubPushError(repo_id, "model_card", err, folder) from err
        operations["README.md"] = CommitOperationAdd("README.md", str(card).encode("utf-8"))

    api = HfApi(token=token)
    additions = list(operations.values())
    logger.info("pushing %d files of %s to %s (%s)", len(additions), folder, repo_id, kind)
    step = "create_repo"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            step = "create_branch"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "upload"
        api.preupload_lfs_files(repo_id, additions, revision=revision, create_pr=create_pr)
        step = "commit"
        info = api.create_commit(
            repo_id, additions, commit_message=commit_message, revision=revision, create_pr=create_pr
        )
    except Exception as err:  # every client, HTTP and network error; re-raised typed, with the step
        raise HubPushError(repo_id, step, err, folder) from err
    logger.info("pushed %s to %s: %s", folder, repo_id, info.commit_url)
    return info
