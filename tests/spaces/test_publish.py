"""`hf-vlp push --space`: the packaged Space folder published to the loopback Hub (`tests/utils/hub_server.py`)."""

from __future__ import annotations

import pytest
import yaml

from hf_vlp.hub import HubPushError
from hf_vlp.space.publish import SPACE_FOLDER, push_space, space_files
from trainers.cli import main as cli_main


MODEL_SHA = "0123456789abcdef0123456789abcdef01234567"


def _header(readme: bytes) -> dict:
    return yaml.safe_load(readme.decode("utf-8").split("---")[1])


def test_space_files_set_the_readme_model_and_keep_the_rest():
    plain = space_files()
    assert set(plain) == {"app.py", "README.md", "requirements.txt"}
    assert plain["README.md"] == (SPACE_FOLDER / "README.md").read_bytes()
    files = space_files(model="someone/chinese-vlp")
    header, original = _header(files["README.md"]), _header(plain["README.md"])
    assert header["models"] == ["someone/chinese-vlp"]
    assert {k: v for k, v in header.items() if k != "models"} == {k: v for k, v in original.items() if k != "models"}
    assert files["README.md"].decode().split("\n---\n", 1)[1] == plain["README.md"].decode().split("\n---\n", 1)[1]


def test_push_space_creates_a_gradio_space_with_the_model_variables(local_hub, capsys):
    assert cli_main(["push", "--space", "user/vlp-demo", "--model", "user/vlp-model", "--revision", MODEL_SHA]) == 0
    url = capsys.readouterr().out.strip()
    repo = local_hub.repo("user/vlp-demo", repo_type="space")
    assert url == f"{local_hub.endpoint}/spaces/user/vlp-demo/commit/{repo.head().oid}"
    files = repo.files()
    assert {"app.py", "README.md", "requirements.txt"} <= set(files)
    assert files["app.py"] == (SPACE_FOLDER / "app.py").read_bytes()
    assert _header(files["README.md"])["models"] == ["user/vlp-model"]
    assert repo.space_sdk == "gradio"
    assert {k: v["value"] for k, v in repo.variables.items()} == {
        "HF_VLP_MODEL": "user/vlp-model",
        "HF_VLP_REVISION": MODEL_SHA,
    }
    operations = [r.operation for r in local_hub.requests_log]
    assert operations.index("space_variables") < operations.index("commit")  # the first build sees them
    assert local_hub.unknown_requests() == []

    from huggingface_hub import HfApi

    assert HfApi().get_space_variables("user/vlp-demo")["HF_VLP_MODEL"].value == "user/vlp-model"
    push_space("user/vlp-demo", model="user/other-model")  # an existing Space: variables and header updated
    assert repo.variables["HF_VLP_MODEL"]["value"] == "user/other-model"
    assert _header(repo.files()["README.md"])["models"] == ["user/other-model"]


def test_push_space_without_a_token_fails_before_any_request(local_hub, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert cli_main(["push", "--space", "user/vlp-demo", "--model", "user/vlp-model"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf-vlp push: ") and "set HF_TOKEN or run `hf auth login`" in err and "\n" not in err
    assert local_hub.requests_log == []


def test_push_space_refuses_a_revision_without_a_model(local_hub):
    with pytest.raises(HubPushError, match="pass --model too") as caught:
        push_space("user/vlp-demo", revision=MODEL_SHA)
    assert caught.value.step == "validate" and local_hub.requests_log == []


def test_local_hub_refuses_a_space_without_sdk(local_hub):
    """As the Hub does: the server must not accept what the real one refuses, or the test above could pass wrongly."""
    from huggingface_hub.utils import get_session

    response = get_session().post(f"{local_hub.endpoint}/api/repos/create", json={"name": "no-sdk", "type": "space"})
    assert response.status_code == 400 and "needs an sdk" in response.json()["error"]
