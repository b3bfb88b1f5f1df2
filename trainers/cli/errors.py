"""A user's mistake costs one line naming the fix, never a traceback.

Any layer the command line runs (argument checks, model building, data readers, push) raises `UserError(message,
exit_code)` — or one of the typed errors of the libraries below it, listed in `USER_ERRORS` — and `report` in
`hf-vlp`'s `main` turns it into one line on stderr and the exit status: 2 for a usage mistake (a flag or value the
command cannot take), 1 for a runtime one (missing data, no token, a busy port). `--debug` or `HF_VLP_DEBUG=1`
re-raises instead, with the full traceback.

The checks shared with other code live here too, so that every caller refuses the same mistakes with the same words.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from .text_length import text_positions


__all__ = [
    "RUNTIME",
    "USAGE",
    "UserError",
    "check_max_length",
    "closest_names",
    "debug_enabled",
    "user_errors",
    "looks_like_path",
    "report",
    "require_modules",
]

USAGE = 2
RUNTIME = 1
DEBUG_ENV = "HF_VLP_DEBUG"


class UserError(Exception):
    """A mistake the user can fix; `str(error)` says what was wrong and what to do, in one line."""

    def __init__(self, message: str, exit_code: int = RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def user_errors() -> tuple[type[BaseException], ...]:
    """Typed errors of the layers below the CLI that already name the bad input (imported lazily: `--help` stays
    fast): malformed data sources, unreadable images, refused Hub pushes, conflicting training options, unusable
    zero-shot class, template or preset files."""
    from hf_vlp import HubPushError, InvalidImageError
    from hf_vlp.zero_shot import ZeroShotFileError
    from trainers.arguments import OptionConflictError
    from trainers.data import DataFormatError

    return (UserError, DataFormatError, InvalidImageError, HubPushError, OptionConflictError, ZeroShotFileError)


def require_modules(command: str, modules: Sequence[str], extra: str) -> None:
    """Refuse, before any work, a command whose optional dependencies are not installed: one line naming the install.

    `modules` are import names; `extra` is the hf-vlp extra that installs them (e.g. "deploy")."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"{command} needs {', '.join(missing)}, which hf-vlp's [{extra}] extra installs: "
            f'pip install "hf-vlp[{extra}]" (or pip install -e ".[{extra}]" in a checkout)',
            RUNTIME,
        )


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def report(prog: str, error: BaseException) -> int:
    """Print `error` as one line on stderr (`prog: message`) and return its exit status."""
    message = " ".join(str(error).split()) or type(error).__name__
    if not message.startswith(prog):
        message = f"{prog}: {message}"
    print(message, file=sys.stderr)
    return getattr(error, "exit_code", RUNTIME)


def closest_names(name: str, choices: Iterable[str], limit: int = 3) -> str:
    """`"did you mean a, b?"` for the choices closest to a misspelt `name` (empty when none is close)."""
    matches = difflib.get_close_matches(name, list(choices), n=limit, cutoff=0.5)
    return f"did you mean {', '.join(matches)}?" if matches else ""


def looks_like_path(value: str) -> bool:
    """Whether a `--model` value is meant as a local path rather than a Hub id (`owner/name` or `name`).

    Absolute and `./`, `../`, `~` paths, Windows separators, more than one `/`, and a trailing `/` cannot be Hub ids,
    so a missing folder of that form is reported as missing instead of being looked up on the Hub.
    """
    return (
        os.path.isabs(value)
        or value.startswith((".", "~"))
        or "\\" in value
        or value.count("/") > 1
        or value.endswith("/")
        or os.path.exists(value)
    )


def check_max_length(config: Any, max_length: int | None) -> None:
    """Refuse a text length the model's text tower has no positions for (it would crash at the first step).

    `config` is an hf-vlp model config (its `text_config` holds `max_position_embeddings`); `None` passes.
    """
    if max_length is None:
        return
    positions = text_positions(config)
    if max_length < 1:
        raise UserError(f"--max-length must be >= 1, got {max_length}", USAGE)
    if positions is not None and max_length > positions:
        raise UserError(
            f"--max-length {max_length} is longer than the text tower's {positions} positions: "
            f"use --max-length {positions} or less",
            USAGE,
        )
