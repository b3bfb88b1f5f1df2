"""The README runs as written: every Python block and every `hf-vlp` command of its fenced blocks, in order, against
the demo, and the output trees it draws exist.

Generic on purpose (sections are added by several people): blocks are parsed from the Markdown, not listed here. A
block opts out only with a first line `# readme-test: skip (why)`, e.g. Hub ids or GPU launches. Commands run as
written; the only change is `HF_VLP_MAX_STEPS`, which the CLI honours by capping `--max_steps`, so the demo trains a
few steps. An identical command runs once (the README repeats `hf-vlp pretrain --recipe demo`), so every block reuses
one demo training run.

Every measured number in the README's prose carries a marker right after it,
`<!-- readme-number SHOWN: SOURCE SELECTOR ±TOLERANCE [full] -->`, naming where it comes from:
- SOURCE a file a README command writes (relative to where the commands run) and SELECTOR a JSON key, or SOURCE a
  README command in backticks and SELECTOR a /regex/ on its output (first group): checked after the run;
- SOURCE `benchmarks/README.md` and SELECTOR a "quoted" passage of it: the number comes from a benchmark run (its
  command is in that file); the passage must be there and hold the number (checked without running anything).
The value compared is the last number of the shown text and of the source's text. `full` marks numbers of the
uncapped run (the demo's 800 steps): the capped run checks only that their output exists; `HF_VLP_README_FULL=1`
runs every command uncapped (about 10 CPU minutes more) and checks their values too.
"""

from __future__ import annotations

import json
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
FULL_RUN = os.environ.get("HF_VLP_README_FULL", "") not in ("", "0")
BENCHMARKS_README = "benchmarks/README.md"
NUMBER_MARKER = re.compile(
    r"<!-- readme-number (?P<shown>[^:]+?): (?P<source>`[^`]+`|\S+) (?P<selector>\"[^\"]*\"|/.*?/|\S+)"
    r" ±(?P<tolerance>[\d.]+K?)(?P<full> full)? -->"
)
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?K?")
# Shapes of measured figures in prose: ratios (1.19x), percentages, milliseconds. Each must carry a marker.
MEASURED_LOOKING = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?(?:x\b|%| ms\b)")


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


@dataclass
class NumberMarker:
    shown: str
    source: str
    selector: str
    tolerance: float
    full: bool
    line: int

    @property
    def where(self) -> str:
        return f"README.md:{self.line}: {self.shown}"

    def check(self, text: str) -> None:
        """`text` is the source's text (JSON or output); the value it holds must be the shown one within tolerance."""
        if self.selector.startswith('"'):
            passage = self.selector.strip('"')
            assert passage in text, f"{self.where}: {passage!r} is not in {self.source}"
            value = last_number(passage)
        elif self.selector.startswith("/"):
            match = re.search(self.selector.strip("/"), text)
            assert match, f"{self.where}: {self.selector} does not match the output of {self.source}"
            value = last_number(match.group(1) if match.groups() else match.group(0))
        else:
            results = json.loads(text)
            assert self.selector in results, f"{self.where}: no {self.selector} in {self.source}"
            value = float(results[self.selector])
        assert abs(value - last_number(self.shown)) <= self.tolerance, (
            f"{self.where}: {self.source} {self.selector} gives {value}, not {self.shown} ±{self.tolerance:g}"
        )


def last_number(text: str) -> float:
    numbers = NUMBER.findall(text)
    assert numbers, f"no number in {text!r}"
    number = numbers[-1].replace(",", "")
    return float(number[:-1]) * 1000 if number.endswith("K") else float(number)


def prose() -> str:
    """The README without its fenced blocks and inline code (kept line for line)."""
    text = FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), README.read_text(encoding="utf-8"))
    return re.sub(r"(<!--.*?-->)|`[^`\n]*`", lambda match: match.group(1) or "``", text)


def number_markers() -> list[NumberMarker]:
    text = prose()
    markers = []
    for match in NUMBER_MARKER.finditer(text):
        tolerance = match.group("tolerance")
        marker = NumberMarker(
            shown=match.group("shown"),
            source=match.group("source"),
            selector=match.group("selector"),
            tolerance=last_number(tolerance),
            full=bool(match.group("full")),
            line=text[: match.start()].count("\n") + 1,
        )
        before = text[: match.start()].rstrip()
        assert before.endswith(marker.shown), f"{marker.where}: the marker does not follow its number"
        markers.append(marker)
    return markers


