"""`hf-vlp demo` from a wheel: build the wheel, install it in a fresh venv, start the demo, query it.

The venv reuses this machine's torch / transformers / gradio (`--system-site-packages`: no network here), but hf-vlp
itself must come from the wheel, never from the source tree: the test checks where `hf_vlp` is imported from and
runs everything outside the checkout with no `PYTHONPATH`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _source_copy(target: Path) -> Path:
    """The working tree's files (tracked and new, not ignored), so building never writes into the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_symlink() or not source.is_file():  # `spaces` -> the packaged folder: not part of the wheel
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)
    return target


@pytest.mark.slow
def test_demo_runs_from_an_installed_wheel(tmp_path, untrained_model_dir):
    pytest.importorskip(
        "ensurepip", reason="this Python has no ensurepip to give a venv its pip (Debian: python3-venv)"
    )
    source = _source_copy(tmp_path / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("hf_vlp-*.whl")
    venv.create(tmp_path / "venv", system_site_packages=True, with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    # `--force-reinstall`: this machine's editable hf-vlp of the same version must not count as "already satisfied".
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    origin = subprocess.run(
        [
            str(python),
            "-c",
            "import hf_vlp.space.publish as p, trainers; print(p.__file__); print(p.SPACE_FOLDER); print(trainers.__file__)",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    venv_root = str((tmp_path / "venv").resolve())
    assert all(path.startswith(venv_root) for path in origin), origin
    assert (Path(origin[1]) / "app.py").is_file() and (Path(origin[1]) / "README.md").is_file()

    port = _free_port()
    command = [str(tmp_path / "venv" / "bin" / "hf-vlp"), "demo", "--model", str(untrained_model_dir)]
    command += ["--gallery", "builtin", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"no demo within {START_TIMEOUT_S} s: {log.read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        items, reranked, status = client.predict(query="一个红色的圆形", api_name="/search")
        assert len(items) == 8 and reranked == [] and status.startswith("图库：内置示例图库（20 张）")
        assert all(Path(item["image"]).is_file() for item in items)
    finally:
        server.terminate()
        server.wait(timeout=30)
    printed = log.read_text(errors="replace")
    assert f"Running on local URL:  http://127.0.0.1:{port}" in printed and "add --share" in printed
    assert "share=True" not in printed and "Traceback" not in printed
