"""The `hf-vlp` command line: a registry of subcommands and `main`, the console entry point.

Every subcommand is a function `main(argv) -> exit code` registered under a name, so adding one is a line:

```python
register_subcommand("convert", "trainers.cli.convert:convert_main", "Convert a Chinese-CLIP checkpoint to hf-vlp.")
```

(a `"module:function"` target is imported only when that subcommand runs, so `hf-vlp --help` stays fast and a
subcommand's heavy imports are paid only by its users).

The package, by layer:
- `parsing`: recipes under command-line flags (`HfArgumentParser` over the argument dataclasses), logging;
- `building`: the model and processor the model flags ask for;
- `sources`: the training / evaluation data the data flags name, and the rendered demo set;
- `jobs`: what the training jobs share (set-up, the trainer, the summary line);
- one module per job: `pretrain`, `evaluate`, `finetune`, `convert`, `demo`, `push`.

The names below are re-exported so that other subcommands reuse them (`from trainers.cli import parse_job_args`).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .building import build_model_and_processor
from .errors import DEBUG_ENV, closest_names, debug_enabled, report, user_errors
from .evaluate import evaluate_main
from .jobs import build_trainer, eval_name, prepare_job, resume_value
from .parsing import RECIPES_DIR, load_recipe, parse_job_args, setup_logging
from .pretrain import pretrain_main
from .sources import build_eval_sets, build_train_dataset, demo_data_dir, resolve_demo


__all__ = [
    "RECIPES_DIR",
    "SUBCOMMANDS",
    "Subcommand",
    "build_eval_sets",
    "build_model_and_processor",
    "build_train_dataset",
    "build_trainer",
    "demo_data_dir",
    "eval_name",
    "evaluate_main",
    "load_recipe",
    "main",
    "parse_job_args",
    "prepare_job",
    "pretrain_main",
    "register_subcommand",
    "resolve_demo",
    "resume_value",
    "setup_logging",
]


@dataclass(frozen=True)
class Subcommand:
    """A named entry point: `target(argv) -> exit code`, or `"module:function"` imported when it runs."""

    name: str
    target: Callable[[list[str]], int | None] | str
    help: str

    def run(self, argv: list[str]) -> int:
        target = self.target
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            target = getattr(importlib.import_module(module), attribute)
        return int(target(argv) or 0)


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(name: str, target: Callable[[list[str]], int | None] | str, help: str) -> None:  # noqa: A002
    """Make `hf-vlp NAME ...` call `target(argv)` (argv after the name); a later registration replaces one."""
    SUBCOMMANDS[name] = Subcommand(name, target, help)


def _usage() -> str:
    width = max((len(name) for name in SUBCOMMANDS), default=0)
    lines = ["usage: hf-vlp <command> [options]  (hf-vlp <command> --help for the options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in sorted(SUBCOMMANDS.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `hf-vlp`: a user's mistake is one line on stderr and exit status 2 (usage) or 1
    (runtime), never a traceback (see `errors`); `--debug` (anywhere) or `HF_VLP_DEBUG=1` shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv = [arg for arg in argv if arg != "--debug"]
        os.environ[DEBUG_ENV] = "1"
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from hf_vlp import __version__

        print(f"hf-vlp {__version__}")
        return 0
    command = SUBCOMMANDS.get(argv[0])
    if command is None:
        hint = closest_names(argv[0], SUBCOMMANDS)
        if hint:  # a typo: one line naming the command meant
            print(f"hf-vlp: unknown command {argv[0]!r}; {hint}", file=sys.stderr)
        else:
            print(f"hf-vlp: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        status = command.run(argv[1:])
        _close_process_group()
        return status
    except Exception as error:
        if debug_enabled() or not isinstance(error, user_errors()):
            raise
        return report(f"hf-vlp {command.name}", error)


def _close_process_group() -> None:
    """Tear down the process group of a finished distributed job before the interpreter exits, as torch asks: left to
    shutdown, a backend's threads can outlive it and abort the rank ("terminate called without an active exception").
    Only after success: a rank that failed may leave the others waiting in a collective."""
    dist = sys.modules.get("torch.distributed")  # never imported by a job that did not use torch
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


register_subcommand("pretrain", pretrain_main, "Pre-train (or continue training) an image-text model.")
register_subcommand("evaluate", evaluate_main, "Retrieval Recall@K and zero-shot accuracy of a model.")
register_subcommand("convert", "trainers.cli.convert:convert_main", "Convert a Chinese-CLIP checkpoint to hf-vlp.")
register_subcommand("demo", "trainers.cli.demo:demo_main", "Launch the Gradio demo: 以文搜图, 以图搜文, 零样本分类.")
register_subcommand(
    "finetune", "trainers.cli.finetune:finetune_main", "Adapt a pre-trained model to a domain with LoRA."
)
register_subcommand("push", "trainers.cli.push:push_main", "Publish a saved model or adapter folder to the Hub.")
register_subcommand(
    "calibrate", "trainers.cli.calibrate:calibrate_main", "Fit a model's match probability (匹配概率)."
)
register_subcommand("export", "trainers.cli.export:export_main", "Export the image and text encoders to ONNX.")
register_subcommand("index", "trainers.cli.index:index_main", "Build or search a faiss index of images or captions.")