def test_every_measured_number_is_marked():
    """Markers parse and follow their number; every ratio / percentage / duration in the prose has one; and the
    numbers taken from the benchmark table are the table's."""
    text = prose()
    malformed = [line for line in text.splitlines() if "readme-number" in line and not NUMBER_MARKER.search(line)]
    assert not malformed, f"malformed readme-number markers: {malformed}"
    markers = number_markers()
    bare = NUMBER_MARKER.sub("", text)
    marked = {marker.shown for marker in markers}
    for line_number, line in enumerate(bare.splitlines(), 1):
        for found in MEASURED_LOOKING.findall(line):
            assert found in marked, f"README.md:{line_number}: {found!r} has no readme-number marker"
    benchmarks = (ROOT / BENCHMARKS_README).read_text(encoding="utf-8")
    checked = 0
    for marker in markers:
        if marker.source == BENCHMARKS_README:
            marker.check(benchmarks)
            checked += 1
    assert checked and len(markers) > checked, "the README has no benchmark or no run-checked number"


def test_opt_outs_state_why():
    """A block is skipped only through the marker, and the marker always carries a reason."""
    for block in readme_blocks():
        if "readme-test" in block.body:
            assert block.skip_reason, f"README.md:{block.line}: malformed readme-test marker"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def _environment(workdir: Path) -> dict[str, str]:
    environment = {
        **os.environ,
        "HF_VLP_CACHE": str(workdir / ".cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    environment.pop("HF_VLP_MAX_STEPS", None)
    if not FULL_RUN:
        environment["HF_VLP_MAX_STEPS"] = str(MAX_STEPS)
    return environment


def _run(argv: list[str], workdir: Path, where: str) -> str:
    timeout = 3600 if FULL_RUN else 900
    result = subprocess.run(
        argv, cwd=workdir, env=_environment(workdir), capture_output=True, text=True, timeout=timeout
    )
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


def _check_run_numbers(workdir: Path, outputs: dict[tuple[str, ...], str]) -> None:
    """The README's numbers that its commands produce: values within tolerance (`full` ones only in a full run),
    else at least the output they are read from."""
    for marker in number_markers():
        if marker.source == BENCHMARKS_README:
            continue
        if marker.source.startswith("`"):
            command = tuple(shlex.split(marker.source.strip("`")))
            assert command[:1] == ("hf-vlp",) and command[1:] in outputs, f"{marker.where}: {command} did not run"
            text = outputs[command[1:]]
        else:
            path = workdir / marker.source
            assert path.is_file(), f"{marker.where}: no {marker.source} after the README's commands"
            text = path.read_text(encoding="utf-8")
        if marker.full and not FULL_RUN:
            if marker.selector.startswith("/"):
                assert re.search(marker.selector.strip("/"), text), f"{marker.where}: {marker.selector} not found"
            else:
                assert marker.selector in json.loads(text), f"{marker.where}: no {marker.selector}"
        else:
            marker.check(text)


@pytest.mark.slow
def test_every_block_runs_as_written(workdir):
    outputs: dict[tuple[str, ...], str] = {}
    ran_python = trees_checked = 0
    for block in readme_blocks():
        if block.skip_reason:
            continue
        where = f"README.md:{block.line}"
        if block.language in ("bash", "sh", "shell", "console"):
            for command in block.hf_vlp_commands():
                if tuple(command) not in outputs:
                    outputs[tuple(command)] = _run([sys.executable, "-m", "trainers.cli", *command], workdir, where)
        elif block.language == "python":
            script = workdir / f"readme_block_{block.line}.py"
            script.write_text(block.body, encoding="utf-8")
            stdout = _run([sys.executable, str(script)], workdir, where)
            ran_python += 1
            if "print(" in block.body:
                assert stdout.strip(), f"{where}: the block prints nothing"
        elif "├──" in block.body:
            trees_checked += _check_tree(block, workdir)
    assert ("pretrain", "--recipe", "demo") in outputs and ran_python >= 2 and trees_checked >= 1
    model = workdir / "hf_vlp_demo_output" / "model"
    assert not (model / "training_args.bin").exists(), "the Hub-ready folder must hold no pickle"
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    # "Evaluate any saved model ...: the numbers equal those of the training run"
    trained = json.loads((workdir / "hf_vlp_demo_output" / "eval_results.json").read_text())
    evaluated = json.loads((workdir / "hf_vlp_demo_eval" / "eval_results.json").read_text())
    recalls = [key for key in trained if "R@" in key or key.endswith(("mean_recall", "zero_shot_top1"))]
    assert recalls and {key: evaluated.get(key) for key in recalls} == pytest.approx({k: trained[k] for k in recalls})
    _check_run_numbers(workdir, outputs)
