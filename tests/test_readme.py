"""The README runs as written: every Python block and every `hf-vlp` command of its fenced blocks, in order, against
the demo, and the output trees it draws exist.

Generic on purpose (sections are added by several people): blocks are parsed from the Markdown, not listed here. A
block opts out only with a first line `# readme-test: skip (why)`, e.g. Hub ids or GPU launches. Commands run as
written; the only change is `HF_VLP_MAX_STEPS`, which the CLI honours by capping `--max_steps`, so the demo trains a
few steps. An identical command runs once (the README repeats `hf-vlp pretrain --recipe demo`), so every block reuses
one demo training run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP_MARKER = re.compile(r"^#\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*$")
FENCE = re.compile(r"^```(?P<language>[\w-]*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
TREE_ENTRY = re.compile(r"^[│ ]*[├└]── (?P<name>[^\s#]+)")
MAX_STEPS = 6

pytestmark = pytest.mark.slow


@dataclass
class Block:
    language: str
    body: str
    line: int

    @property
    def skip_reason(self) -> str | None:
        first = self.body.splitlines()[0] if self.body.strip() else ""
        match = SKIP_MARKER.match(first.strip())
        return match.group("reason") if match else None

    def hf_vlp_commands(self) -> list[list[str]]:
        """The `hf-vlp ...` commands of a shell block (continuation lines joined, `&&` chains split)."""
        commands = []
        for line in self.body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["hf-vlp"]:
                    commands.append(words[1:])
        return commands


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(match.group("language"), match.group("body"), text[: match.start()].count("\n") + 1)
        for match in FENCE.finditer(text)
    ]


def test_opt_outs_state_why():
    """A block is skipped only through the marker, and the marker always carries a reason."""
    for block in readme_blocks():
        if "readme-test" in block.body:
            assert block.skip_reason, f"README.md:{block.line}: malformed readme-test marker"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def _environment(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_VLP_MAX_STEPS": str(MAX_STEPS),
        "HF_VLP_CACHE": str(workdir / ".cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def _run(argv: list[str], workdir: Path, where: str) -> str:
    result = subprocess.run(argv, cwd=workdir, env=_environment(workdir), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{where}: `{' '.join(argv)}` failed:\n{result.stderr[-4000:]}"
    return result.stdout


def _check_tree(block: Block, workdir: Path) -> bool:
    """Every entry of a drawn output tree exists (when its root was produced); `checkpoint-N/` is any checkpoint, and
    N must be the `max_steps` of the built-in recipe writing to that root. Returns whether the tree was checked."""
    from trainers.cli import RECIPES_DIR, load_recipe

    lines = block.body.splitlines()
    root = workdir / lines[0].strip().rstrip("/")
    if not root.is_dir():
        return False
    recipes = [load_recipe(str(path)) for path in sorted(RECIPES_DIR.glob("*.yaml"))]
    writer = next((r for r in recipes if Path(str(r.get("output_dir", ""))).name == root.name), None)
    for line in lines[1:]:
        match = TREE_ENTRY.match(line)
        if not match:
            continue
        name = match.group("name").rstrip("/")
        steps = re.fullmatch(r"checkpoint-(\d+)", name)
        if steps:
            assert list(root.glob("checkpoint-*")), f"README.md:{block.line}: no checkpoint in {root}"
            if writer is not None:
                assert int(steps.group(1)) == writer["max_steps"], (
                    f"README.md:{block.line}: {name} is not the last step"
                )
        else:
            assert (root / name).exists(), f"README.md:{block.line}: {name} missing from {root}"
    return True


def test_every_block_runs_as_written(workdir):
    done: set[tuple[str, ...]] = set()
    ran_python = trees_checked = 0
    for block in readme_blocks():
        if block.skip_reason:
            continue
        where = f"README.md:{block.line}"
        if block.language in ("bash", "sh", "shell", "console"):
            for command in block.hf_vlp_commands():
                if tuple(command) not in done:
                    _run([sys.executable, "-m", "trainers.cli", *command], workdir, where)
                    done.add(tuple(command))
        elif block.language == "python":
            script = workdir / f"readme_block_{block.line}.py"
            script.write_text(block.body, encoding="utf-8")
            stdout = _run([sys.executable, str(script)], workdir, where)
            ran_python += 1
            if "print(" in block.body:
                assert stdout.strip(), f"{where}: the block prints nothing"
        elif "├──" in block.body:
            trees_checked += _check_tree(block, workdir)
    assert ("pretrain", "--recipe", "demo") in done and ran_python >= 2 and trees_checked >= 1
    model = workdir / "hf_vlp_demo_output" / "model"
    assert not (model / "training_args.bin").exists(), "the Hub-ready folder must hold no pickle"
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
