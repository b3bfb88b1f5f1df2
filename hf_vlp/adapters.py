"""PEFT (LoRA and the other linear-layer adapters) on hf-vlp models: target selection, wrapping, loading, merging.

Why a module of its own rather than `get_peft_model(model, LoraConfig(target_modules=["query", "value"]))`:

* Module names differ between towers (BERT `attention.self.query`, v5 ViT / Swin `attention.q_proj`, CLIP vision
  `self_attn.q_proj`), so the default targets are read from the model's own module names, tower by tower.
* A list of names in `target_modules` is suffix-matched by PEFT and would also wrap a fusion model's momentum
  (EMA) copies (`text_model_m...query`), which never get gradients. The defaults are one regex anchored on
  the online towers' attribute names, and `prepare_peft_model` refuses any config that would reach a momentum
  module, whoever wrote it.
* `logit_scale` is a bare `nn.Parameter`: PEFT's `modules_to_save` only wraps modules, and `PeftModel`
  saves nothing else, so a temperature trained during PEFT would silently be lost on save. It stays frozen at
  its pretrained value (standard when adapting a pretrained CLIP), and `prepare_peft_model` rejects configs
  that name it.

`peft` is an optional dependency (`pip install "hf-vlp[train]"`); it is imported on first use.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.pytorch_utils import Conv1D


if TYPE_CHECKING:
    from peft import LoraConfig, PeftConfig, PeftModel


__all__ = [
    "TARGET_PRESETS",
    "TOWER_ATTRIBUTES",
    "default_lora_config",
    "default_modules_to_save",
    "default_target_modules",
    "load_adapter",
    "merge_adapter",
    "momentum_module_names",
    "prepare_peft_model",
    "require_peft",
]

logger = logging.getLogger(__name__)

#: Attribute names of the online towers of hf-vlp models, per role; every one present is adapted. The fusion role
#: has two in R2D2's two-way mode (`text_fusion`: text queries image; `image_fusion`: image queries text).
TOWER_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "text": ("text_model",),
    "vision": ("vision_model",),
    "fusion": ("text_fusion", "image_fusion"),
}

#: What `target=` selects inside every transformer block of the chosen towers.
TARGET_PRESETS = ("qv", "attention", "all_linear")

# Leaf names of attention projections across transformers architectures; classification is by leaf name
# because that is the one thing the architectures share (their paths differ).
_QUERY = {"query", "q_proj", "q", "q_lin", "to_q", "wq"}
_KEY = {"key", "k_proj", "k", "k_lin", "to_k", "wk"}
_VALUE = {"value", "v_proj", "v", "v_lin", "to_v", "wv"}
_FUSED_QKV = {"qkv", "qkv_proj", "wqkv", "c_attn", "in_proj"}
_LINEAR_TYPES = (nn.Linear, Conv1D)


def require_peft():
    """Import `peft`, or say how to install it: it is an extra, so `pip install hf-vlp` stays light."""
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            'PEFT fine-tuning needs the `peft` package: pip install "hf-vlp[train]" (or pip install peft)'
        ) from err
    return peft


# ---------------------------------------------------------------------------------------------- target selection


def _towers(model: nn.Module, towers: Iterable[str]) -> dict[str, str]:
    """Attribute name -> role of the online towers present in `model`, for the requested roles."""
    unknown = set(towers) - set(TOWER_ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown tower(s) {sorted(unknown)}; choose from {sorted(TOWER_ATTRIBUTES)}")
    children = dict(model.named_children())
    return {attribute: role for role in towers for attribute in TOWER_ATTRIBUTES[role] if attribute in children}


def _is_momentum_path(name: str) -> bool:
    """A module of a momentum (EMA) copy: by hf-vlp convention some path component ends in `_m`."""
    return any(part.endswith("_m") for part in name.split("."))


def momentum_module_names(model: nn.Module) -> list[str]:
    """Top-most names of the momentum (EMA) modules of `model` (`text_model_m`, `text_fusion_m`, ...)."""
    names = [name for name, _ in model.named_modules() if name and _is_momentum_path(name)]
    return [name for name in names if not _is_momentum_path(name.rpartition(".")[0])]


def _selected(relative_name: str, target: str) -> bool:
    """Whether a linear layer at `relative_name` (inside a tower) belongs to the `target` preset."""
    parts = relative_name.split(".")
    if not any(part.isdigit() for part in parts):
        return False  # outside the block stack: embeddings, poolers, heads
    if target == "all_linear":
        return True
    leaf = parts[-1].lower()
    if target == "qv":
        return leaf in _QUERY | _VALUE | _FUSED_QKV
    in_attention = any("attn" in part.lower() or "attention" in part.lower() for part in parts[:-1])
    return leaf in _QUERY | _KEY | _VALUE | _FUSED_QKV or in_attention


def _pattern(names: Sequence[str]) -> str:
    """A compact regex for module names: layer indices become `\\d+`, equal shapes collapse, leaves alternate."""
    shapes: dict[str, set[str]] = {}
    for name in names:
        parts = name.split(".")
        stem = r"\.".join(r"\d+" if part.isdigit() else re.escape(part) for part in parts[:-1])
        shapes.setdefault(stem, set()).add(re.escape(parts[-1]))
    alternatives = [
        f"{stem}\\.{leaves.pop()}" if len(leaves) == 1 else f"{stem}\\.(?:{'|'.join(sorted(leaves))})"
        for stem, leaves in sorted(shapes.items())
    ]
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def default_target_modules(
    model: nn.Module, towers: Iterable[str] = ("text", "vision", "fusion"), target: str = "qv"
) -> str:
    """A `target_modules` regex for the linear layers of the online towers' transformer blocks.

    Derived from `model`'s own module names, so it follows whatever towers the config plugged in, and anchored on
    the tower attributes (`^text_model\\.` ...), so momentum copies (`text_model_m`) can never match. Pass it to any
    PEFT method that adapts linear layers (LoRA, DoRA, LoHa, LoKr, OFT, IA3, VeRA ...).

    Args:
        towers: roles to adapt, among `"text"`, `"vision"`, `"fusion"`; roles the model lacks are skipped (a dual
            encoder has no fusion tower), but at least one must exist.
        target: `"qv"` (query and value projections, the LoRA paper's choice; fused qkv layers count),
            `"attention"` (every attention projection, self and cross, including the output one) or
            `"all_linear"` (attention and MLP).
    """
    if target not in TARGET_PRESETS:
        raise ValueError(f"target must be one of {TARGET_PRESETS}, got {target!r}")
    towers = tuple(towers)
    present = _towers(model, towers)
    if not present:
        raise ValueError(
            f"{type(model).__name__} has none of the towers {towers}; its children are "
            f"{[name for name, _ in model.named_children()]}"
        )
    names = []
    for attribute, role in present.items():
        tower = getattr(model, attribute)
        found = [
            f"{attribute}.{name}"
            for name, module in tower.named_modules()
            if isinstance(module, _LINEAR_TYPES) and _selected(name, target)
        ]
        if not found:
            raise ValueError(
                f"no {target!r} linear layers found in the {role} tower `{attribute}` "
                f"({type(tower).__name__}); pass `target_modules=` explicitly"
            )
        names.extend(found)
    return f"^{_pattern(names)}$"


def default_modules_to_save(model: nn.Module) -> list[str]:
    """Small heads trained in full (and saved) next to the adapters: projections, ITM heads, token reducers.

    Structurally: every direct child of the model that is not a tower or a momentum copy, plus the `*_head`
    children of the fusion towers (their ITM heads). Left out: modules with parameters tied to another module
    (the MLM head's decoder is the word embedding: a saved copy would untie it and store a vocabulary-sized
    matrix in the adapter) and bare parameters such as `logit_scale` (not modules; see the module docstring).
    """
    tower_attributes = {attribute for names in TOWER_ATTRIBUTES.values() for attribute in names}
    owners: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), set()).add(name.split(".", 1)[0])
    tied = {head for heads in owners.values() if len(heads) > 1 for head in heads}
    heads = [
        name
        for name, module in model.named_children()
        if name not in tower_attributes
        and not name.endswith("_m")
        and name not in tied
        and any(True for _ in module.parameters())
    ]
    for attribute in TOWER_ATTRIBUTES["fusion"]:
        tower = getattr(model, attribute, None)
        if isinstance(tower, nn.Module):
            heads += [f"{attribute}.{name}" for name, _ in tower.named_children() if name.endswith("_head")]
    return heads


def default_lora_config(
    model: nn.Module,
    towers: Iterable[str] = ("text", "vision", "fusion"),
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    *,
    target: str = "qv",
    train_heads: bool = True,
    **kwargs: Any,
) -> LoraConfig:
    """A `LoraConfig` for `model` with per-tower targets derived from its module names.

    Args:
        towers: which online towers get LoRA (see `default_target_modules`).
        r, alpha, dropout: LoRA rank, scaling numerator and dropout.
        target: `"qv"`, `"attention"` or `"all_linear"` (see `default_target_modules`).
        train_heads: also fully train the projections / ITM head (`modules_to_save`, see
            `default_modules_to_save`); they are small and newly aligned heads adapt fastest.
        **kwargs: any other `LoraConfig` field, overriding the defaults (`use_dora=True`, `use_rslora=True`,
            `target_modules=...`, `modules_to_save=...`).

    `task_type` stays `None`: a plain `PeftModel` passes `pixel_values` and `input_ids` through unchanged, which the
    task-specific subclasses do not.
    """
    peft = require_peft()
    options: dict[str, Any] = {
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": default_target_modules(model, towers, target),
        "modules_to_save": default_modules_to_save(model) if train_heads else None,
        "task_type": None,
    }
    options.update(kwargs)
    return peft.LoraConfig(**options)


# ---------------------------------------------------------------------------------------------- wrapping


def _check_config(model: nn.Module, peft_config: PeftConfig) -> None:
    """Refuse configs that would adapt a momentum copy, name a bare parameter, or need a task-specific forward."""
    from peft.tuners.tuners_utils import check_target_module_exists

    if getattr(peft_config, "task_type", None) is not None:
        raise ValueError(
            f"use task_type=None for hf-vlp models (got {peft_config.task_type}): task-specific PeftModel "
            "subclasses call forward with text-only arguments and drop pixel_values"
        )
    parameters = dict(model.named_parameters())
    modules_to_save = list(getattr(peft_config, "modules_to_save", None) or [])
    bare = [name for name in modules_to_save if name in parameters]
    if bare:
        raise ValueError(
            f"{bare} are bare parameters, not modules: PEFT's modules_to_save cannot wrap or save them, so they "
            "stay frozen at their pretrained values during PEFT (train them in a full fine-tune instead)"
        )
    reached = []
    for name, _ in model.named_modules():
        if not name or not _is_momentum_path(name):
            continue
        # PEFT matches targets with `check_target_module_exists` and modules_to_save with a plain suffix test.
        # (`check_target_module_exists` returns a falsy marker for excluded modules.)
        is_target = getattr(peft_config, "target_modules", None) is not None and check_target_module_exists(
            peft_config, name
        )
        if is_target or any(name.endswith(entry) for entry in modules_to_save):
            reached.append(name)
    if reached:
        raise ValueError(
            f"this PEFT config would adapt momentum (EMA) modules {reached[:5]}{' ...' if len(reached) > 5 else ''}, "
            "which never receive gradients; anchor target_modules on the online towers (see "
            "hf_vlp.adapters.default_target_modules) or add exclude_modules=r'.*_m(\\..*)?'"
        )


#: Loss weights of terms whose teacher is the momentum model (R2D2's target- and feature-guided distillation).
_MOMENTUM_TAUGHT_WEIGHTS = ("target_distill_weight", "feature_distill_weight")


def _disable_momentum(model: nn.Module) -> None:
    """Switch the momentum model (EMA copy, feature queue, momentum distillation) off for an adapter run.

    After wrapping, the online towers hold `base_layer` + `lora_*` parameters where the momentum copy holds plain
    weights, so an EMA pairing parameters by name no longer lines up; and a frozen momentum model would keep
    producing soft targets and queue keys from the pre-adaptation weights. Configuration only: the fusion model
    reads `use_momentum_encoder` at every forward (and ITC falls back to in-batch negatives). R2D2's distillation
    terms are taught by the momentum model, so their weights are zeroed with it.
    """
    config = getattr(model, "config", None)
    if not getattr(config, "use_momentum_encoder", False):
        return
    # Remembered on the model so `merge_adapter` can give back a model configured as it was before the run.
    model._peft_config_overrides = {
        name: getattr(config, name)
        for name in ("use_momentum_encoder", *_MOMENTUM_TAUGHT_WEIGHTS)
        if hasattr(config, name)
    }
    logger.warning(
        "PEFT: switching the momentum model off for this adapter run (config.use_momentum_encoder=False): ITC "
        "uses in-batch negatives, without queue or momentum distillation"
    )
    config.use_momentum_encoder = False
    for weight in _MOMENTUM_TAUGHT_WEIGHTS:
        if getattr(config, weight, 0) > 0:
            logger.warning("PEFT: %s needs the momentum model; setting it to 0 for this adapter run", weight)
            setattr(config, weight, 0.0)


def prepare_peft_model(model: PreTrainedModel, peft_config: PeftConfig) -> PeftModel:
    """Wrap `model` with `peft_config` (any PEFT method) after checking it suits an hf-vlp model.

    Checks: `task_type` is `None`, no momentum module is targeted or saved, no bare parameter is named. Then it
    switches momentum distillation / queue off in the config (see `_disable_momentum`) and calls
    `peft.get_peft_model`. Only adapter and `modules_to_save` parameters are trainable afterwards; `logit_scale` and
    every base weight are frozen. Gradient checkpointing works enabled on `model` before wrapping (PEFT then hooks
    the input embeddings, which `get_input_embeddings` exposes) or on the `PeftModel` after.
    """
    peft = require_peft()
    _check_config(model, peft_config)
    _disable_momentum(model)
    peft_model = peft.get_peft_model(model, peft_config)
    leaked = [name for name, p in peft_model.named_parameters() if p.requires_grad and _is_momentum_path(name)]
    if leaked:  # defensive: the checks above should make this impossible
        raise RuntimeError(f"momentum parameters became trainable under PEFT: {leaked[:5]}")
    return peft_model


# ---------------------------------------------------------------------------------------------- loading / merging


def load_adapter(
    base_model_or_dir: PreTrainedModel | str | os.PathLike | None,
    adapter_dir: str | os.PathLike,
    trust_remote_code: bool = False,
    is_trainable: bool = False,
    adapter_name: str = "default",
    **hub_kwargs: Any,
) -> PeftModel:
    """Load an adapter (folder or Hub id) onto a base model (instance, folder or Hub id).

    Args:
        base_model_or_dir: the base model, or where to load it from with `AutoModel`; `None` uses the adapter's
            `base_model_name_or_path`.
        trust_remote_code: load the base from its own shipped code (for folders / Hub repos where hf-vlp is not
            installed). The adapter itself holds no code.
        is_trainable: keep adapter weights trainable (resume PEFT training); momentum features are switched off
            as in `prepare_peft_model`.
        **hub_kwargs: `revision`, `token`, `cache_dir` ... for the base model download.

    `AutoPeftModel` cannot do this for hf-vlp: it only imports base classes from libraries on PEFT's import
    allowlist (transformers, diffusers ...), and Hub custom code lives in `transformers_modules`, not a library.
    """
    peft = require_peft()
    if base_model_or_dir is None:
        base_model_or_dir = peft.PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
        if not base_model_or_dir:
            raise ValueError(f"the adapter at {adapter_dir} does not name its base model; pass base_model_or_dir")
    if isinstance(base_model_or_dir, (str, os.PathLike)):
        base = AutoModel.from_pretrained(str(base_model_or_dir), trust_remote_code=trust_remote_code, **hub_kwargs)
    else:
        base = base_model_or_dir
    if is_trainable:
        _disable_momentum(base)
    else:
        base.eval()
    return peft.PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable)


def merge_adapter(peft_model: PeftModel, safe_merge: bool = True) -> PreTrainedModel:
    """Merge the adapters into the base weights and return a plain model, as `from_pretrained` would give it.

    * `merge_and_unload` leaves every parameter frozen; a plain model is expected to be trainable, so trainability
      is reset and the model's own load-time invariants (LiT locks, frozen momentum model) are re-applied through
      its `_after_load` hook.
    * The momentum settings `prepare_peft_model` switched off are restored, and a momentum model is re-synced to
      the merged online weights (`copy_params`, as at the start of pre-training): it was not updated by the run.

    `safe_merge` checks the merged weights for NaNs before replacing the originals.
    """
    merged = peft_model.merge_and_unload(safe_merge=safe_merge)
    merged.requires_grad_(True)
    for name, value in getattr(merged, "_peft_config_overrides", {}).items():
        setattr(merged.config, name, value)
    merged.__dict__.pop("_peft_config_overrides", None)
    copy_params = getattr(merged, "copy_params", None)
    if callable(copy_params):
        copy_params()
    after_load = getattr(merged, "_after_load", None)
    if callable(after_load):
        after_load([])
    return merged
