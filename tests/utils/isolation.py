"""Run Python code in a fresh interpreter where hf-vlp cannot be imported.

This is how a user without hf-vlp installed meets a saved or pushed model: only transformers'
`trust_remote_code` path can load it. Blocking the import (rather than uninstalling) keeps the test cheap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


__all__ = ["run_isolated"]

_PRELUDE = """
import sys
for _name in ("hf_vlp", "trainers"):
    sys.modules[_name] = None  # any `import hf_vlp` now raises ImportError
"""


def run_isolated(code: str, cwd: str | os.PathLike, env: dict[str, str] | None = None, timeout: int = 300) -> dict:
    """Run `code` in a new process without hf-vlp; the code must print one JSON object as its last line."""
    script = Path(cwd) / "isolated_check.py"
    script.write_text(_PRELUDE + textwrap.dedent(code), encoding="utf-8")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **(env or {})}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"isolated process failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
