"""Argument parsing shared by the training jobs: recipes under command-line flags, and logging set-up.

`pretrain`, `evaluate` and `finetune` parse `ModelArguments`, `DataArguments`, `VLPTrainingArguments` and
`JobArguments` (+ a job's own dataclasses) with `HfArgumentParser`: every `TrainingArguments` flag works, and
`--recipe NAME_OR_PATH` loads defaults from `trainers/recipes/NAME.yaml` (or any YAML / JSON file) that
command-line flags override.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import USAGE, UserError, closest_names


__all__ = [
    "RECIPES_DIR",
    "HelpFormatter",
    "default_num_workers",
    "flag_values",
    "load_recipe",
    "organise_help",
    "parse_job_args",
    "setup_logging",
]

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def flag_values(args: Any, *names: str) -> dict[str, Any]:
    """The parsed values of the flags `names` (`image_column` for `--image-column`), as the keyword arguments of the
    function they configure, whose parameters carry the flags' names."""
    return {name: getattr(args, name) for name in names}


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
        try:
            values = json.load(handle) if path.suffix == ".json" else yaml.safe_load(handle)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            problem = " ".join(str(error).split())
            raise UserError(
                f"recipe {path} is not valid {path.suffix.lstrip('.').upper()}: {problem}", USAGE
            ) from None
    if not isinstance(values, dict):
        raise UserError(f"recipe {path} must hold a mapping of argument names to values", USAGE)
    return {key.replace("-", "_"): value for key, value in values.items()}


def default_num_workers() -> int:
    """DataLoader workers for a job: one per CPU the process may use, less one for the training loop, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def parse_job_args(argv: Sequence[str], prog: str, description: str, extra: Sequence[type] = ()) -> tuple:
    """Parse `ModelArguments, DataArguments, VLPTrainingArguments, JobArguments` (+ `extra` dataclasses).

    A recipe's values become the parser's defaults, so any flag on the command line wins over them; unknown
    recipe keys are an error (a misspelt key must not be ignored silently).
    """
    from transformers import HfArgumentParser

    from ..arguments import DataArguments, JobArguments, ModelArguments, VLPTrainingArguments

    classes = (ModelArguments, DataArguments, VLPTrainingArguments, JobArguments, *extra)
    parser = HfArgumentParser(
        classes, prog=prog, description=description, formatter_class=HelpFormatter, allow_abbrev=False
    )
    # Decode images outside the training process by default: decoding in it puts image decoding and resizing on the
    # step's critical path (the stock default, 0 workers). Workers persist across epochs, so that an epoch does not
    # start by forking them again (the datasets' epoch is shared with them, see `trainers.data.dataset.SharedEpoch`).
    parser.set_defaults(dataloader_num_workers=default_num_workers(), dataloader_persistent_workers=True)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe")
    pre.add_argument("--help-all", action="store_true")
    known, _ = pre.parse_known_args(argv)
    organise_help(parser, classes, show_training_arguments=known.help_all)
    if known.help_all:
        parser.print_help()
        raise SystemExit(0)
    if known.recipe:
        recipe = load_recipe(known.recipe)
        fields = {field.name for cls in classes for field in dataclasses.fields(cls) if field.init}
        unknown = sorted(set(recipe) - fields)
        if unknown:
            hints = "; ".join(f"{key}: {closest_names(key, fields)}" for key in unknown if closest_names(key, fields))
            raise UserError(
                f"unknown keys in recipe {known.recipe!r}: {', '.join(unknown)}" + (f" ({hints})" if hints else ""),
                USAGE,
            )
        parser.set_defaults(
            **{
                key: json.dumps(value) if key == "config_overrides" and isinstance(value, dict) else value
                for key, value in recipe.items()
            }
        )
    _refuse_unknown_flags(parser, argv)
    try:
        return parser.parse_args_into_dataclasses(args=list(argv), look_for_args_file=False)
    except ValueError as error:
        # the arguments' own consistency checks (`__post_init__`, ours and TrainingArguments'): a flag mistake
        raise UserError(f"invalid arguments: {error}", USAGE) from error


def _refuse_unknown_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """One line naming each flag the job does not know and the flag meant, instead of the parser's list of leftovers
    (a misspelt flag must not be taken for another one either: the parser takes no abbreviations)."""
    _, leftovers = parser.parse_known_args(list(argv))
    if not leftovers:
        return
    flags = [value.split("=", 1)[0] for value in leftovers if value.startswith("--")]
    if not flags:
        raise UserError(f"unexpected value(s) {' '.join(leftovers)}: each value follows its flag", USAGE)
    spelled = {option: action.option_strings[0] for action in parser._actions for option in action.option_strings}
    named = []
    for flag in flags:
        meant = dict.fromkeys(spelled[option] for option in difflib.get_close_matches(flag, spelled, n=6, cutoff=0.6))
        named.append(f"{flag} (did you mean {', '.join(list(meant)[:3])}?)" if meant else flag)
    raise UserError(f"unknown flag(s) {', '.join(named)}; see --help (or --help-all for the Trainer's)", USAGE)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults appended as `(default: X)`, except when there is none to tell (None) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or "") or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _dashed_first(action: argparse.Action) -> None:
    """`--train-dir, --train_dir`: hf-vlp's own flags are written with dashes (as in the README)."""
    action.option_strings.sort(key=lambda option: "_" in option)


