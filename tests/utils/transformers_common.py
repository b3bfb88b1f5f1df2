"""transformers' own common model tests, fetched from the sdist of the installed transformers and cached.

`ModelTesterMixin` (tests/test_modeling_common.py) and `ConfigTester` (tests/test_configuration_common.py) are not
part of the transformers wheel. They are fetched at test time with `pip download transformers==<installed>
--no-binary :all: --no-deps`, unpacked once into `$HF_VLP_CACHE/transformers_common_tests/<version>` (default
`~/.cache/hf_vlp`), and imported from there as a package: never copied into this repository, and always the
version that matches the transformers being tested.

The sdist ships only the top-level files of `tests/`; the two common files import three sibling modules that
live in sub-folders the sdist leaves out. Those are written as explicit stand-ins, each saying why it is enough:
- `exporters/test_export.py::ExportTesterMixin` (torch.export tests): an empty mixin, so those tests do not run;
- `generation/test_utils.py::GenerationTesterMixin`: an empty class, used only in `issubclass` checks (hf-vlp
  models do not generate);
- `utils/test_configuration_utils.py::config_common_kwargs`: an empty dict, read only by
  `ConfigTester.check_config_arguments_init`, which returns before reading it for composite configs (ours).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import transformers


__all__ = ["CommonTestsUnavailable", "load_common_tests", "common_tests_dir"]

PACKAGE = "transformers_common_tests"
COMMON_FILES = ("test_modeling_common.py", "test_configuration_common.py")
STAND_INS = {
    "exporters/test_export.py": (
        '"""Stand-in: the sdist lacks tests/exporters; torch.export tests do not run."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "generation/test_utils.py": (
        '"""Stand-in: the sdist lacks tests/generation; only used in issubclass checks."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "utils/test_configuration_utils.py": (
        '"""Stand-in: the sdist lacks tests/utils; unused for composite configs."""\n\nconfig_common_kwargs = {}\n'
    ),
}
DOWNLOAD_TIMEOUT_S = 300


class CommonTestsUnavailable(RuntimeError):
    """The common test files could not be fetched (no network to PyPI, no sdist for this version ...)."""


def common_tests_dir(version: str = transformers.__version__) -> Path:
    """Where the unpacked common tests of transformers `version` are cached (the folder put on `sys.path`)."""
    cache = Path(os.environ.get("HF_VLP_CACHE", Path.home() / ".cache" / "hf_vlp"))
    return cache / "transformers_common_tests" / version


def _fetch(version: str, target: Path) -> None:
    """Download the sdist, extract the common files into `target/PACKAGE`, add the stand-ins (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"transformers=={version}",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            scratch,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise CommonTestsUnavailable(f"`{' '.join(command)}` timed out after {DOWNLOAD_TIMEOUT_S}s") from error
        archives = list(Path(scratch).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            last = (result.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise CommonTestsUnavailable(f"`pip download transformers=={version} --no-binary :all:` failed: {last}")
        package = Path(scratch) / "unpacked" / PACKAGE
        package.mkdir(parents=True)
        with tarfile.open(archives[0]) as archive:
            for name in COMMON_FILES:
                member = archive.getmember(f"{archives[0].name.removesuffix('.tar.gz')}/tests/{name}")
                (package / name).write_bytes(archive.extractfile(member).read())
        (package / "__init__.py").write_text("")
        for relative, source in STAND_INS.items():
            path = package / relative
            path.parent.mkdir(exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(source)
        try:
            os.replace(package.parent, target)  # atomic: a concurrent fetch either wins or finds it complete
        except OSError:
            if not (target / PACKAGE / COMMON_FILES[0]).exists():
                raise


def load_common_tests(version: str = transformers.__version__) -> tuple[ModuleType, ModuleType]:
    """`(test_modeling_common, test_configuration_common)` of transformers `version`, fetched on first use."""
    target = common_tests_dir(version)
    if not (target / PACKAGE / COMMON_FILES[0]).exists():
        if target.exists():
            shutil.rmtree(target)  # a partial folder from an interrupted older layout
        _fetch(version, target)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling, configuration
