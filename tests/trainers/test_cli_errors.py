"""First contact: every listed user mistake costs one line on stderr naming the fix, exit status 2 (usage) or 1
(runtime), and no traceback unless `--debug` / `HF_VLP_DEBUG=1` asks for it.

Each mistake runs `hf-vlp` in its own subprocess, as a user would; every check runs before a model is built or data
is read, so a run costs little more than the interpreter's start-up.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from trainers.cli.errors import RUNTIME, USAGE, UserError, check_max_length
from trainers.cli.errors import looks_like_path as path_like


CAPTION = "左边是一个红色的圆形"


def _folder(root: Path, name: str, rows: list[dict] | None, images: tuple[str, ...] = ()) -> str:
    folder = root / name
    folder.mkdir()
    for image in images:
        Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / image)
    if rows is not None:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(folder)


def _json_file(root: Path, name: str, values: dict) -> str:
    return _text_file(root, name, json.dumps(values))


def _text_file(root: Path, name: str, text: str) -> str:
    (root / name).write_text(text, encoding="utf-8")
    return str(root / name)


def _corrupt_folder(root: Path) -> str:
    """An image folder whose every image is corrupt (bytes that are no image)."""
    folder = _folder(root, "corrupt", [{"file_name": f"{i}.png", "text": CAPTION} for i in range(4)])
    for i in range(4):
        (Path(folder) / f"{i}.png").write_bytes(b"not an image")
    return folder


def _run_folder(root: Path) -> str:
    """A training run's output folder: the model is in its `model/` subfolder."""
    (root / "run_output" / "model").mkdir(parents=True)
    _json_file(root / "run_output" / "model", "config.json", {"model_type": "hf_vlp_dual_encoder"})
    return str(root / "run_output")


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory, busy_port):
    """`run(case) -> (exit status, stderr)`: one `hf-vlp` run per mistake, in a fresh process as a user runs it."""
    root = tmp_path_factory.mktemp("mistakes")
    good = _folder(root, "good", [{"file_name": "a.png", "text": CAPTION}], ("a.png",))
    tiny = ["pretrain", "--preset", "tiny", "--train-dir", good]
    cases = {
        "missing_train_dir": (["pretrain", "--preset", "tiny", "--train-dir", str(root / "nonexistent")], {}),
        "caption_column": (
            [
                "pretrain",
                "--preset",
                "tiny",
                "--train-dir",
                _folder(root, "cap", [{"file_name": "a.png", "caption": CAPTION}], ("a.png",)),
            ],
            {},
        ),
        "missing_model_path": (["evaluate", "--model", str(root / "nonexistent"), "--eval-dir", good], {}),
        "no_token": (["push", good, "--repo-id", "me/model"], {"HF_TOKEN": "", "HF_HOME": str(root / "hf_home")}),
        "misspelt_preset": (["pretrain", "--preset", "tinyy", "--train-dir", good], {}),
        "misspelt_recipe": (["pretrain", "--recipe", "dmeo"], {}),
        "no_images": (["pretrain", "--preset", "tiny", "--train-dir", _folder(root, "empty", None)], {}),
        "empty_after_filtering": (
            [
                "pretrain",
                "--preset",
                "tiny",
                "--train-dir",
                _folder(root, "gone", [{"file_name": "gone.png", "text": CAPTION}]),
            ],
            {},
        ),
        "grad_cache_with_fsdp": (
            ["pretrain", "--preset", "tiny", "--train-dir", good, "--grad-cache-chunk-size", "4"],
            {"ACCELERATE_USE_FSDP": "true"},
        ),
        "resume_without_checkpoint": (
            [
                "pretrain",
                "--preset",
                "tiny",
                "--train-dir",
                good,
                "--resume_from_checkpoint",
                "latest",
                "--output_dir",
                str(root / "run"),
            ],
            {},
        ),
        "port_in_use": (["demo", "--port", str(busy_port)], {}),
        "max_length_too_long": (["pretrain", "--preset", "tiny", "--train-dir", good, "--max-length", "1000"], {}),
        "model_config_without_type": (
            [
                "pretrain",
                "--model-config",
                _json_file(root, "notype.json", {"projection_dim": 8}),
                "--train-dir",
                good,
            ],
            {},
        ),
        "model_config_missing": (["pretrain", "--model-config", str(root / "nope.json"), "--train-dir", good], {}),
        "config_overrides_not_json": ([*tiny, "--config-overrides", "{vision_patch_dropout: 0.5}"], {}),
        "config_override_out_of_range": ([*tiny, "--config-overrides", '{"vision_patch_dropout": 1.5}'], {}),
        "inconsistent_training_flags": ([*tiny, "--grit_refresh_epochs", "0"], {}),
        "distill_with_patch_dropout": (
            [*tiny, "--config-overrides", '{"vision_patch_dropout": 0.5}', "--distill-teacher", good]
            + ["--output_dir", str(root / "distill")],
            {},
        ),
        "misspelt_flag": ([*tiny, "--learnig_rate", "1"], {}),
        "abbreviated_flag": ([*tiny, "--max-step", "3"], {}),
        "recipe_not_yaml": (
            ["pretrain", "--recipe", _text_file(root, "broken.yaml", "preset: tiny\nmax_steps: 3: 4\n")],
            {},
        ),
        "recipe_key_typo": (["pretrain", "--recipe", _text_file(root, "typo.yaml", "max_step: 3\n")], {}),
        "config_override_typo": ([*tiny, "--config-overrides", '{"lock_visoin": true}'], {}),
        "missing_templates_file": ([*tiny, "--eval-dir", good, "--zero-shot-templates", str(root / "no.txt")], {}),
        "unknown_zero_shot_preset": ([*tiny, "--zero-shot-preset", "imagenet"], {}),
        "shards_not_found": (
            ["pretrain", "--preset", "tiny", "--train-shards", str(root / "nope" / "*.tar"), "--max_steps", "2"],
            {},
        ),
        "shards_without_max_steps": (["pretrain", "--preset", "tiny", "--train-shards", str(root / "*.tar")], {}),
        "label_column_missing": (
            [*tiny, "--eval-dir", good, "--label-column", "category", "--output_dir", str(root / "labels")],
            {},
        ),
        "evaluate_without_model": (["evaluate", "--preset", "tiny", "--eval-dir", good], {}),
        "run_folder_as_model": (["evaluate", "--model", _run_folder(root), "--eval-dir", good], {}),
        "every_image_corrupt": (
            ["pretrain", "--preset", "tiny", "--train-dir", _corrupt_folder(root), "--max_steps", "2"]
            + ["--per_device_train_batch_size", "2", "--output_dir", str(root / "corrupt_run")],
            {},
        ),
        "debug_shows_traceback": (
            ["pretrain", "--preset", "tiny", "--train-dir", str(root / "nonexistent"), "--debug"],
            {},
        ),
    }
    base = {**os.environ, "HF_VLP_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    base.pop("HF_VLP_DEBUG", None)

    def run(name: str) -> tuple[int, str]:
        argv, env = cases[name]
        result = subprocess.run(
            [sys.executable, "-m", "trainers.cli", *argv],
            cwd=root,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        return result.returncode, result.stderr

    return run


@pytest.mark.parametrize(
    ("case", "status", "expected"),
    [
        ("missing_train_dir", RUNTIME, "--train-dir .*nonexistent: the folder does not exist"),
        ("caption_column", RUNTIME, "no 'text' column .*pass --text-column caption"),
        ("missing_model_path", RUNTIME, "--model .*nonexistent: the folder does not exist"),
        ("no_token", RUNTIME, r"no Hugging Face token: set HF_TOKEN or run `hf auth login`"),
        ("misspelt_preset", USAGE, "no preset 'tinyy'; did you mean tiny"),
        ("misspelt_recipe", USAGE, "no recipe 'dmeo' .*did you mean demo"),
        ("no_images", RUNTIME, "no images and no metadata.jsonl"),
        ("empty_after_filtering", RUNTIME, "no usable training pairs .*lack an image file or a caption"),
        ("grad_cache_with_fsdp", USAGE, "--grad-cache-chunk-size works with one process or DDP only, not FSDP"),
        ("resume_without_checkpoint", RUNTIME, "--resume_from_checkpoint latest: no checkpoint-\\* folder"),
        ("port_in_use", RUNTIME, "cannot serve on 127.0.0.1:[0-9]+ .*in use.*--port"),
        ("max_length_too_long", USAGE, "--max-length 1000 is longer than the text tower's 64 positions"),
        ("model_config_without_type", USAGE, '--model-config .*notype.json: no "model_type" key'),
        ("model_config_missing", RUNTIME, "--model-config .*nope.json: no such file"),
        ("config_overrides_not_json", USAGE, "--config-overrides .* is not JSON .*double quotes"),
        (
            "config_override_out_of_range",
            USAGE,
            r"invalid model config \(--preset tiny with --config-overrides .*\): vision_patch_dropout must be in",
        ),
        ("inconsistent_training_flags", USAGE, "invalid arguments: grit_refresh_epochs must be >= 1"),
        ("distill_with_patch_dropout", RUNTIME, "train the student with vision_patch_dropout=0"),
        ("misspelt_flag", USAGE, r"unknown flag\(s\) --learnig_rate \(did you mean --learning_rate"),
        ("abbreviated_flag", USAGE, r"unknown flag\(s\) --max-step \(did you mean --max_steps"),
        ("recipe_not_yaml", USAGE, r"recipe .*broken.yaml is not valid YAML: "),
        (
            "recipe_key_typo",
            USAGE,
            r"unknown keys in recipe .*typo.yaml.*: max_step \(max_step: did you mean max_steps",
        ),
        ("config_override_typo", USAGE, r"DualEncoderConfig has no setting lock_visoin \(did you mean lock_vision"),
        ("missing_templates_file", RUNTIME, r"templates file .*no.txt does not exist"),
        ("unknown_zero_shot_preset", USAGE, r"--zero-shot-preset imagenet: no such preset; did you mean imagenet-zh"),
        ("shards_not_found", RUNTIME, r"--train-shards .*nope/\*.tar: no file matches"),
        ("shards_without_max_steps", USAGE, r"--train-shards streams the data.*add --max_steps N"),
        ("label_column_missing", RUNTIME, r"has no 'category' column .*--label-column"),
        ("evaluate_without_model", USAGE, r"hf-vlp evaluate needs --model"),
        ("run_folder_as_model", RUNTIME, r"no config.json in the folder .*the run's model is in .*run_output/model"),
    ],
)
def test_a_mistake_is_one_line_naming_the_fix(mistakes, case, status, expected):
    returncode, stderr = mistakes(case)
    lines = stderr.strip().splitlines()
    assert returncode == status, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hf-vlp ")
    assert re.search(expected, lines[0]), lines[0]


def test_a_misspelt_command_is_one_line_naming_the_command_meant():
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "pretain"], capture_output=True, text=True)
    assert result.returncode == USAGE
    assert result.stderr.strip() == "hf-vlp: unknown command 'pretain'; did you mean pretrain?"