def organise_help(parser: argparse.ArgumentParser, classes: Sequence[type], show_training_arguments: bool) -> None:
    """Group `--help` for humans: hf-vlp's model, data, trainer and job flags first (with dashes), then
    `transformers.TrainingArguments` under its own heading, listed only with `--help-all` (there are ~120).

    `classes` are the parsed dataclasses in `parse_job_args` order (model, data, training, job, extras).
    """
    from transformers import TrainingArguments

    inherited = {field.name for field in dataclasses.fields(TrainingArguments)}
    titles = ["model", "data", "trainer (hf-vlp)", "recipe and job"] + [cls.__name__ for cls in classes[4:]]
    display_order = [3, 0, 1, 2, *range(4, len(classes))]  # the recipe first: it sets most of the rest
    created = {index: parser.add_argument_group(titles[index]) for index in display_order}
    groups = [created[index] for index in range(len(classes))]
    training = parser.add_argument_group(
        "transformers.TrainingArguments",
        "Every TrainingArguments flag works (--learning_rate, --per_device_train_batch_size, --bf16, --report_to, "
        "--resume_from_checkpoint latest, --deepspeed ...)"
        + ("." if show_training_arguments else "; `--help-all` lists them."),
    )
    owner = {}
    for index, cls in enumerate(classes):
        for field in dataclasses.fields(cls):
            owner.setdefault(field.name, training if index == 2 and field.name in inherited else groups[index])
    options = next(group for group in parser._action_groups if group.title in ("options", "optional arguments"))
    for action in list(options._group_actions):
        group = owner.get(action.dest)
        if group is None:
            continue
        options._group_actions.remove(action)
        group._group_actions.append(action)
        if group is training:
            if not show_training_arguments:
                action.help = argparse.SUPPRESS
            continue
        _dashed_first(action)
        if any(option.startswith("--no") for option in action.option_strings) and action.const is False:
            action.help = f"Turn off {action.option_strings[0].replace('--no-', '--', 1)}."
    parser.usage = (
        f"{parser.prog} [--recipe NAME_OR_PATH] [model flags] [data flags] [trainer flags] [TrainingArguments flags]"
    )


def setup_logging(training_args: Any) -> None:
    """Log lines with time and logger name; `trainers.*` at INFO on the logging process, transformers quieter."""
    import transformers

    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    logging.getLogger("trainers").setLevel(min(level, logging.INFO) if training_args.should_log else level)
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))
