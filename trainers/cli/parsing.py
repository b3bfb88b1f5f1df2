"""Argument parsing shared by the training jobs: recipes under command-line flags, and logging set-up.

`pretrain`, `evaluate` and `finetune` parse `ModelArguments`, `DataArguments`, `VLPTrainingArguments` and
`JobArguments` (+ a job's own dataclasses) with `HfArgumentParser`: every `TrainingArguments` flag works, and
`--recipe NAME_OR_PATH` loads defaults from `trainers/recipes/NAME.yaml` (or any YAML / JSON file) that
command-line flags override.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import USAGE, UserError, closest_names


__all__ = ["RECIPES_DIR", "load_recipe", "parse_job_args", "setup_logging"]

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Argument values from a recipe: a file path, or a name in `trainers/recipes/` (`demo` -> `demo.yaml`)."""
    path = Path(name_or_path)
    if not path.is_file():
        candidates = [RECIPES_DIR / f"{name_or_path}{suffix}" for suffix in (".yaml", ".yml", ".json")]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            available = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("accelerate_"))
            hint = closest_names(name_or_path, available) or f"built-in recipes: {', '.join(available)}"
            raise UserError(f"no recipe {name_or_path!r} (neither a file nor a built-in recipe); {hint}", USAGE)
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle) if path.suffix == ".json" else yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise UserError(f"recipe {path} must hold a mapping of argument names to values", USAGE)
    return {key.replace("-", "_"): value for key, value in values.items()}


def parse_job_args(argv: Sequence[str], prog: str, description: str, extra: Sequence[type] = ()) -> tuple:
    """Parse `ModelArguments, DataArguments, VLPTrainingArguments, JobArguments` (+ `extra` dataclasses).

    A recipe's values become the parser's defaults, so any flag on the command line wins over them; unknown
    recipe keys are an error (a misspelt key must not be ignored silently).
    """
    from transformers import HfArgumentParser

    from ..arguments import DataArguments, JobArguments, ModelArguments, VLPTrainingArguments

    classes = (ModelArguments, DataArguments, VLPTrainingArguments, JobArguments, *extra)
    parser = HfArgumentParser(classes, prog=prog, description=description)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe")
    known, _ = pre.parse_known_args(argv)
    if known.recipe:
        recipe = load_recipe(known.recipe)
        fields = {field.name for cls in classes for field in dataclasses.fields(cls) if field.init}
        unknown = sorted(set(recipe) - fields)
        if unknown:
            raise UserError(f"unknown keys in recipe {known.recipe!r}: {', '.join(unknown)}", USAGE)
        parser.set_defaults(
            **{
                key: json.dumps(value) if key == "config_overrides" and isinstance(value, dict) else value
                for key, value in recipe.items()
            }
        )
    return parser.parse_args_into_dataclasses(args=list(argv), look_for_args_file=False)


def setup_logging(training_args: Any) -> None:
    """Log lines with time and logger name; `trainers.*` at INFO on the logging process, transformers quieter."""
    import transformers

    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    logging.getLogger("trainers").setLevel(min(level, logging.INFO) if training_args.should_log else level)
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))