def test_training_on_nothing_but_bad_samples_saves_no_model(mistakes):
    """Each corrupt image is a warning naming it; that none was usable ends the job in one line, with no model."""
    returncode, stderr = mistakes("every_image_corrupt")
    assert returncode == RUNTIME and "Traceback" not in stderr, stderr
    assert stderr.count("Skipping bad sample") == 4
    assert re.fullmatch(
        r"hf-vlp pretrain: every training sample was unusable \(4 skipped; .*no model was saved: fix or replace the data",
        stderr.strip().splitlines()[-1],
    )


def test_debug_shows_the_traceback(mistakes):
    returncode, stderr = mistakes("debug_shows_traceback")
    assert returncode == 1
    assert "Traceback" in stderr and "UserError" in stderr


def test_check_max_length_refuses_only_lengths_beyond_the_positions(tiny_dual_config):
    positions = tiny_dual_config.text_config.max_position_embeddings
    check_max_length(tiny_dual_config, positions)
    check_max_length(tiny_dual_config, None)
    with pytest.raises(UserError) as refused:
        check_max_length(tiny_dual_config, positions + 1)
    assert refused.value.exit_code == USAGE and f"--max-length {positions}" in str(refused.value)


@pytest.mark.parametrize(
    ("value", "is_path"),
    [
        ("/abs/model", True),
        ("./model", True),
        ("~/model", True),
        ("out/run/model", True),
        ("me/model", False),
        ("tiny", False),
    ],
)
def test_paths_are_never_taken_for_hub_ids(value, is_path):
    assert path_like(value) is is_path


@pytest.mark.parametrize(("command", "module"), [("index build", "faiss"), ("export onnx", "onnxruntime")])
def test_a_missing_optional_dependency_is_one_line_naming_the_extra(tmp_path, command, module):
    """Without the [deploy] extra, `hf-vlp index` / `export` refuse before loading a model or encoding anything."""
    blocker = tmp_path / "sitecustomize.py"  # makes the module unimportable, as when it is not installed
    blocker.write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    argv = {"index build": ["index", "build", "--model", "m", "--images", "x", "--output", "o"]}.get(
        command, ["export", "onnx", "m", "out"]
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "trainers.cli", *argv], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == RUNTIME, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"hf-vlp {command} needs {module}" in result.stderr and 'pip install "hf-vlp[deploy]"' in result.stderr
